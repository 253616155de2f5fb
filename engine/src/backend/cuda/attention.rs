//! Launchers of the attention kernels (kernels/attention.cu forward, kernels/attention_backward.cu
//! backward) on [`CudaRuntime`]: causal GQA attention over packed rows, with the semantics of
//! `Backend::attention_forward` / `attention_backward` (the CPU backend's
//! backend/cpu/attention.rs is the reference). The sample starts of a step are checked and
//! uploaded once ([`AttnStarts`]); each launcher checks dims, dtypes and lengths, owns the grid
//! (from the comment above each kernel), dispatches on dtype once to the `{op}_{dtype}` kernel
//! and runs on the runtime's stream. The backward needs an f32 `[n, heads]` workspace for
//! `D = rowsum(dout∘out)`, which the caller's memory plan allocates once.
//! Neighbours: launch.rs (the other launchers, `check_len`), runtime.rs (buffers, stream).

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

use super::runtime::{CudaBuf, CudaRuntime};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Warps (token × head pairs) per block of `attention_forward_*` (ATTN_WARPS in attention.cu)
/// and of `attention_backward_dot_*` (ATTN_BWD_DOT_WARPS).
const ATTN_WARPS: u32 = 4;
/// Largest head_dim of the forward kernel (ATTN_MAX_HD in attention.cu).
pub const ATTN_FORWARD_MAX_HD: usize = 256;
/// Threads per block of the tiled kernels (ATTN_TILE_THREADS in attention_tiles.cuh).
const ATTN_TILE_THREADS: u32 = 128;
/// CUDA's grid y/z limit.
const GRID_YZ_MAX: usize = 65_535;

/// Query and key tile rows `(BQ, BK)` of the backward kernels for `hd`, or `None` when no
/// backward kernel exists for it (the table in attention_tiles.cuh and the instantiations in
/// attention_backward.cu; a test checks they agree).
pub fn backward_tiles(hd: usize) -> Option<(usize, usize)> {
    match hd {
        32 | 64 => Some((32, 32)),
        128 => Some((16, 16)),
        _ => None,
    }
}

/// True when the forward has a tiled kernel for `hd` (64 and 128; other head dims up to
/// [`ATTN_FORWARD_MAX_HD`] take the one-warp-per-query kernel). It uses the tiles and shared
/// memory of [`backward_tiles`] / [`backward_smem_bytes`].
pub fn forward_tiled(hd: usize) -> bool {
    hd == 64 || hd == 128
}

/// Dynamic shared memory bytes of the tiled forward and of the backward's dkdv and dq kernels for `hd`
/// (`AttnTiles::WORDS`·4 of attention_tiles.cuh: K, V, Q, dO tiles with one padding word per row, P, dS, lse, D,
/// starts).
pub fn backward_smem_bytes(hd: usize) -> Option<usize> {
    let (bq, bk) = backward_tiles(hd)?;
    Some(4 * ((2 * bk + 2 * bq) * (hd + 1) + 2 * bq * (bk + 1) + 3 * bq))
}

/// Checks per-token sample starts the way the CPU backend does: one per token of `batch` rows
/// of `seq`, each the in-row index of its sample's first token, so `starts[t] <= t % seq`.
pub fn check_starts(op: &'static str, starts: &[u32], batch: usize, seq: usize) -> Result<()> {
    let n = batch
        .checked_mul(seq)
        .ok_or_else(|| Error::shape(op, format!("batch {batch} × seq {seq} overflows")))?;
    if starts.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "starts has {} values, expected {n} for batch={batch}, seq={seq}",
                starts.len()
            ),
        ));
    }
    if let Some((t, &s)) = starts
        .iter()
        .enumerate()
        .find(|(t, &s)| s as usize > t % seq)
    {
        return Err(Error::shape(
            op,
            format!(
                "token {t} (index {} in its row) has sample start {s}, after itself",
                t % seq
            ),
        ));
    }
    Ok(())
}

/// The sample starts of one step on the device (int32 `[batch·seq]`), checked once by
/// [`CudaRuntime::upload_starts`] and shared by the forward and the backward of every layer.
#[derive(Debug)]
pub struct AttnStarts {
    starts: CudaSlice<i32>,
    batch: usize,
    seq: usize,
}

