//! Shared pieces of the criterion benches (ops.rs, step.rs): the backends a bench runs on
//! and how a timed iteration ends. Every bench is written once, generic over
//! [`BenchBackend`], and runs on the CPU backend always and, in a build with the `cuda`
//! feature, on the CUDA backend when GPU 0 is usable ([`cuda`] prints one line saying why
//! not otherwise). GPU work is queued asynchronously, so each timed iteration ends with
//! [`Target::sync`], a one-value read-back that waits for the stream (on the CPU a copy of
//! one float), as `gradients bench --device cuda` ends each step with a read-back. [`emu`]
//! runs the same benches on the kernel emulator, to check the GPU path without a GPU.
#![allow(dead_code)]

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::{EmuDevice, KernelBackend};
use gradients_engine::backend::Backend;
use gradients_engine::DType;

/// A backend with the storage dtypes it can bench.
pub trait BenchBackend: Backend + Clone {
    /// `data` stored as `dtype`, or `None` when the backend has no such storage.
    fn upload_dtype(&self, dtype: DType, data: &[f32]) -> Option<Self::Buf>;
    /// The storage dtypes of the ops that take them (f32 first).
    fn dtypes(&self) -> &'static [DType];
}

impl BenchBackend for CpuBackend {
    fn upload_dtype(&self, dtype: DType, data: &[f32]) -> Option<Vec<f32>> {
        (dtype == DType::F32).then(|| data.to_vec())
    }
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32]
    }
}

/// The kernel backend over the emulator: the CUDA benches' op logic and bf16 paths without a
/// GPU ([`emu`]).
impl BenchBackend for KernelBackend<EmuDevice> {
    fn upload_dtype(&self, dtype: DType, data: &[f32]) -> Option<Self::Buf> {
        Some(self.upload_as(dtype, data).expect("upload to the emulator"))
    }
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::BF16]
    }
}

#[cfg(feature = "cuda")]
impl BenchBackend for gradients_engine::backend::cuda::CudaBackend {
    fn upload_dtype(&self, dtype: DType, data: &[f32]) -> Option<Self::Buf> {
        Some(self.upload_as(dtype, data).expect("upload to the GPU"))
    }
    fn dtypes(&self) -> &'static [DType] {
        &[DType::F32, DType::BF16]
    }
}

/// One backend under bench: its prefix in the bench ids (empty for the CPU, so the CPU ids
/// stay what they were) and the one-value buffer read back to end a timed iteration.
pub struct Target<B: Backend> {
    /// `""` (CPU) or `"cuda_"`.
    pub prefix: &'static str,
    /// The backend.
    pub be: B,
    fence: B::Buf,
}

impl<B: BenchBackend> Target<B> {
    /// `be` under `prefix`.
    pub fn new(prefix: &'static str, be: B) -> Self {
        let fence = be.alloc(1).expect("a one-value buffer");
        Target { prefix, be, fence }
    }

    /// Waits for every op queued on the backend: a read-back of one value (the device's
    /// stream runs in order, so it returns after the timed work).
    pub fn sync(&self) {
        self.be.download(&self.fence).expect("read-back");
    }

    /// The criterion group `name`, prefixed.
    pub fn group<'c>(&self, c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
        c.benchmark_group(format!("{}{name}", self.prefix))
    }

    /// `data` stored as `dtype` (which [`BenchBackend::dtypes`] lists).
    pub fn up(&self, dtype: DType, data: &[f32]) -> B::Buf {
        self.be
            .upload_dtype(dtype, data)
            .unwrap_or_else(|| panic!("{dtype:?} storage on {}", self.be.name()))
    }
}

/// The bench id suffix of a storage dtype: `""` for f32 (the ids the CPU benches always
/// had), `"_bf16"` for bf16.
pub fn dtype_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "",
        DType::BF16 => "_bf16",
        DType::F16 => "_f16",
    }
}

/// The CPU backend in its bf16 mode (`cpu_bf16_…`: frozen-weight and lm_head products
/// bf16 × bf16 → f32), or `None` after a line saying why (no AVX512_BF16).
#[allow(dead_code)] // each bench binary compiles this module; not every one uses this
pub fn cpu_bf16() -> Option<Target<CpuBackend>> {
    match CpuBackend::with_precision(gradients_engine::backend::Precision::Bf16) {
        Ok(be) => Some(Target::new("cpu_bf16_", be)),
        Err(e) => {
            eprintln!("CPU bf16 benches skipped: {e}");
            None
        }
    }
}

/// The CPU backend.
pub fn cpu() -> Target<CpuBackend> {
    Target::new("", CpuBackend::new())
}

/// The CUDA backend on GPU 0, or `None` after printing one line saying why it cannot run
/// (the checks of `--device cuda`: libraries, driver, GPU, compute capability, cuBLASLt).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<Target<gradients_engine::backend::cuda::CudaBackend>> {
    use gradients_engine::backend::cuda::{probe, CudaBackend};
    let opened = probe::probe(0).and_then(|info| {
        let be = CudaBackend::on_gpu(0).map_err(|e| format!("cuda:0 did not open: {e}"))?;
        Ok((info, be))
    });
    match opened {
        Ok((info, be)) => {
            eprintln!("CUDA benches on {info}");
            Some(Target::new("cuda_", be))
        }
        Err(why) => {
            eprintln!("CUDA benches skipped: {why}");
            None
        }
    }
}

/// With `GRADIENTS_BENCH_EMU=1`, the kernel backend over the emulator (ids `emu_…`): the
/// code of the CUDA benches, bf16 storage included, run on the CPU through the exact
/// kernels/*.cu sources. A check that those benches run (`GRADIENTS_BENCH_EMU=1 cargo test
/// --bench ops` runs each once), not a timing: the emulator is orders of magnitude slower.
pub fn emu() -> Option<Target<KernelBackend<EmuDevice>>> {
    let on = std::env::var("GRADIENTS_BENCH_EMU").is_ok_and(|v| v == "1");
    on.then(|| Target::new("emu_", KernelBackend::new(EmuDevice)))
}

/// Without the `cuda` feature there is no CUDA backend to bench.
#[cfg(not(feature = "cuda"))]
pub fn cuda_missing() {
    eprintln!("CUDA benches skipped: this build has no CUDA support (add --features cuda)");
}

/// `n` pseudo-random values in [-0.1, 0.1) from `seed` (an LCG: the same on every machine).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}
