//! The op set a Llama LoRA training step needs, as one trait with two implementations:
//! `cpu` (the reference semantics; faer GEMMs, rayon elsewhere) and, behind the `cuda`
//! feature, `cuda` (cudarc, cuBLASLt, the kernels in kernels/).
//!
//! Conventions shared by every op:
//! - Buffers hold row-major values; the CPU backend stores `f32` (or `f64` in gradient checks),
//!   the kernel backend f32 or, in [`Precision::Bf16`], bf16 activations and frozen weights
//!   (see "compute precision" in the trait). Scalars are passed as `f32`.
//! - Argument order is outputs, then inputs, then dims (llm.c's convention).
//! - "Tokens" are the `n = batch * seq` rows of a step; small per-token metadata (ids, positions,
//!   labels, sample starts) travels as host slices and the backend uploads it if it must.
//! - Ops documented as `+=` accumulate into their output; all others overwrite it.
//! - Every op is deterministic: the same inputs give bit-identical outputs whatever the number
//!   of threads (fixed reduction orders, partitions that depend on the problem size only).

pub mod attention_dims; // check_starts; AttnDims: the attention argument checks every backend shares
pub mod cpu; // CpuBackend: reference semantics
#[cfg(feature = "cuda")]
pub mod cuda; // CudaBackend (KernelBackend<CudaDevice>), CudaRuntime, CudaBuf, Gemm, probe; KERNELS_FATBIN
pub mod decode_check; // check_copy_rows, DecodeDims: the checks of the cached-decoding ops
pub mod device; // Device (cpu, cuda:N), resolve: CUDA checks with a CPU fallback
pub mod kernel; // KernelBackend over KernelDevice (EmuDevice; CudaDevice with `cuda`)
pub mod rope_table; // RopeTable::new, rope_inv_freq (llama3 scaling)

pub use device::Precision;

use crate::error::Result;
use crate::model::Frozen;

/// Precomputed RoPE rotation for positions `0..max_pos`: `cos`/`sin` buffers of shape
/// `[max_pos, head_dim/2]`, with llama3 frequency scaling already applied.
pub struct RopeTable<B: Backend + ?Sized> {
    /// `[max_pos, head_dim/2]` cos(pos * inv_freq[i]).
    pub cos: B::Buf,
    /// `[max_pos, head_dim/2]` sin(pos * inv_freq[i]).
    pub sin: B::Buf,
    /// Number of positions in the table.
    pub max_pos: usize,
    /// Head width the table was built for.
    pub head_dim: usize,
}

/// The ops of one Llama LoRA step. See the module doc for shared conventions.
pub trait Backend: Send + Sync {
    /// A buffer of values on this backend.
    type Buf: Send + Sync;
    /// A frozen Linear weight `W [rows, cols]` (`[out, in]`) on this backend: the CPU keeps a
    /// packed matrix packed and widens it per product (exactly), the kernel backend stores it
    /// in its compute precision.
    type Weight: Send + Sync;

