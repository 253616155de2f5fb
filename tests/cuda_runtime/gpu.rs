//! The `cuda` feature's half of tests/cuda_runtime.rs: on a machine without a usable GPU,
//! runtime creation and `resolve` report what is missing; on a GPU machine, GPU 0 runs the
//! runtime tests (buffers, kernel lookup, `cast` bit-exact against host rounding,
//! `rmsnorm_forward` (through the CUDA backend) against the CPU backend with `atol + |ref|·rtol`). Neighbours:
//! ../cuda_runtime.rs (device parsing, fallback), kernels_emu/ (the same kernels emulated).

use std::sync::OnceLock;

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::cuda::probe::{self, check_library, DRIVER_LIB};
use gradients_engine::backend::cuda::{CudaBackend, CudaBuf, CudaRuntime};
use gradients_engine::backend::device::{resolve, Device};
use gradients_engine::backend::kernel::Elem;
use gradients_engine::backend::Backend;
use gradients_engine::DType;
use half::bf16;

/// GPU 0's runtime, shared by the tests; `None` (with the reason printed) when there is none.
fn gpu() -> Option<&'static CudaRuntime> {
    static RT: OnceLock<Result<CudaRuntime, String>> = OnceLock::new();
    crate::common::gpu_or_skip(RT.get_or_init(|| CudaRuntime::new(0).map_err(|e| e.to_string())))
}

/// The CUDA backend on GPU 0, shared by the tests; `None` (reason printed) without a GPU.
fn backend() -> Option<&'static CudaBackend> {
    static BE: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    crate::common::gpu_or_skip(BE.get_or_init(|| CudaBackend::on_gpu(0).map_err(|e| e.to_string())))
}

/// SplitMix64 stream of uniform f32 in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next()).collect()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = atol + w.abs() * rtol;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

#[test]
fn without_a_driver_creation_is_an_error_naming_it() {
    if check_library(DRIVER_LIB).is_ok() {
        eprintln!("skipping: {DRIVER_LIB} is present on this machine");
        return;
    }
    let e = CudaRuntime::new(0).unwrap_err().to_string();
    assert!(e.starts_with("cuda:0: create runtime: "), "{e}");
    assert!(e.contains("libcuda.so.1 was not found (dlopen: "), "{e}");
    let (dev, msg) = resolve(Device::Cuda(0));
    assert_eq!(dev, Device::Cpu);
    let msg = msg.unwrap();
    assert!(
        msg.starts_with("cuda:0 requested but libcuda.so.1 was not found"),
        "{msg}"
    );
}

#[test]
fn creation_is_an_error_for_an_absent_gpu() {
    let e = CudaRuntime::new(4096).unwrap_err().to_string();
    assert!(e.starts_with("cuda:4096: create runtime: "), "{e}");
}

#[test]
fn resolve_agrees_with_the_probe() {
    let (dev, msg) = resolve(Device::Cuda(0));
    match probe::probe(0) {
        Ok(info) => {
            eprintln!("GPU found: {info}");
            assert_eq!((dev, msg), (Device::Cuda(0), None));
        }
        Err(why) => assert_eq!(
            (dev, msg),
            (
                Device::Cpu,
                Some(format!(
                    "cuda:0 requested but {why}; running on the CPU backend"
                ))
            )
        ),
    }
}

#[test]
fn runtime_reports_the_gpu_and_finds_kernels() {
    let Some(rt) = gpu() else { return };
    let info = rt.info();
    eprintln!("{info}");
    assert!(info.compute_capability >= (8, 0), "{info}");
    assert!(!info.name.is_empty() && info.total_mem > 0, "{info}");
    assert_eq!(rt.label(), "cuda:0");
    for k in [
        "cast_f32_to_bf16",
        "cast_bf16_to_f32",
        "rmsnorm_forward_f32",
    ] {
        rt.function(k).unwrap();
    }
    let e = rt.function("no_such_kernel").unwrap_err().to_string();
    assert!(e.contains("kernel `no_such_kernel`"), "{e}");
}

#[test]
fn buffers_round_trip() {
    let Some(rt) = gpu() else { return };
    let mut rng = Rng(1);
    for len in [0usize, 1, 7, 4096, 100_003] {
        let data = rng.vec(len, 3.0);
        let buf = rt.upload_f32(&data).unwrap();
        assert_eq!((buf.len(), buf.elem()), (len, Elem::F32));
        assert_eq!(rt.download_f32(&buf).unwrap(), data);
        // bf16: rounded on upload, widened exactly on download.
        let buf = rt.upload(DType::BF16, &data).unwrap();
        let want: Vec<f32> = data.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(rt.download_f32(&buf).unwrap(), want);
        let zeros = rt.alloc(DType::BF16, len).unwrap();
        assert!(rt
            .download_bf16(&zeros)
            .unwrap()
            .iter()
            .all(|v| v.to_bits() == 0));
        let zeros = rt.alloc(DType::F32, len).unwrap();
        assert!(rt
            .download_f32(&zeros)
            .unwrap()
            .iter()
            .all(|v| v.to_bits() == 0));
    }
    let f = rt.upload_f32(&[1.0]).unwrap();
    assert!(rt.download_bf16(&f).is_err());
    assert!(rt.alloc(DType::F16, 4).is_err());
}

/// Values that exercise rounding: ties to even, NaN, infinities, zeros, subnormals, overflow.
fn tricky() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-42,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        f32::from_bits(0x3F80_8001),
        f32::from_bits(0x3F80_7FFF),
    ];
    let mut rng = Rng(2);
    v.extend(rng.vec(4096 - v.len(), 100.0));
    v
}