impl AttnStarts {
    /// Rows of the step.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Tokens per row.
    pub fn seq(&self) -> usize {
        self.seq
    }
}

/// Checked dims of one attention call, in the kernels' integer widths.
#[derive(Clone, Copy, Debug)]
struct Dims {
    op: &'static str,
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    n: usize,
}

impl Dims {
    fn new(
        op: &'static str,
        starts: &AttnStarts,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Self> {
        let (batch, seq) = (starts.batch, starts.seq);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || hd == 0 {
            return Err(Error::shape(
                op,
                format!("heads={heads} must be a positive multiple of kv_heads={kv_heads}, hd={hd} positive"),
            ));
        }
        let n = batch * seq;
        let fits = n
            .checked_mul(heads)
            .and_then(|x| x.checked_mul(hd))
            .is_some_and(|x| x <= usize::MAX / 4)
            && n.checked_mul(heads).is_some_and(|x| x <= i32::MAX as usize)
            && seq <= i32::MAX as usize;
        if !fits {
            return Err(Error::shape(
                op,
                format!("batch={batch}, seq={seq}, heads={heads}, hd={hd} exceed the kernels' int32 indexing"),
            ));
        }
        Ok(Dims {
            op,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
            n,
        })
    }

    fn describe(&self) -> String {
        format!(
            "batch={}, seq={}, heads={}, kv_heads={}, hd={}",
            self.batch, self.seq, self.heads, self.kv_heads, self.hd
        )
    }

    fn check(&self, name: &str, buf: &CudaBuf, width: usize) -> Result<()> {
        let want = self.n * width;
        if buf.len() == want {
            Ok(())
        } else {
            Err(Error::shape(
                self.op,
                format!(
                    "{name} has {} values, expected {want} for {}",
                    buf.len(),
                    self.describe()
                ),
            ))
        }
    }

    fn check_f32(&self, name: &str, buf: &CudaBuf) -> Result<()> {
        self.check(name, buf, self.heads)?;
        if buf.dtype() == DType::F32 {
            Ok(())
        } else {
            Err(Error::shape(
                self.op,
                format!("{name} is {:?}; it must be F32", buf.dtype()),
            ))
        }
    }

    /// Grid of one warp per (token, head) with [`ATTN_WARPS`] warps per block.
    fn warp_grid(&self, shared_mem_bytes: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                (self.n * self.heads).div_ceil(ATTN_WARPS as usize) as u32,
                1,
                1,
            ),
            block_dim: (32 * ATTN_WARPS, 1, 1),
            shared_mem_bytes,
        }
    }

    fn ints(&self) -> (i32, i32, i32, i32, i32) {
        // Dims::new bounded n·heads and seq by i32::MAX (so n, heads, kv_heads too), and hd
        // by the supported head dims.
        (
            self.n as i32,
            self.seq as i32,
            self.heads as i32,
            self.kv_heads as i32,
            self.hd as i32,
        )
    }

    fn scale(&self) -> f32 {
        (1.0 / (self.hd as f64).sqrt()) as f32
    }
}

/// A kernel storage type: f32 or bf16, and how to find it in a [`CudaBuf`].
trait Elem: DeviceRepr + Sized {
    const SUFFIX: &'static str;
    fn get(b: &CudaBuf) -> Option<&CudaSlice<Self>>;
    fn get_mut(b: &mut CudaBuf) -> Option<&mut CudaSlice<Self>>;
}
impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn get(b: &CudaBuf) -> Option<&CudaSlice<f32>> {
        match b {
            CudaBuf::F32(s) => Some(s),
            CudaBuf::Bf16(_) => None,
        }
    }
    fn get_mut(b: &mut CudaBuf) -> Option<&mut CudaSlice<f32>> {
        match b {
            CudaBuf::F32(s) => Some(s),
            CudaBuf::Bf16(_) => None,
        }
    }
}
impl Elem for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn get(b: &CudaBuf) -> Option<&CudaSlice<bf16>> {
        match b {
            CudaBuf::Bf16(s) => Some(s),
            CudaBuf::F32(_) => None,
        }
    }
    fn get_mut(b: &mut CudaBuf) -> Option<&mut CudaSlice<bf16>> {
        match b {
            CudaBuf::Bf16(s) => Some(s),
            CudaBuf::F32(_) => None,
        }
    }
}

