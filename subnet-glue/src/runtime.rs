//! `--device` and `--threads`, shared by every command that runs a model: chooses the rayon
//! thread count and resolves the requested device, falling back to the CPU backend with one
//! clear line on stderr when CUDA is not usable (no `cuda` build feature, no driver, no GPU).
//! With `GRADIENTS_REQUIRE_GPU=1` (set by scripts/gpu-check.sh) that fallback is an error
//! instead, so a GPU check can never compare the CPU with itself.

use anyhow::Context;
use gradients_engine::backend::device::{resolve, Device};

/// Flags shared by the commands that run a model.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Where to run: `cpu`, `cuda` or `cuda:N` (falls back to the CPU, saying why).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// CPU threads (0 = all cores). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl RunArgs {
    /// [`RunArgs::setup_device`] for a command that runs on the CPU backend only: a usable
    /// CUDA device is reported and replaced by the CPU.
    pub fn setup(&self) -> anyhow::Result<Device> {
        let device = self.setup_device()?;
        if device.is_cuda() {
            eprintln!(
                "{device}: usable, but this command runs on the CPU backend (CUDA runs `train`, `eval` and `bench`)"
            );
            return Ok(Device::Cpu);
        }
        Ok(device)
    }

    /// Apply the thread count and resolve the device; returns the device the run uses.
    pub fn setup_device(&self) -> anyhow::Result<Device> {
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
        }
        Ok(device)
    }
}

/// `GRADIENTS_REQUIRE_GPU=1`: a requested CUDA device that cannot run is an error.
fn require_gpu() -> bool {
    std::env::var("GRADIENTS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}
