//! The CUDA backend (behind the `cuda` feature): the kernel fatbin that build.rs compiles
//! from kernels/*.cu (sm_80 and sm_90 SASS plus compute_80 PTX for newer GPUs), nvcc's
//! `ptxas -v` report of it, and the cudarc side under it: GPU detection that never panics
//! (`probe`), the context / stream / module and device buffers (`runtime`), cuBLASLt GEMMs
//! (`gemm`), the GPU as a `KernelDevice` (`device`: [`CudaBackend`] = `KernelBackend<CudaDevice>`,
//! the `Backend` implementation whose op logic lives in backend/kernel) and the `cast`
//! launcher (`launch`). The launch shape of each kernel is documented above it in kernels/.
//! Neighbours: `backend::kernel` (the op logic, also run on the CPU kernel emulator in CI:
//! tests/kernel_backend.rs), `backend::cpu` (the reference semantics), `backend::device`
//! (device choice with a CPU fallback). GPU tests: tests/cuda_*.rs.

pub mod device; // CudaDevice (KernelDevice on one GPU), CudaBackend
pub mod gemm; // Gemm: cuBLASLt matmul (pinned algorithm per shape, no split-K), lora_forward
pub mod launch; // CudaRuntime::cast
pub mod probe; // check_library, open_device, probe, GpuInfo: detection that never panics
pub mod runtime; // CudaRuntime (context, stream, module), CudaBuf (f32 / bf16 / i32 / f64)

pub use device::{CudaBackend, CudaDevice};
pub use probe::GpuInfo;
pub use runtime::{CudaBuf, CudaRuntime};

/// Bytes aligned to 16 (a fatbin handed to `cuModuleLoadData` must be 8-byte aligned).
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

static FATBIN: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin")));

/// Every kernel of kernels/*.cu in one fatbin, 16-byte aligned.
pub static KERNELS_FATBIN: &[u8] = &FATBIN.0;

/// The `ptxas -v` output of the fatbin build: registers, shared memory, stack and spills per
/// kernel and architecture (the build fails on any spill).
pub const PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas-report.txt"));