fn dtype_error(op: &'static str, name: &str, got: DType, want: DType) -> Error {
    Error::shape(
        op,
        format!(
            "{name} is {got:?} but q is {want:?}; q, k, v, out and their gradients share one dtype"
        ),
    )
}

fn typed<'a, T: Elem>(op: &'static str, name: &str, b: &'a CudaBuf) -> Result<&'a CudaSlice<T>> {
    let dt = b.dtype();
    T::get(b).ok_or_else(|| dtype_error(op, name, dt, other_dtype(dt)))
}

fn typed_mut<'a, T: Elem>(
    op: &'static str,
    name: &str,
    b: &'a mut CudaBuf,
) -> Result<&'a mut CudaSlice<T>> {
    let dt = b.dtype();
    T::get_mut(b).ok_or_else(|| dtype_error(op, name, dt, other_dtype(dt)))
}

fn other_dtype(d: DType) -> DType {
    if d == DType::F32 {
        DType::BF16
    } else {
        DType::F32
    }
}

fn f32_mut<'a>(op: &'static str, name: &str, b: &'a mut CudaBuf) -> Result<&'a mut CudaSlice<f32>> {
    let dt = b.dtype();
    f32::get_mut(b).ok_or_else(|| Error::shape(op, format!("{name} is {dt:?}; it must be F32")))
}

fn f32_ref<'a>(op: &'static str, name: &str, b: &'a CudaBuf) -> Result<&'a CudaSlice<f32>> {
    let dt = b.dtype();
    f32::get(b).ok_or_else(|| Error::shape(op, format!("{name} is {dt:?}; it must be F32")))
}

/// Buffers of one backward call.
struct BwdBufs<'a> {
    dq: &'a mut CudaBuf,
    dk: &'a mut CudaBuf,
    dv: &'a mut CudaBuf,
    dsum: &'a mut CudaBuf,
    dout: &'a CudaBuf,
    q: &'a CudaBuf,
    k: &'a CudaBuf,
    v: &'a CudaBuf,
    out: &'a CudaBuf,
    lse: &'a CudaBuf,
}

impl CudaRuntime {
    /// Checks `starts` like the CPU backend (see [`check_starts`]) and uploads them as int32
    /// for the attention kernels of a step of `batch` rows of `seq` tokens.
    pub fn upload_starts(&self, starts: &[u32], batch: usize, seq: usize) -> Result<AttnStarts> {
        const OP: &str = "upload_starts";
        check_starts(OP, starts, batch, seq)?;
        let ints: Vec<i32> = starts.iter().map(|&s| s as i32).collect();
        let buf = if ints.is_empty() {
            self.driver(self.stream().null(), || "upload 0 starts".to_string())?
        } else {
            self.driver(self.stream().clone_htod(&ints), || {
                format!("upload {} starts", ints.len())
            })?
        };
        Ok(AttnStarts {
            starts: buf,
            batch,
            seq,
        })
    }

