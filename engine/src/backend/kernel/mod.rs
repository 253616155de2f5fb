//! The kernel backend: [`KernelBackend`] implements `Backend` once over the kernels of
//! kernels/*.cu for any [`KernelDevice`], the small device-specific part (buffers, a generic
//! kernel launch, GEMM). Every op's logic lives here exactly once: argument and length checks,
//! grid / block / shared-memory choice (from the comment above each kernel), the kernel
//! variant (`{op}_{dtype}`, `hd64`/`hd128`, tiled or not, tensor cores for bf16 attention) and multi-launch sequences
//! (attention backward's dot → dkdv → dq, sum of squares' partials → total, chunked
//! cross-entropy's GEMM → softmax → GEMM).
//!
//! Two devices: [`EmuDevice`] (always compiled: host memory, the bundled CPU emulator that runs
//! the exact .cu sources, GEMMs through the CPU backend) and, behind the `cuda` feature,
//! `backend::cuda::CudaDevice` (cudarc launches, cuBLASLt GEMMs). Every launch's arguments are
//! checked against the kernel's parameter list in `table.rs` (count, kinds and element types)
//! before the device sees them, on both devices.
//!
//! Buffers made by `Backend::alloc`/`upload` hold f32; those of `alloc_compute`/`upload_compute`
//! hold the backend's [`Precision`] (f32 or bf16, [`KernelBackend::with_precision`]), and
//! [`KernelBackend::upload_as`] makes either. Every op with a bf16 kernel accepts bf16 buffers
//! (all of an op's activations share one dtype; `lse`, `rstd`, RoPE tables and optimiser state
//! stay f32); GEMMs take bf16 operands with an f32 or bf16 result.
//! Files: `table.rs` (kernel signatures + emulator FFI), `emu.rs` (EmuDevice), `ops.rs` (the
//! `Backend` impl), `attention.rs` (attention launches), `attn_tiles.rs` (their tile tables),
//! `decode.rs` (the KV cache's row copy and decoding attention), `rope.rs`, `xent.rs`
//! (cross-entropy).

mod attention; // attention_forward, attention_backward: checks, grids, the three backward launches
mod attn_tiles; // attention tile tables (CUDA-core and tensor-core kernels), which family a call takes
mod decode; // copy_rows, attention_decode: the KV cache's write and decoding attention
mod emu; // EmuDevice, EmuBuf: the kernel emulator as a device
mod ops; // impl Backend for KernelBackend
mod rope; // rope: checks, positions upload, one launch
mod table; // kernel parameter lists (one table), emulator FFI dispatch
mod xent; // cross_entropy: chunked lm_head GEMM + softmax kernel + dhidden GEMM

use std::sync::{Arc, Mutex, MutexGuard};

use half::bf16;

pub use attn_tiles::{
    backward_smem_bytes, backward_tiles, forward_tiled, mma_tiles, uses_tensor_cores, MmaTiles,
};
pub use emu::{EmuBuf, EmuDevice};
pub use table::{kernel_names, signature, Param};

use crate::backend::Precision;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Threads per block of the row-wise and element-wise kernels (`BLOCK_THREADS` in
/// kernels/common.cuh; a test checks).
pub const BLOCK_THREADS: u32 = 256;

/// Element type of a kernel buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    /// `float`.
    F32,
    /// `__nv_bfloat16`.
    Bf16,
    /// `int` (token ids, positions, targets, sample starts).
    I32,
    /// `double` (sum-of-squares partials).
    F64,
}

impl Elem {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::Bf16 => 2,
            Elem::F64 => 8,
        }
    }
    /// The kernel-name suffix of a storage dtype (`f32`, `bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
            Elem::I32 => "i32",
            Elem::F64 => "f64",
        }
    }
}

/// One kernel argument: a buffer at an element offset (writable or read-only) or a scalar.
#[derive(Debug)]
pub enum KArg<'a, B> {
    /// A buffer the kernel may write, from element `.1` on.
    Mut(&'a mut B, usize),
    /// A buffer the kernel only reads, from element `.1` on.
    Ref(&'a B, usize),
    /// `int`.
    I32(i32),
    /// `unsigned`.
    U32(u32),
    /// `float`.
    F32(f32),
    /// `unsigned long long`.
    U64(u64),
    /// `size_t`.
    Usize(usize),
}

/// A frozen Linear weight `[rows, cols]` in the backend's compute precision.
pub struct KernelWeight<B> {
    /// `[rows, cols]` row-major.
    pub buf: B,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features).
    pub cols: usize,
}