#[test]
fn cast_matches_host_rounding() {
    let Some(rt) = gpu() else { return };
    let all = tricky();
    // 4096: the 16-byte pack path; 1001 and 5: the scalar tail path.
    for len in [4096usize, 1001, 5] {
        let src = &all[..len];
        let s = rt.upload_f32(src).unwrap();
        let mut d = rt.alloc(DType::BF16, len).unwrap();
        rt.cast(&mut d, &s).unwrap();
        let got = rt.download_bf16(&d).unwrap();
        for (i, (&g, &x)) in got.iter().zip(src).enumerate() {
            let want = bf16::from_f32(x);
            if x.is_nan() {
                assert!(g.is_nan(), "[{i}] NaN became {g}");
            } else {
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "[{i}] {x}: got {g}, want {want}"
                );
            }
        }
        // bf16 -> f32 is exact.
        let mut back = rt.alloc(DType::F32, len).unwrap();
        rt.cast(&mut back, &d).unwrap();
        let back = rt.download_f32(&back).unwrap();
        for (i, (&b, &g)) in back.iter().zip(&got).enumerate() {
            assert!(
                b.to_bits() == g.to_f32().to_bits() || (b.is_nan() && g.is_nan()),
                "[{i}]"
            );
        }
    }
    let s = rt.upload_f32(&[1.0; 8]).unwrap();
    let mut same = rt.alloc(DType::F32, 8).unwrap();
    assert!(rt.cast(&mut same, &s).is_err(), "f32 -> f32 is not a cast");
    let mut short = rt.alloc(DType::BF16, 7).unwrap();
    assert!(rt.cast(&mut short, &s).is_err(), "length mismatch");
}

#[test]
fn rmsnorm_forward_matches_cpu_backend() {
    let Some(be) = backend() else { return };
    let rt = be.device().runtime();
    let cpu = CpuBackend::<f32>::new();
    let eps = 1e-5;
    let mut rng = Rng(3);
    for (n, h) in [(1usize, 1usize), (3, 64), (5, 1000), (2, 4097), (7, 576)] {
        let x = rng.vec(n * h, 2.0);
        let w: Vec<f32> = rng.vec(h, 0.2).iter().map(|v| 1.0 + v).collect();
        let (mut out_c, mut rstd_c) = (vec![0.0; n * h], vec![0.0; n]);
        cpu.rmsnorm_forward(&mut out_c, &mut rstd_c, &x, &w, n, h, eps)
            .unwrap();

        // f32 storage: within fp32 reduction-order noise of the CPU backend, bit-identical
        // from run to run.
        let (xd, wd) = (rt.upload_f32(&x).unwrap(), rt.upload_f32(&w).unwrap());
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut out = rt.alloc(DType::F32, n * h).unwrap();
            let mut rstd = rt.alloc(DType::F32, n).unwrap();
            be.rmsnorm_forward(&mut out, &mut rstd, &xd, &wd, n, h, eps)
                .unwrap();
            runs.push((
                rt.download_f32(&out).unwrap(),
                rt.download_f32(&rstd).unwrap(),
            ));
        }
        let what = format!("rmsnorm_forward_f32 n {n} h {h}");
        assert_close(&format!("{what} rstd"), &runs[0].1, &rstd_c, 1e-6, 1e-5);
        assert_close(&format!("{what} out"), &runs[0].0, &out_c, 1e-6, 1e-5);
        assert_eq!(runs[0], runs[1], "{what}: not deterministic");

        // bf16 storage: the CPU on the bf16-rounded inputs, output within one bf16 ulp.
        let xb: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        let wb: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        cpu.rmsnorm_forward(&mut out_c, &mut rstd_c, &xb, &wb, n, h, eps)
            .unwrap();
        let xd = rt.upload(DType::BF16, &x).unwrap();
        let wd = rt.upload(DType::BF16, &w).unwrap();
        let mut out = rt.alloc(DType::BF16, n * h).unwrap();
        let mut rstd = rt.alloc(DType::F32, n).unwrap();
        be.rmsnorm_forward(&mut out, &mut rstd, &xd, &wd, n, h, eps)
            .unwrap();
        let what = format!("rmsnorm_forward_bf16 n {n} h {h}");
        assert_close(
            &format!("{what} rstd"),
            &rt.download_f32(&rstd).unwrap(),
            &rstd_c,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("{what} out"),
            &rt.download_f32(&out).unwrap(),
            &out_c,
            1e-6,
            1.0 / 128.0,
        );
    }
}

#[test]
fn rmsnorm_forward_checks_its_operands() {
    let Some(be) = backend() else { return };
    let rt = be.device().runtime();
    let (n, h) = (2, 8);
    let x = rt.upload_f32(&[1.0; 16]).unwrap();
    let w = rt.upload_f32(&[1.0; 8]).unwrap();
    let mut out = rt.alloc(DType::F32, n * h).unwrap();
    let mut rstd = rt.alloc(DType::F32, n).unwrap();
    let e = be
        .rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, h + 1, 1e-5)
        .unwrap_err();
    assert!(e.to_string().contains("rmsnorm_forward"), "{e}");
    let mut out_b = rt.alloc(DType::BF16, n * h).unwrap();
    assert!(be
        .rmsnorm_forward(&mut out_b, &mut rstd, &x, &w, n, h, 1e-5)
        .is_err());
    let mut rstd_b: CudaBuf = rt.alloc(DType::BF16, n).unwrap();
    assert!(be
        .rmsnorm_forward(&mut out, &mut rstd_b, &x, &w, n, h, 1e-5)
        .is_err());
    be.rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, h, 1e-5)
        .unwrap();
    rt.synchronize().unwrap();
}
