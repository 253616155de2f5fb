//! GEMMs of the CUDA backend through cuBLASLt, deterministic by construction: bf16 (or f32)
//! inputs with fp32 accumulation (`CUBLAS_COMPUTE_32F`, never TF32), one fixed 32 MiB
//! workspace, split-K reductions excluded (the heuristic preference allows only
//! `CUBLASLT_REDUCTION_SCHEME_NONE`, so no partial sums are combined by atomics), and the
//! algorithm pinned per shape: the heuristic's first answer is cached with the descriptors the
//! first time a shape is seen and reused for every later call. Same inputs and shape on the
//! same card and library therefore give the same bits.
//!
//! [`Gemm::matmul`] has the semantics of `Backend::gemm` on row-major buffers; the row-major
//! product `C = op(A)·op(B)` is cuBLASLt's column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so the operands
//! are passed swapped. [`Gemm::lora_forward`] computes a LoRA Linear `Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ`
//! without forming `ΔW = B·A` (the rank-r intermediate `U = X·Aᵀ` lives in a caller buffer).
//! Neighbours: runtime.rs (stream, buffers), attention.rs and launch.rs (the kernels around
//! the GEMMs), backend/cpu/gemm.rs (the reference semantics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::probe::{check_library, CUBLASLT_LIB};
use super::runtime::{CudaBuf, CudaRuntime};
use crate::backend::kernel::{Elem, GemmShape};
use crate::error::{Error, Result};

/// Bytes of the one cuBLASLt workspace (NVIDIA's recommendation for Hopper; fixed on every
/// card so the algorithm choice does not depend on it).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// What the algorithm choice depends on: the column-major problem handed to cuBLASLt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    trans_a: bool,
    trans_b: bool,
    ab: Elem,
    c: Elem,
    /// The smallest power-of-two alignment (bytes, at most 256) of the three pointers: the
    /// heuristic only offers algorithms that accept it (cuBLASLt assumes 256 otherwise).
    align: u32,
}