/// Launch geometry: grid and block dims and dynamic shared memory bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks (x, y, z).
    pub grid: [u32; 3],
    /// Threads per block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

impl Launch {
    /// A 1-D launch of `blocks` blocks of `threads`, or a shape error of `op` past the grid
    /// limit.
    pub fn linear(op: &'static str, blocks: usize, threads: u32) -> Result<Self> {
        let b = u32::try_from(blocks)
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| Error::shape(op, format!("{blocks} blocks exceed the grid limit")))?;
        Ok(Launch {
            grid: [b, 1, 1],
            block: [threads, 1, 1],
            smem: 0,
        })
    }
}

/// The shape of one GEMM, as `Backend::gemm` documents it: `op(A)` `[m, k]`, `op(B)` `[k, n]`,
/// C `[m, n]`; A stored `[k, m]` when `trans_a`, B stored `[n, k]` when `trans_b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// A is stored transposed.
    pub trans_a: bool,
    /// B is stored transposed.
    pub trans_b: bool,
}

impl GemmShape {
    /// Checks that C, A and B hold at least `m·n`, `m·k`, `k·n` values past their offsets;
    /// returns those three sizes.
    pub fn check(&self, c: usize, a: usize, b: usize) -> Result<[usize; 3]> {
        let GemmShape { m, n, k, .. } = *self;
        let mul = |x: usize, y: usize| {
            x.checked_mul(y)
                .ok_or_else(|| Error::shape("gemm", format!("size of [{x}, {y}] overflows")))
        };
        let want = [mul(m, n)?, mul(m, k)?, mul(k, n)?];
        for (name, have, w) in [("c", c, want[0]), ("a", a, want[1]), ("b", b, want[2])] {
            if have < w {
                return Err(Error::shape(
                    "gemm",
                    format!("{name} has {have} values past its offset, expected {w} for {self:?}"),
                ));
            }
        }
        Ok(want)
    }
}

/// The device-specific part of [`KernelBackend`]: buffers, one generic kernel launch, GEMM.
pub trait KernelDevice: Send + Sync {
    /// A device buffer of values of one [`Elem`].
    type Buf: Send + Sync;