    /// Causal GQA attention forward (the semantics of `Backend::attention_forward`): writes
    /// `out [n, heads·hd]` and the log-sum-exp `lse [n, heads]` (f32) from `q [n, heads·hd]`,
    /// `k`, `v [n, kv_heads·hd]`; `out`, `q`, `k`, `v` all f32 or all bf16; any `hd` up to
    /// [`ATTN_FORWARD_MAX_HD`]. Scale `1/sqrt(hd)`.
    ///
    /// Launch (kernels/attention.cu): for hd 64 and 128 ([`forward_tiled`]) the tiled kernel,
    /// grid (ceil(seq/BQ), batch, heads), block (128), [`backward_smem_bytes`] of dynamic
    /// shared memory; otherwise grid (ceil(n·heads/4)), block (128), one warp per
    /// (token, head), dynamic shared memory 4·hd·4 bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        starts: &AttnStarts,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        const OP: &str = "attention_forward";
        let d = Dims::new(OP, starts, heads, kv_heads, hd)?;
        if hd > ATTN_FORWARD_MAX_HD {
            return Err(Error::unsupported(format!(
                "{OP}: head_dim {hd} exceeds the kernel's {ATTN_FORWARD_MAX_HD}"
            )));
        }
        if forward_tiled(hd) && (d.batch > GRID_YZ_MAX || d.heads > GRID_YZ_MAX) {
            return Err(Error::shape(
                OP,
                format!(
                    "batch and heads must be at most {GRID_YZ_MAX} (grid y/z) for {}",
                    d.describe()
                ),
            ));
        }
        d.check("out", out, heads * hd)?;
        d.check("q", q, heads * hd)?;
        d.check("k", k, kv_heads * hd)?;
        d.check("v", v, kv_heads * hd)?;
        d.check_f32("lse", lse)?;
        if d.n == 0 {
            return Ok(());
        }
        match q.dtype() {
            DType::F32 => self.forward_typed::<f32>(&d, out, lse, q, k, v, starts),
            DType::BF16 => self.forward_typed::<bf16>(&d, out, lse, q, k, v, starts),
            DType::F16 => Err(Error::unsupported(format!("{OP}: f16 buffers"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_typed<T: Elem>(
        &self,
        d: &Dims,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        starts: &AttnStarts,
    ) -> Result<()> {
        let op = d.op;
        let out = typed_mut::<T>(op, "out", out)?;
        let (q, k, v) = (
            typed::<T>(op, "q", q)?,
            typed::<T>(op, "k", k)?,
            typed::<T>(op, "v", v)?,
        );
        let lse = f32_mut(op, "lse", lse)?;
        let (n, seq, heads, kvh, hd) = d.ints();
        let scale = d.scale();
        if forward_tiled(d.hd) {
            let name = format!("attention_forward_tiled_hd{}_{}", d.hd, T::SUFFIX);
            let f = self.function(&name)?;
            let (bq, _) = backward_tiles(d.hd).unwrap_or((16, 16));
            let cfg = LaunchConfig {
                grid_dim: (d.seq.div_ceil(bq) as u32, d.batch as u32, d.heads as u32),
                block_dim: (ATTN_TILE_THREADS, 1, 1),
                shared_mem_bytes: backward_smem_bytes(d.hd).unwrap_or(0) as u32,
            };
            let mut b = self.stream().launch_builder(&f);
            b.arg(out).arg(lse).arg(q).arg(k).arg(v).arg(&starts.starts);
            b.arg(&seq).arg(&heads).arg(&kvh).arg(&scale);
            // SAFETY: attention_forward_tiled_hd<HD>_<T>(T* out, float* lse, const T* q,
            // const T* k, const T* v, const int* starts, int seq, int heads, int kv_heads,
            // float scale): types and order match; lengths were checked for batch·seq tokens,
            // the grid covers exactly batch rows and heads query heads, the starts were
            // validated on upload, and smem is the AttnTiles size of the kernel's HD.
            let r = unsafe { b.launch(cfg) };
            self.driver(r, || format!("launch {name} ({})", d.describe()))?;
            return Ok(());
        }
        let name = format!("attention_forward_{}", T::SUFFIX);
        let f = self.function(&name)?;
        let cfg = d.warp_grid(ATTN_WARPS * d.hd as u32 * 4);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(lse).arg(q).arg(k).arg(v).arg(&starts.starts);
        b.arg(&n)
            .arg(&seq)
            .arg(&heads)
            .arg(&kvh)
            .arg(&hd)
            .arg(&scale);
        // SAFETY: attention_forward_<T>(T* out, float* lse, const T* q, const T* k, const T* v,
        // const int* starts, int n, int seq, int heads, int kv_heads, int hd, float scale):
        // types and order match; every length was checked against n = batch·seq tokens, the
        // starts were validated on upload (each token's key range is non-empty and in its row)
        // and hd <= ATTN_MAX_HD fits the kernel's accumulators.
        let r = unsafe { b.launch(cfg) };
        self.driver(r, || format!("launch {name} ({})", d.describe()))?;
        Ok(())
    }

    /// Gradients of [`CudaRuntime::attention_forward`] (the semantics of
    /// `Backend::attention_backward`): overwrites `dq [n, heads·hd]`, `dk`, `dv
    /// [n, kv_heads·hd]` from `dout`, the forward's inputs and its `out` and `lse`; `dsum` is
    /// an f32 `[n, heads]` workspace (left holding `rowsum(dout∘out)`). All of q, k, v, out,
    /// dout, dq, dk, dv share one dtype (f32 or bf16); `hd` ∈ {32, 64, 128}.
    ///
    /// Launches (kernels/attention_backward.cu), in order on the stream:
    /// `attention_backward_dot` grid (ceil(n·heads/4)), block (128);
    /// `attention_backward_dkdv_hd{hd}` grid (ceil(seq/BK), batch, kv_heads), block (128);
    /// `attention_backward_dq_hd{hd}` grid (ceil(seq/BQ), batch, heads), block (128); the
    /// last two with [`backward_smem_bytes`] of dynamic shared memory. Deterministic: no
    /// atomics, every output element summed by one thread in a fixed order.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dsum: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        starts: &AttnStarts,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        let d = Dims::new(OP, starts, heads, kv_heads, hd)?;
        if backward_tiles(hd).is_none() {
            return Err(Error::unsupported(format!(
                "{OP}: head_dim {hd} (the backward kernels cover 32, 64 and 128)"
            )));
        }
        if d.batch > GRID_YZ_MAX || d.heads > GRID_YZ_MAX {
            return Err(Error::shape(
                OP,
                format!(
                    "batch and heads must be at most {GRID_YZ_MAX} (grid y/z) for {}",
                    d.describe()
                ),
            ));
        }
        let (qw, kw) = (heads * hd, kv_heads * hd);
        for (name, buf, w) in [
            ("dq", &*dq, qw),
            ("dk", &*dk, kw),
            ("dv", &*dv, kw),
            ("dout", dout, qw),
            ("q", q, qw),
            ("k", k, kw),
            ("v", v, kw),
            ("out", out, qw),
        ] {
            d.check(name, buf, w)?;
        }
        d.check_f32("lse", lse)?;
        d.check_f32("dsum", dsum)?;
        if d.n == 0 {
            return Ok(());
        }
        let bufs = BwdBufs {
            dq,
            dk,
            dv,
            dsum,
            dout,
            q,
            k,
            v,
            out,
            lse,
        };
        match q.dtype() {
            DType::F32 => self.backward_typed::<f32>(&d, bufs, starts),
            DType::BF16 => self.backward_typed::<bf16>(&d, bufs, starts),
            DType::F16 => Err(Error::unsupported(format!("{OP}: f16 buffers"))),
        }
    }

    fn backward_typed<T: Elem>(&self, d: &Dims, b: BwdBufs<'_>, starts: &AttnStarts) -> Result<()> {
        let op = d.op;
        let (dq, dk, dv) = (
            typed_mut::<T>(op, "dq", b.dq)?,
            typed_mut::<T>(op, "dk", b.dk)?,
            typed_mut::<T>(op, "dv", b.dv)?,
        );
        let (dout, q, k, v, out) = (
            typed::<T>(op, "dout", b.dout)?,
            typed::<T>(op, "q", b.q)?,
            typed::<T>(op, "k", b.k)?,
            typed::<T>(op, "v", b.v)?,
            typed::<T>(op, "out", b.out)?,
        );
        let dsum = f32_mut(op, "dsum", b.dsum)?;
        let lse = f32_ref(op, "lse", b.lse)?;
        let (n, seq, heads, kvh, hd) = d.ints();
        let scale = d.scale();
        let sfx = T::SUFFIX;
        let (bq, bk) = backward_tiles(d.hd).unwrap_or((16, 16));
        let smem = backward_smem_bytes(d.hd).unwrap_or(0) as u32;

        let name = format!("attention_backward_dot_{sfx}");
        let f = self.function(&name)?;
        let mut l = self.stream().launch_builder(&f);
        l.arg(&mut *dsum)
            .arg(dout)
            .arg(out)
            .arg(&n)
            .arg(&heads)
            .arg(&hd);
        // SAFETY: attention_backward_dot_<T>(float* dsum, const T* dout, const T* out, int n,
        // int heads, int hd): types and order match; dsum holds n·heads values and dout, out
        // n·heads·hd (checked), one warp per (token, head).
        let r = unsafe { l.launch(d.warp_grid(0)) };
        self.driver(r, || format!("launch {name} ({})", d.describe()))?;

        let name = format!("attention_backward_dkdv_hd{}_{sfx}", d.hd);
        let f = self.function(&name)?;
        let cfg = LaunchConfig {
            grid_dim: (d.seq.div_ceil(bk) as u32, d.batch as u32, d.kv_heads as u32),
            block_dim: (ATTN_TILE_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut l = self.stream().launch_builder(&f);
        l.arg(&mut *dk).arg(&mut *dv).arg(q).arg(k).arg(v).arg(dout);
        l.arg(lse).arg(&*dsum).arg(&starts.starts);
        l.arg(&seq).arg(&heads).arg(&kvh).arg(&scale);
        // SAFETY: attention_backward_dkdv_hd<HD>_<T>(T* dk, T* dv, const T* q, const T* k,
        // const T* v, const T* dout, const float* lse, const float* dsum, const int* starts,
        // int seq, int heads, int kv_heads, float scale): types and order match; lengths were
        // checked for batch·seq tokens, the grid covers exactly batch rows and kv_heads heads,
        // hd selects the kernel compiled for it and smem is its AttnTiles size (< 48 KiB).
        let r = unsafe { l.launch(cfg) };
        self.driver(r, || format!("launch {name} ({})", d.describe()))?;

        let name = format!("attention_backward_dq_hd{}_{sfx}", d.hd);
        let f = self.function(&name)?;
        let cfg = LaunchConfig {
            grid_dim: (d.seq.div_ceil(bq) as u32, d.batch as u32, d.heads as u32),
            block_dim: (ATTN_TILE_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut l = self.stream().launch_builder(&f);
        l.arg(dq).arg(q).arg(k).arg(v).arg(dout);
        l.arg(lse).arg(&*dsum).arg(&starts.starts);
        l.arg(&seq).arg(&heads).arg(&kvh).arg(&scale);
        // SAFETY: attention_backward_dq_hd<HD>_<T>(T* dq, const T* q, const T* k, const T* v,
        // const T* dout, const float* lse, const float* dsum, const int* starts, int seq,
        // int heads, int kv_heads, float scale): as for the dkdv launch, with the grid
        // covering batch rows and heads query heads.
        let r = unsafe { l.launch(cfg) };
        self.driver(r, || format!("launch {name} ({})", d.describe()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_table_matches_the_kernel_file() {
        let src = include_str!("../../../../kernels/attention_backward.cu");
        let mut seen = Vec::new();
        for line in src.lines() {
            let Some(rest) = line.trim().strip_prefix("ATTENTION_BACKWARD_HD(T, S, ") else {
                continue;
            };
            let nums: Vec<usize> = rest
                .trim_end_matches([')', '\\', ' '])
                .split(',')
                .map(|x| x.trim().parse().expect("a number"))
                .collect();
            assert_eq!(backward_tiles(nums[0]), Some((nums[1], nums[2])), "{line}");
            assert!(backward_smem_bytes(nums[0]).unwrap() <= 48 * 1024);
            seen.push(nums[0]);
        }
        assert_eq!(seen, [32, 64, 128]);
        assert_eq!(backward_tiles(96), None);
        let fwd = include_str!("../../../../kernels/attention.cu");
        assert!(fwd.contains(&format!("#define ATTN_MAX_HD {ATTN_FORWARD_MAX_HD}")));
        assert!(fwd.contains(&format!("#define ATTN_WARPS {ATTN_WARPS}")));
        let tiles = include_str!("../../../../kernels/attention_tiles.cuh");
        assert!(tiles.contains(&format!("#define ATTN_TILE_THREADS {ATTN_TILE_THREADS}")));
        for hd in [64, 128] {
            assert!(forward_tiled(hd));
            let (bq, bk) = backward_tiles(hd).unwrap();
            let line = format!("ATTENTION_FORWARD_TILED(bf16, bf16, {hd}, {bq}, {bk})");
            assert!(fwd.contains(&line), "{line}");
        }
        assert!(!forward_tiled(32) && !forward_tiled(96));
        assert!(src.contains(&format!("#define ATTN_BWD_DOT_WARPS {ATTN_WARPS}")));
    }

    #[test]
    fn starts_are_checked_like_the_cpu_backend() {
        check_starts("t", &[0, 0, 2, 0, 1, 1], 2, 3).unwrap();
        let e = check_starts("t", &[0, 0, 2, 0, 2, 1], 2, 3).unwrap_err();
        assert!(
            e.to_string().contains("token 4 (index 1 in its row)"),
            "{e}"
        );
        let e = check_starts("t", &[0, 0], 1, 3).unwrap_err();
        assert!(
            e.to_string().contains("starts has 2 values, expected 3"),
            "{e}"
        );
    }
}