/// The descriptors and the pinned algorithm of one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: a plan's descriptors are created once, never modified afterwards and only read by
// cublasLtMatmul (which allows concurrent use of descriptors); they are destroyed in Drop,
// when no call can use them any more.
unsafe impl Send for Plan {}
// SAFETY: as above; shared references only read the descriptors.
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by Plan::new and is destroyed exactly once here.
        // Errors on teardown cannot be reported and leak nothing we could free.
        unsafe {
            // A plan whose construction failed part-way holds nulls for what was not created.
            for layout in [self.a, self.b, self.c] {
                if !layout.is_null() {
                    let _ = result::destroy_matrix_layout(layout);
                }
            }
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

/// The cuBLASLt type of a float element type (callers pass only F32 and Bf16).
fn cuda_type(d: Elem) -> sys::cudaDataType {
    match d {
        Elem::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        Elem::F64 => sys::cudaDataType_t::CUDA_R_64F,
        Elem::F32 | Elem::I32 => sys::cudaDataType_t::CUDA_R_32F,
    }
}

/// cublasOperation_t as the int32 the descriptor attribute takes: CUBLAS_OP_T = 1, _N = 0.
fn op(trans: bool) -> i32 {
    trans as i32
}

impl Plan {
    /// Descriptors of the column-major `C[m, n] = op(A)·op(B)` and the heuristic's first
    /// algorithm among those with no split-K reduction, for a workspace of
    /// [`WORKSPACE_BYTES`].
    fn new(handle: sys::cublasLtHandle_t, key: Key) -> std::result::Result<Plan, String> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: result::CublasError| format!("{what}: {err}")
        };
        let (ab, ct) = (cuda_type(key.ab), cuda_type(key.c));
        // Stored (column-major) shapes: A is [m, k] or, transposed, [k, m]; B [k, n] or [n, k].
        let (ar, ac) = if key.trans_a {
            (key.k, key.m)
        } else {
            (key.m, key.k)
        };
        let (br, bc) = if key.trans_b {
            (key.n, key.k)
        } else {
            (key.k, key.n)
        };
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(e("create matmul descriptor"))?;
        // From here on the partly built plan frees what exists on any early return.
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            // SAFETY: cublasLtMatmulAlgo_t is a plain array of u64 (all-zero is a valid value,
            // overwritten below before any use).
            algo: unsafe { std::mem::zeroed() },
        };
        for (attr, trans) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                key.trans_a,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                key.trans_b,
            ),
        ] {
            let v = op(trans);
            // SAFETY: the attribute takes a cublasOperation_t (int32), passed by pointer with
            // its size; the descriptor is live.
            unsafe {
                result::set_matmul_desc_attribute(
                    plan.desc,
                    attr,
                    (&v as *const i32).cast(),
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(e("set transpose"))?;
        }
        plan.a = result::create_matrix_layout(ab, ar, ac, ar as i64).map_err(e("layout A"))?;
        plan.b = result::create_matrix_layout(ab, br, bc, br as i64).map_err(e("layout B"))?;
        plan.c =
            result::create_matrix_layout(ct, key.m, key.n, key.m as i64).map_err(e("layout C"))?;
        let pref = result::create_matmul_pref().map_err(e("create preference"))?;
        let ws = WORKSPACE_BYTES as u64;
        let no_split_k = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_NONE as u32;
        // SAFETY: the preference is live; MAX_WORKSPACE_BYTES takes a u64 and
        // REDUCTION_SCHEME_MASK a u32, each passed by pointer with its size. The heuristic
        // reads the live descriptors; the preference is destroyed once, after its last use.
        let heur = unsafe {
            let r = result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .and_then(|()| {
                result::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    (&no_split_k as *const u32).cast(),
                    std::mem::size_of::<u32>(),
                )
            })
            .and_then(|()| {
                use sys::cublasLtMatmulPreferenceAttributes_t as P;
                [
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ]
                .into_iter()
                .try_for_each(|attr| {
                    result::set_matmul_pref_attribute(
                        pref,
                        attr,
                        (&key.align as *const u32).cast(),
                        std::mem::size_of::<u32>(),
                    )
                })
            })
            .and_then(|()| {
                result::get_matmul_algo_heuristic(
                    handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref,
                )
            });
            let _ = result::destroy_matmul_pref(pref);
            r
        }
        .map_err(e("no cuBLASLt algorithm without split-K reduction"))?;
        plan.algo = heur.algo;
        Ok(plan)
    }
}

/// A cuBLASLt handle with its fixed workspace and the plans of the shapes seen so far, on the
/// stream of one [`CudaRuntime`].
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<Key, Arc<Plan>>>,
    label: String,
}

// SAFETY: the handle is used only under the plans mutex or for cublasLtMatmul calls, which
// cuBLASLt allows from several host threads on one handle; the workspace is only used by
// matmuls enqueued on the one stream, which serialises them.
unsafe impl Send for Gemm {}
// SAFETY: as above.
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        if let Ok(p) = self.plans.get_mut() {
            p.clear();
        }
        // SAFETY: the handle was created in Gemm::new and is destroyed once, after its plans.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

impl std::fmt::Debug for Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gemm({})", self.label)
    }
}

/// The device pointer of element `off` of a buffer, recorded on `stream`.
fn ptr(buf: &CudaBuf, off: usize, stream: &CudaStream) -> u64 {
    let base = match buf {
        CudaBuf::F32(s) => s.device_ptr(stream).0,
        CudaBuf::Bf16(s) => s.device_ptr(stream).0,
        CudaBuf::I32(s) => s.device_ptr(stream).0,
        CudaBuf::F64(s) => s.device_ptr(stream).0,
    };
    base + (off * buf.elem().size()) as u64
}