    /// A short name for logs ("emu", "cuda:0").
    fn name(&self) -> String;
    /// A zero-filled buffer of `len` values of `elem`.
    fn alloc(&self, elem: Elem, len: usize) -> Result<Self::Buf>;
    /// A new f32 buffer holding `data`.
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A new bf16 buffer holding `data`.
    fn upload_bf16(&self, data: &[bf16]) -> Result<Self::Buf>;
    /// A new i32 buffer holding `data`.
    fn upload_i32(&self, data: &[i32]) -> Result<Self::Buf>;
    /// The values of an f32 or bf16 buffer as f32 (bf16 widened exactly); waits for the
    /// device. Errors on other element types.
    fn download_f32(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// The values of an f64 buffer; waits for the device.
    fn download_f64(&self, buf: &Self::Buf) -> Result<Vec<f64>>;
    /// Number of values.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Bytes of device memory in use, where the device can tell (the GPU: `total − free`).
    fn memory_in_use(&self) -> Option<u64> {
        None
    }
    /// Element type.
    fn elem(&self, buf: &Self::Buf) -> Elem;
    /// Launches kernel `name` of kernels/*.cu with `cfg` and `args` (already checked against
    /// the kernel's parameter list by the caller, [`check_args`]).
    ///
    /// # Safety
    /// Every buffer argument must hold, past its offset, at least as many values as the
    /// kernel reads or writes for `cfg` and the scalar arguments (the layout documented
    /// above the kernel).
    unsafe fn launch(
        &self,
        name: &str,
        cfg: &Launch,
        args: &mut [KArg<'_, Self::Buf>],
    ) -> Result<()>;
    /// `C = beta·C + alpha·op(A)·op(B)` on row-major matrices starting at element offsets
    /// `c.1`, `a.1`, `b.1` of the buffers (checked with [`GemmShape::check`]). A and B share
    /// an element type (f32 or bf16); C is f32 or that type. `beta = 0` does not read C.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        c: (&mut Self::Buf, usize),
        a: (&Self::Buf, usize),
        b: (&Self::Buf, usize),
        shape: GemmShape,
        alpha: f32,
        beta: f32,
    ) -> Result<()>;
}

/// Checks `args` against kernel `name`'s parameter list: the count, each argument's kind
/// (buffer written, buffer read, scalar type), each buffer's element type, offsets within
/// the buffer. Errors name the kernel and the argument.
pub fn check_args<D: KernelDevice>(dev: &D, name: &str, args: &[KArg<'_, D::Buf>]) -> Result<()> {
    let bad = |msg: String| Error::unsupported(format!("kernel `{name}`: {msg}"));
    let sig = signature(name).ok_or_else(|| bad("not in the kernel table".into()))?;
    if sig.len() != args.len() {
        return Err(bad(format!(
            "{} arguments given, the kernel takes {}",
            args.len(),
            sig.len()
        )));
    }
    for (i, (p, a)) in sig.iter().zip(args).enumerate() {
        let buf = |b: &D::Buf, off: usize, want: Elem| {
            let (e, len) = (dev.elem(b), dev.len(b));
            if e != want {
                Err(bad(format!(
                    "argument {i} is a {e:?} buffer, expected {want:?}"
                )))
            } else if off > len {
                Err(bad(format!(
                    "argument {i}: offset {off} past the buffer's {len} values"
                )))
            } else {
                Ok(())
            }
        };
        match (p, a) {
            (Param::Out(e), KArg::Mut(b, off)) => buf(b, *off, *e)?,
            (Param::In(e), KArg::Ref(b, off)) => buf(b, *off, *e)?,
            (Param::In(e), KArg::Mut(b, off)) => buf(b, *off, *e)?,
            (Param::I32, KArg::I32(_))
            | (Param::U32, KArg::U32(_))
            | (Param::F32, KArg::F32(_))
            | (Param::U64, KArg::U64(_))
            | (Param::Usize, KArg::Usize(_)) => {}
            (p, a) => {
                let kind = match a {
                    KArg::Mut(..) => "a writable buffer",
                    KArg::Ref(..) => "a read-only buffer",
                    KArg::I32(_) => "i32",
                    KArg::U32(_) => "u32",
                    KArg::F32(_) => "f32",
                    KArg::U64(_) => "u64",
                    KArg::Usize(_) => "usize",
                };
                return Err(bad(format!("argument {i} is {kind}, expected {p:?}")));
            }
        }
    }
    Ok(())
}

/// Small per-step host metadata uploaded as i32 and kept while it does not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meta {
    Ids,
    Positions,
    Starts,
    Targets,
    /// `sum_squares_each`'s partial offsets per tensor (the same list every step).
    NormOffsets,
    /// `copy_rows`' destination rows.
    Rows,
    /// `attention_decode`'s first cache row per query.
    First,
    /// `attention_decode`'s last key position per query.
    Last,
}

/// Device buffers reused across calls: the metadata cache and grow-only workspaces.
struct State<B> {
    /// `(host copy, device copy)` per [`Meta`] slot.
    meta: [Option<(Vec<i32>, B)>; 8],
    /// f32 `[n, heads]` attention backward's `D = rowsum(dout∘out)`.
    dsum: Option<B>,
    /// f32 `[rows, vocab]` cross-entropy logits of one chunk.
    logits: Option<B>,
    /// f32 `[n]` cross-entropy losses.
    losses: Option<B>,
    /// f64 partial sums of squares (and the total at the end).
    partials: Option<B>,
    /// f64 per-tensor sums of squares of `sum_squares_each`.
    sums: Option<B>,
}

/// `Backend` over the kernels of kernels/*.cu on device `D` (see the module doc). Clones
/// share the device and the workspaces.
pub struct KernelBackend<D: KernelDevice> {
    dev: D,
    state: Arc<Mutex<State<D::Buf>>>,
    /// Storage of activations and frozen weights (`Backend::precision`).
    precision: Precision,
}

impl<D: KernelDevice + Clone> Clone for KernelBackend<D> {
    fn clone(&self) -> Self {
        KernelBackend {
            dev: self.dev.clone(),
            state: self.state.clone(),
            precision: self.precision,
        }
    }
}

impl<D: KernelDevice> std::fmt::Debug for KernelBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelBackend({}, {})", self.dev.name(), self.precision)
    }
}

impl<D: KernelDevice> KernelBackend<D> {
    /// A backend running on `dev` in f32.
    pub fn new(dev: D) -> Self {
        KernelBackend {
            dev,
            state: Arc::new(Mutex::new(State {
                meta: std::array::from_fn(|_| None),
                dsum: None,
                logits: None,
                losses: None,
                partials: None,
                sums: None,
            })),
            precision: Precision::F32,
        }
    }

