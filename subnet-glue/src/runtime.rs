//! `--device`, `--precision` and `--threads`, shared by every command that runs a model:
//! chooses the rayon thread count and resolves the requested device, falling back to the CPU
//! backend (in f32, the only precision it has) with one clear line on stderr when CUDA is not
//! usable (no `cuda` build feature, no driver, no GPU).
//! With `GRADIENTS_REQUIRE_GPU=1` (set by scripts/gpu-check.sh) that fallback is an error
//! instead, so a GPU check can never compare the CPU with itself.

use anyhow::Context;
use gradients_engine::backend::device::{resolve, Device, Placement, Precision};

/// Flags shared by the commands that run a model.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Where to run: `cpu`, `cuda` or `cuda:N` (falls back to the CPU, saying why).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// `f32` (the reference) or `bf16`: on `--device cuda` mixed precision (bf16 storage and
    /// GEMMs with f32 accumulation, f32 LoRA and AdamW); on the CPU, with AVX512_BF16, the
    /// frozen-weight and lm_head products in bf16 with f32 accumulation, the rest f32.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// CPU threads (0 = all cores). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl RunArgs {
    /// [`RunArgs::setup_device`] for a command that runs on the CPU backend only: a usable
    /// CUDA device is reported and replaced by the CPU; the precision is kept (bf16 on the
    /// CPU needs AVX512_BF16, which `CpuBackend::with_precision` checks).
    pub fn setup(&self) -> anyhow::Result<Placement> {
        let Placement { device, precision } = self.setup_device()?;
        if device.is_cuda() {
            eprintln!(
                "{device}: usable, but this command runs on the CPU backend (CUDA runs `train`, `eval` and `bench`)"
            );
        }
        Ok(Placement {
            device: Device::Cpu,
            precision,
        })
    }

    /// Apply the thread count and resolve the device; returns the device and precision the
    /// run uses.
    pub fn setup_device(&self) -> anyhow::Result<Placement> {
        if self.threads > 0 {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .build_global()
                .context("setting the rayon thread count")?;
        }
        let (device, why) = resolve(self.device);
        if let Some(why) = why {
            // GPU checks must not silently measure the CPU twice
            anyhow::ensure!(
                !require_gpu(),
                "GRADIENTS_REQUIRE_GPU=1 and the requested device cannot run: {why}"
            );
            eprintln!("{why}");
            if self.precision != Precision::F32 && !gradients_engine::backend::cpu::bf16_available()
            {
                eprintln!(
                    "precision {}: this CPU has no AVX512_BF16, so the CPU backend computes in f32",
                    self.precision
                );
                return Ok(device.into());
            }
        }
        Ok(Placement {
            device,
            precision: self.precision,
        })
    }
}

/// `GRADIENTS_REQUIRE_GPU=1`: a requested CUDA device that cannot run is an error.
fn require_gpu() -> bool {
    std::env::var("GRADIENTS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}
