//! Where the engine runs: [`Device`] (`cpu`, `cuda`, `cuda:N`, parsed from a CLI string) and
//! [`resolve`], which turns a requested device into the one that will be used, falling back
//! to the CPU backend with one log line saying why when CUDA was asked for but cannot run:
//! a build without the `cuda` feature, a missing driver library or cuBLASLt, no GPU, a GPU
//! index out of range, an old driver or a GPU older than sm_80.
//!
//! [`run_on`] runs a [`BackendTask`] (work generic over the backend: training, evaluation)
//! on the backend of a device, in a [`Precision`] (f32, or bf16: mixed precision on the kernel backend, bf16 products on an AVX512_BF16 CPU).
//!
//! Always compiled and free of cudarc types; with the `cuda` feature the checks are done by
//! `backend::cuda::probe` (dlopen checks first, then cudarc guarded against panics, so
//! detection never panics). Neighbours: `backend::cpu` (the fallback), `backend::cuda`.

use std::fmt;
use std::str::FromStr;

use super::cpu::CpuBackend;
use super::Backend;
use crate::error::{Error, Result};

/// A compute device the engine can run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU backend (the reference semantics).
    #[default]
    Cpu,
    /// The CUDA backend on GPU number `N` (the driver's ordinal, as in `cuda:N`).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// Parses `cpu`, `cuda` (GPU 0) or `cuda:N` (case-insensitive, surrounding spaces
    /// ignored).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            Error::unsupported(format!(
                "device `{s}`: {why}; expected `cpu`, `cuda` or `cuda:N` (N a GPU index: 0, 1, ...)"
            ))
        };
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some("") => Err(bad("missing GPU index after `cuda:`")),
                Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => n
                    .parse()
                    .map(Device::Cuda)
                    .map_err(|_| bad("GPU index out of range")),
                Some(_) => Err(bad("GPU index is not a non-negative integer")),
                None => Err(bad("unknown device")),
            },
        }
    }
}

impl Device {
    /// True for [`Device::Cuda`].
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// How the model stores and multiplies its activations and frozen weights. LoRA parameters,
/// their gradients and the optimiser state are f32 in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Everything in f32: the CPU backend's reference semantics (the kernel backend matches
    /// it within float-reordering tolerance).
    #[default]
    F32,
    /// Mixed precision. On the kernel backend: frozen weights, activations and activation
    /// gradients stored in bf16, every GEMM bf16 × bf16 with f32 accumulation, kernels
    /// accumulating in f32; LoRA `A`/`B` multiplied through bf16 copies refreshed after each
    /// update (as autocast would), their gradients and AdamW in f32. Halves the frozen
    /// weights' and activations' memory and runs the GEMMs on tensor cores. On the CPU
    /// backend (AVX512_BF16 CPUs): storage stays f32 and the frozen-weight and lm_head
    /// products, most of the FLOPs, run bf16 × bf16 → f32 at twice the f32 GEMM rate.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// Parses `f32` or `bf16` (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::unsupported(format!(
                "precision `{s}`: expected `f32` or `bf16`"
            ))),
        }
    }
}

/// Where and how a run computes: a device and a precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The backend's device.
    pub device: Device,
    /// Storage of activations and frozen weights.
    pub precision: Precision,
}

impl From<Device> for Placement {
    /// `device` in f32.
    fn from(device: Device) -> Self {
        Placement {
            device,
            precision: Precision::F32,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.device, self.precision)
    }
}

/// The device to run on given the `requested` one, and a log line when it differs.
///
/// `cpu` is always usable. For `cuda:N` this checks, without ever panicking, that the build
/// has the `cuda` feature, that libcuda.so.1 and libcublasLt.so.13 can be loaded, that the
/// driver supports CUDA 13.0, that GPU N exists and that its compute capability is at least
/// 8.0; if any check fails it returns `(Device::Cpu, Some(line))` with one line saying why,
/// e.g. "cuda:0 requested but libcuda.so.1 was not found (...); running on the CPU backend".
/// On success it returns `(requested, None)`.
pub fn resolve(requested: Device) -> (Device, Option<String>) {
    match requested {
        Device::Cpu => (Device::Cpu, None),
        Device::Cuda(n) => match cuda_unusable(n) {
            None => (requested, None),
            Some(why) => (
                Device::Cpu,
                Some(format!(
                    "{requested} requested but {why}; running on the CPU backend"
                )),
            ),
        },
    }
}

/// Work generic over the backend, run by [`run_on`] on the backend of a device.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs the work on `be`.
    fn run<B: Backend + Clone>(self, be: B) -> Result<Self::Output>;
}

/// Runs `task` on the backend of `at.device` in `at.precision`: the CPU backend (bf16 there
/// needs AVX512_BF16, see `CpuBackend::with_precision`; an error saying so without it), or with the `cuda` feature the CUDA backend on GPU N
/// (an error naming what is missing when it cannot be opened; pass a device from [`resolve`]
/// to fall back to the CPU instead). Without the feature a CUDA device is an error.
pub fn run_on<T: BackendTask>(at: impl Into<Placement>, task: T) -> Result<T::Output> {
    let Placement { device, precision } = at.into();
    match device {
        Device::Cpu => task.run(CpuBackend::<f32>::with_precision(precision)?),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => task.run(super::cuda::CudaBackend::on_gpu(n)?.with_precision(precision)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(n) => Err(Error::unsupported(format!(
            "cuda:{n}: this build has no CUDA support (rebuild with `--features cuda`)"
        ))),
    }
}

/// Why GPU `ordinal` cannot run the CUDA backend, or `None` when it can.
#[cfg(feature = "cuda")]
fn cuda_unusable(ordinal: usize) -> Option<String> {
    super::cuda::probe::probe(ordinal).err()
}

/// Why GPU `ordinal` cannot run the CUDA backend: this build has no CUDA support.
#[cfg(not(feature = "cuda"))]
fn cuda_unusable(_ordinal: usize) -> Option<String> {
    Some("this build has no CUDA support (rebuild with `--features cuda`)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_through_from_str() {
        for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(7)] {
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
        assert!(Device::Cuda(1).is_cuda() && !Device::Cpu.is_cuda());
        assert_eq!(Device::default(), Device::Cpu);
    }

    #[test]
    fn precision_parses_and_the_cpu_runs_bf16_only_with_avx512_bf16() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" BF16 ".parse::<Precision>().unwrap(), Precision::Bf16);
        let e = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("`f16`") && e.contains("bf16"), "{e}");
        struct Name;
        impl BackendTask for Name {
            type Output = (String, Precision);
            fn run<B: Backend + Clone>(self, be: B) -> Result<(String, Precision)> {
                Ok((be.name(), be.precision()))
            }
        }
        assert_eq!(
            run_on(Device::Cpu, Name).unwrap(),
            ("cpu".to_string(), Precision::F32)
        );
        let bf16 = Placement {
            device: Device::Cpu,
            precision: Precision::Bf16,
        };
        assert_eq!(bf16.to_string(), "cpu (bf16)");
        match run_on(bf16, Name) {
            Ok(got) => {
                assert!(crate::backend::cpu::gemm_bf16::available());
                assert_eq!(got, ("cpu".to_string(), Precision::Bf16));
            }
            Err(e) => {
                assert!(!crate::backend::cpu::gemm_bf16::available());
                assert!(e.to_string().contains("AVX512_BF16"), "{e}");
            }
        }
    }
}