    /// This backend computing in `precision` (see [`Precision`]): the model then stores its
    /// frozen weights and activations in it (`Backend::alloc_compute`, `upload_compute`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The element type of [`Backend::alloc_compute`] buffers.
    pub(super) fn compute_elem(&self) -> Elem {
        match self.precision {
            Precision::F32 => Elem::F32,
            Precision::Bf16 => Elem::Bf16,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// A buffer holding `data` stored as `dtype` (f32, or bf16 rounded to nearest even).
    pub fn upload_as(&self, dtype: DType, data: &[f32]) -> Result<D::Buf> {
        match dtype {
            DType::F32 => self.dev.upload_f32(data),
            DType::BF16 => {
                let h: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
                self.dev.upload_bf16(&h)
            }
            DType::F16 => Err(Error::unsupported(format!(
                "{}: f16 buffers are not supported",
                self.dev.name()
            ))),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State<D::Buf>>> {
        self.state
            .lock()
            .map_err(|_| Error::device(self.dev.name(), "kernel backend", "state lock poisoned"))
    }

    /// Checks `args` against the kernel table, then launches.
    ///
    /// # Safety
    /// As [`KernelDevice::launch`]: the buffers are long enough for `cfg` and the scalars.
    unsafe fn launch(&self, name: &str, cfg: Launch, args: &mut [KArg<'_, D::Buf>]) -> Result<()> {
        check_args(&self.dev, name, args)?;
        // SAFETY: the caller's contract, forwarded.
        unsafe { self.dev.launch(name, &cfg, args) }
    }

    /// The storage suffix of `buf` for `{op}_{dtype}` kernels: f32 or bf16, else an error.
    fn storage(&self, op: &'static str, name: &str, buf: &D::Buf) -> Result<Elem> {
        match self.dev.elem(buf) {
            e @ (Elem::F32 | Elem::Bf16) => Ok(e),
            e => Err(Error::shape(
                op,
                format!("{name} is {e:?}; expected f32 or bf16"),
            )),
        }
    }

    /// Errors unless every buffer of `bufs` has element type `want`.
    fn same_elem(&self, op: &'static str, want: Elem, bufs: &[(&str, &D::Buf)]) -> Result<()> {
        for (name, b) in bufs {
            let e = self.dev.elem(b);
            if e != want {
                return Err(Error::shape(
                    op,
                    format!("{name} is {e:?}, expected {want:?} like the op's other buffers"),
                ));
            }
        }
        Ok(())
    }
}

/// Reuses the cached device copy of `host` in `slot`, or uploads it.
fn meta_buf<'s, D: KernelDevice>(
    dev: &D,
    slot: &'s mut Option<(Vec<i32>, D::Buf)>,
    host: impl ExactSizeIterator<Item = i32>,
) -> Result<&'s D::Buf> {
    let host: Vec<i32> = host.collect();
    let fresh = !matches!(slot, Some((h, _)) if *h == host);
    if fresh {
        let buf = dev.upload_i32(&host)?;
        *slot = Some((host, buf));
    }
    match slot {
        Some((_, b)) => Ok(b),
        None => Err(Error::unsupported("kernel backend: metadata slot empty")),
    }
}

/// A grow-only workspace of at least `len` values of `elem` in `slot`.
fn scratch<'s, D: KernelDevice>(
    dev: &D,
    slot: &'s mut Option<D::Buf>,
    elem: Elem,
    len: usize,
) -> Result<&'s mut D::Buf> {
    let fits = matches!(slot, Some(b) if dev.elem(b) == elem && dev.len(b) >= len);
    if !fits {
        *slot = None; // free the old one first
        *slot = Some(dev.alloc(elem, len.max(1))?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::unsupported("kernel backend: workspace slot empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_threads_matches_common_cuh() {
        let src = include_str!("../../../../kernels/common.cuh");
        let value = src
            .lines()
            .find_map(|l| l.trim().strip_prefix("#define BLOCK_THREADS "))
            .map(str::trim)
            .expect("kernels/common.cuh defines BLOCK_THREADS");
        assert_eq!(value.parse::<u32>().unwrap(), BLOCK_THREADS);
    }

    #[test]
    fn grid_limit_is_a_shape_error() {
        assert_eq!(Launch::linear("t", 5, 256).unwrap().grid, [5, 1, 1]);
        let e = Launch::linear("t", 1usize << 40, 256).unwrap_err();
        assert!(e.to_string().contains("exceed the grid limit"), "{e}");
    }

    #[test]
    fn gemm_shape_checks_lengths_past_offsets() {
        let s = GemmShape {
            m: 2,
            n: 3,
            k: 4,
            trans_a: false,
            trans_b: true,
        };
        assert_eq!(s.check(6, 8, 12).unwrap(), [6, 8, 12]);
        let e = s.check(6, 7, 12).unwrap_err();
        assert!(e.to_string().contains("a has 7 values"), "{e}");
    }
}