    /// A short name for logs ("cpu", "cuda:0").
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------------------------
    /// A zero-filled buffer of `len` values.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// The buffer's values as f32.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Number of values in the buffer.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Set every value to `value`.
    fn fill(&self, buf: &mut Self::Buf, value: f32) -> Result<()>;
    /// `dst = src` (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    // ---- compute precision --------------------------------------------------------------
    // The model stores its frozen weights and every activation (and activation gradient) in
    // the backend's compute precision, and keeps what must stay exact in f32: LoRA
    // parameters, their gradients and optimiser state, RMSNorm's 1/rms, attention's
    // log-sum-exp, losses. The CPU backend stores f32 only (its bf16 mode rounds the operands
    // of the frozen-weight and lm_head products inside the GEMM), so for it these are
    // `alloc`, `upload` and `copy`.
    /// The compute precision: what activations and frozen weights are stored in on the kernel
    /// backend; on the CPU backend, whether its bf16 products are on.
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// A zero-filled buffer of `len` values in the compute precision.
    fn alloc_compute(&self, len: usize) -> Result<Self::Buf> {
        self.alloc(len)
    }
    /// A buffer holding `data` in the compute precision (bf16: rounded to nearest even).
    fn upload_compute(&self, data: &[f32]) -> Result<Self::Buf> {
        self.upload(data)
    }
    /// `dst = src` converted to `dst`'s element type (f32 → bf16 rounds to nearest even,
    /// bf16 → f32 is exact); same length.
    fn convert(&self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()> {
        self.copy(dst, src)
    }
    /// Bytes of device memory in use, for a backend with its own memory (a GPU: the driver's
    /// `total − free`); `None` where the process's RSS already says it (the CPU).
    fn device_memory_in_use(&self) -> Option<u64> {
        None
    }

    // ---- dense algebra ------------------------------------------------------------------
    /// `C = beta*C + alpha * op(A) * op(B)` with `op(A)` of shape `[m, k]` and `op(B)` of shape
    /// `[k, n]`. `A` is stored `[m, k]`, or `[k, m]` when `trans_a`; `B` is stored `[k, n]`, or
    /// `[n, k]` when `trans_b` (so `X·Wᵀ` for an HF Linear weight is `trans_b = true`).
    /// `beta = 0` overwrites C (NaNs in C do not propagate).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()>;
    /// `w` on this backend (see [`Backend::Weight`]); errors unless `w` is 2-D.
    fn upload_weight(&self, w: &Frozen) -> Result<Self::Weight>;
    /// `(rows, cols)` of a weight.
    fn weight_dims(&self, w: &Self::Weight) -> (usize, usize);
    /// `c = beta·c + alpha·a·op(W)` for `W [rows, cols]`: with `trans_w`, `a [m, cols]` and
    /// `c [m, rows]` (a Linear's forward `X·Wᵀ`); without, `a [m, rows]` and `c [m, cols]` (its
    /// input gradient `dY·W`). The semantics of [`Backend::gemm`] on W's values.
    #[allow(clippy::too_many_arguments)]
    fn gemm_weight(
        &self,
        c: &mut Self::Buf,
        a: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        trans_w: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()>;
    /// `x += alpha * y` elementwise.
    fn axpy(&self, x: &mut Self::Buf, alpha: f32, y: &Self::Buf) -> Result<()>;
    /// `x *= alpha` elementwise.
    fn scale(&self, x: &mut Self::Buf, alpha: f32) -> Result<()>;
    /// `x[t, :] += bias` for each of the `n` rows of width `d`.
    fn add_bias(&self, x: &mut Self::Buf, bias: &Self::Buf, n: usize, d: usize) -> Result<()>;
    /// Sum of squares of all values, accumulated in f64 in a fixed order (for global norms).
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
    /// [`Backend::sum_squares`] of every buffer of `xs`, in order, each bit-identical to the
    /// one-buffer call. A device backend computes them all with one download (one sync)
    /// instead of one per buffer; the default makes the one-buffer calls.
    fn sum_squares_each(&self, xs: &[&Self::Buf]) -> Result<Vec<f64>> {
        xs.iter().map(|x| self.sum_squares(x)).collect()
    }

    // ---- the block's ops ----------------------------------------------------------------
    /// `out[t, :] = table[ids[t], :]`; out `[n, h]`, table `[vocab, h]`. Errors on an id out of
    /// range.
    fn embedding(
        &self,
        out: &mut Self::Buf,
        table: &Self::Buf,
        ids: &[u32],
        h: usize,
    ) -> Result<()>;
    /// `out = x * rstd * w` per row with `rstd = 1/sqrt(mean(x²) + eps)`; saves `rstd [n]`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()>;
    /// `dx += ∂out/∂x · dout` (no weight gradient: norms are frozen).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        n: usize,
        h: usize,
    ) -> Result<()>;
    /// Rotate `x [n, heads, head_dim]` in place, HF half-split layout: for `i < head_dim/2`,
    /// `(x[i], x[i+d/2]) ← (x[i]·c − x[i+d/2]·s, x[i+d/2]·c + x[i]·s)` with `c, s` from the
    /// table at `positions[t]`. `inverse` rotates by the negative angle (the backward).
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        table: &RopeTable<Self>,
        positions: &[u32],
        n: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<()>
    where
        Self: Sized;
    /// Causal GQA attention over `batch` rows of `seq` tokens with packed samples:
    /// token `i` attends to tokens `j` of its row with `starts[i] <= j <= i`, where
    /// `starts[i]` is the in-row index of the first token of `i`'s sample.
    /// q `[n, heads*hd]`, k/v `[n, kv_heads*hd]`, out `[n, heads*hd]`, lse `[n, heads]`
    /// (log-sum-exp of the scaled scores, saved for the backward). Scale `1/sqrt(hd)`.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()>;
    /// Gradients of `attention_forward`: overwrites dq, dk, dv.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()>;
    // ---- cached decoding (model/decode.rs) ----------------------------------------------
    /// `dst[rows[t], :] = src[t, :]` for each of the `rows.len()` rows of width `width`:
    /// src `[rows.len(), width]`, dst `[m, width]`. The rows must be distinct and below `m`
    /// (the KV cache's write of a step's keys or values).
    fn copy_rows(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        rows: &[u32],
        width: usize,
    ) -> Result<()>;
    /// Attention of one query per sequence against its cached keys and values (decoding):
    /// query `i` (of `b = first.len()`) attends the cache rows `first[i] ..= first[i] +
    /// last[i]`, i.e. positions `0..=last[i]` of its sequence; GQA as in
    /// [`Backend::attention_forward`], scale `1/sqrt(hd)`, softmax accumulated in f32 (or wider).
    /// q/out `[b, heads*hd]`, k/v `[m, kv_heads*hd]` (the cache, `m` rows).
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        first: &[u32],
        last: &[u32],
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()>;

    /// `out = silu(gate) * up`, all `[n, f]` flattened.
    fn swiglu_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) -> Result<()>;
    /// Overwrites `dgate`, `dup` with the gradients of `swiglu_forward`.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) -> Result<()>;
    /// Inverted dropout with a counter-based RNG: `out[i] = x[i] * keep(key, i) / (1 - p)`,
    /// where `keep` is a pure function of `(key, i)` (so the backward reapplies the same op to
    /// the gradient). `p = 0` copies.
    fn dropout(&self, out: &mut Self::Buf, x: &Self::Buf, p: f32, key: u64) -> Result<()>;
    /// Cross-entropy of `logits = hidden · lm_headᵀ` against `targets` (−100 = ignored),
    /// computed in chunks of tokens so the `[n, vocab]` logits are never materialised whole.
    /// Returns the per-token losses (0 where ignored). When `dhidden` is given it is
    /// overwritten with `∂(loss_scale · Σ losses)/∂hidden`.
    /// hidden `[n, h]`, lm_head `[vocab, h]`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        dhidden: Option<&mut Self::Buf>,
        hidden: &Self::Buf,
        lm_head: &Self::Buf,
        targets: &[i32],
        n: usize,
        h: usize,
        vocab: usize,
        loss_scale: f32,
    ) -> Result<Vec<f32>>;

    // ---- optimiser ----------------------------------------------------------------------
    /// One AdamW update of `param` from `grad` with moments `m`, `v` (decoupled weight
    /// decay, bias correction with the 1-based `step`), as torch.optim.AdamW computes it.
    /// The hyper-parameters are f64, like the Python floats torch computes its per-step
    /// scalars from (`1 − β2` of an f32 `0.999` would be off by 1.3e-5 relative).
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        step: u32,
    ) -> Result<()>;
}