fn ptr_mut(buf: &mut CudaBuf, off: usize, stream: &CudaStream) -> u64 {
    let size = buf.elem().size();
    let base = match buf {
        CudaBuf::F32(s) => s.device_ptr_mut(stream).0,
        CudaBuf::Bf16(s) => s.device_ptr_mut(stream).0,
        CudaBuf::I32(s) => s.device_ptr_mut(stream).0,
        CudaBuf::F64(s) => s.device_ptr_mut(stream).0,
    };
    base + (off * size) as u64
}

impl Gemm {
    /// A cuBLASLt handle and its [`WORKSPACE_BYTES`] workspace on `rt`'s stream. Errors
    /// (never panics) when libcublasLt.so.13 is missing.
    pub fn new(rt: &CudaRuntime) -> Result<Self> {
        let label = rt.label().to_string();
        check_library(CUBLASLT_LIB).map_err(|why| Error::device(&label, "create cuBLASLt", why))?;
        rt.driver(rt.context().bind_to_thread(), || "bind context".to_string())?;
        let handle = result::create_handle()
            .map_err(|e| Error::device(&label, "create cuBLASLt handle", e.to_string()))?;
        let workspace = match rt.stream().alloc_zeros::<u8>(WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was just created and is not used anywhere else.
                let _ = unsafe { result::destroy_handle(handle) };
                return Err(rt.error(
                    format!("alloc cuBLASLt workspace ({WORKSPACE_BYTES} bytes)"),
                    super::probe::driver_error_text(&e),
                ));
            }
        };
        Ok(Gemm {
            handle,
            workspace,
            stream: rt.stream().clone(),
            plans: Mutex::new(HashMap::new()),
            label,
        })
    }

    /// Number of shapes planned so far (each with its pinned algorithm).
    pub fn planned_shapes(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn plan(&self, key: Key) -> Result<Arc<Plan>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| Error::device(&self.label, "gemm", "plan cache poisoned"))?;
        if let Some(p) = plans.get(&key) {
            return Ok(p.clone());
        }
        let plan = Plan::new(self.handle, key).map_err(|why| {
            Error::device(
                &self.label,
                format!(
                    "plan gemm m={} n={} k={} ({:?} in, {:?} out)",
                    key.n, key.m, key.k, key.ab, key.c
                ),
                why,
            )
        })?;
        let plan = Arc::new(plan);
        plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// `C = beta·C + alpha·op(A)·op(B)` on row-major buffers, the semantics of
    /// `Backend::gemm`: `op(A)` is `[m, k]` (A stored `[k, m]` when `trans_a`), `op(B)` is
    /// `[k, n]` (B stored `[n, k]` when `trans_b`), C `[m, n]`, each buffer holding exactly
    /// that many values. A and B share a dtype (bf16 or f32); C is f32 or that dtype. fp32
    /// accumulation; `beta = 0` does not read C.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        c: &mut CudaBuf,
        a: &CudaBuf,
        b: &CudaBuf,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let s = GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        let want = s.check(c.len(), a.len(), b.len())?;
        for (name, have, w) in [
            ("c", c.len(), want[0]),
            ("a", a.len(), want[1]),
            ("b", b.len(), want[2]),
        ] {
            if have != w {
                return Err(Error::shape(
                    "gemm",
                    format!("{name} has {have} values, expected {w} for {s:?}"),
                ));
            }
        }
        self.matmul_at((c, 0), (a, 0), (b, 0), s, alpha, beta)
    }

    /// [`Gemm::matmul`] on the matrices starting at element offsets `c.1`, `a.1`, `b.1` of the
    /// buffers (which hold at least the shape's sizes past them).
    pub fn matmul_at(
        &self,
        c: (&mut CudaBuf, usize),
        a: (&CudaBuf, usize),
        b: (&CudaBuf, usize),
        s: GemmShape,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let ((c, c0), (a, a0), (b, b0)) = (c, a, b);
        let GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b,
        } = s;
        let dims = format!("m={m}, n={n}, k={k}, trans_a={trans_a}, trans_b={trans_b}");
        let avail = |buf: &CudaBuf, off: usize| buf.len().saturating_sub(off);
        s.check(avail(c, c0), avail(a, a0), avail(b, b0))?;
        let float = |e| e == Elem::F32 || e == Elem::Bf16;
        let (ea, eb, ec) = (a.elem(), b.elem(), c.elem());
        if ea != eb || !float(ea) || (ec != Elem::F32 && ec != ea) {
            return Err(Error::shape(
                OP,
                format!(
                    "a, b, c are {ea:?}, {eb:?}, {ec:?}; a and b must share f32 or bf16 and c be F32 or that type"
                ),
            ));
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: C = beta·C, which cuBLASLt does not accept as a problem.
            return Err(Error::unsupported(format!("{OP}: k = 0 ({dims})")));
        }
        if [m, n, k].iter().any(|&x| x > i32::MAX as usize) {
            return Err(Error::shape(
                OP,
                format!("a dimension exceeds i32 for {dims}"),
            ));
        }
        // Row-major C[m, n] = op(A)·op(B) is column-major Cᵀ[n, m] = op(B)ᵀ·op(A)ᵀ, where the
        // row-major buffers of B and A are column-major Bᵀ and Aᵀ: swap the operands.
        let st = &*self.stream;
        let (pa, pb) = (ptr(b, b0, st), ptr(a, a0, st));
        let pc = ptr_mut(c, c0, st);
        let align = 1u32 << (pa | pb | pc | 256).trailing_zeros();
        let key = Key {
            m: n as u64,
            n: m as u64,
            k: k as u64,
            trans_a: trans_b,
            trans_b: trans_a,
            ab: ea,
            c: ec,
            align,
        };
        let plan = self.plan(key)?;
        let pw = self.workspace.device_ptr(st).0;
        // SAFETY: the plan's layouts describe exactly these matrices (sizes checked above past
        // each offset: A' = B with n×k elements, B' = A with k×m, C with m×n, leading
        // dimensions of the stored shapes); alpha/beta are f32 as the f32 scale type requires;
        // the workspace holds WORKSPACE_BYTES, the size the algorithm was chosen for;
        // everything runs on the one stream the buffers belong to.
        let r = unsafe {
            result::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                pa as *const _,
                plan.a,
                pb as *const _,
                plan.b,
                pc as *const _,
                plan.c,
                pc as *mut _,
                plan.c,
                &plan.algo,
                pw as *mut _,
                WORKSPACE_BYTES,
                st.cu_stream() as *mut _,
            )
        };
        r.map_err(|e| {
            Error::device(
                &self.label,
                format!("cublasLtMatmul ({dims})"),
                e.to_string(),
            )
        })
    }

    /// A LoRA Linear forward without forming `ΔW`: `Y = X·Wᵀ + s·(X·Aᵀ)·Bᵀ` with X `[n, in]`,
    /// W `[out, in]`, A `[r, in]`, B `[out, r]`, Y `[n, out]`; writes the rank-r intermediate
    /// `U = X·Aᵀ` `[n, r]` (kept for the backward: `dB = s·dYᵀ·U`). X, W, A, B and U share a
    /// dtype; Y is f32 or that dtype. Three GEMMs on the stream, in this order.
    #[allow(clippy::too_many_arguments)]
    pub fn lora_forward(
        &self,
        y: &mut CudaBuf,
        u: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        a: &CudaBuf,
        b: &CudaBuf,
        n: usize,
        d_in: usize,
        d_out: usize,
        r: usize,
        s: f32,
    ) -> Result<()> {
        if u.elem() != a.elem() {
            return Err(Error::shape(
                "lora_forward",
                format!(
                    "u is {:?} but a is {:?}; they must match",
                    u.elem(),
                    a.elem()
                ),
            ));
        }
        self.matmul(y, x, w, n, d_out, d_in, false, true, 1.0, 0.0)?;
        self.matmul(u, x, a, n, r, d_in, false, true, 1.0, 0.0)?;
        self.matmul(y, u, b, n, d_out, r, false, true, s, 1.0)
    }
}
