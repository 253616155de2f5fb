//! cuBLASLt GEMMs of the CUDA backend (engine/src/backend/cuda/gemm.rs) on GPU 0 against the
//! CPU backend's `gemm`: every transpose combination, bf16 and f32 inputs, f32 and bf16
//! outputs, `beta` accumulation; a repeated call is bit-identical and reuses its plan; the LoRA
//! forward `X·Wᵀ + s·(X·Aᵀ)·Bᵀ` against the same sum on the CPU. Without the `cuda` feature the
//! file is empty; without a GPU each test prints why it skips (GRADIENTS_REQUIRE_GPU=1 makes
//! that a failure). Run: `cargo test --features cuda --test cuda_gemm`.
#![cfg(feature = "cuda")]

mod common;

use std::sync::OnceLock;

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::cuda::gemm::Gemm;
use gradients_engine::backend::cuda::CudaRuntime;
use gradients_engine::backend::Backend;
use gradients_engine::DType;
use half::bf16;

/// GPU 0's runtime and GEMM handle; `None` (reason printed) without a usable GPU.
fn gpu() -> Option<&'static (CudaRuntime, Gemm)> {
    static RT: OnceLock<Result<(CudaRuntime, Gemm), String>> = OnceLock::new();
    let r = RT.get_or_init(|| {
        let rt = CudaRuntime::new(0).map_err(|e| e.to_string())?;
        let g = Gemm::new(&rt).map_err(|e| e.to_string())?;
        Ok((rt, g))
    });
    common::gpu_or_skip(r)
}

fn rand_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn round(dt: DType, v: &[f32]) -> Vec<f32> {
    match dt {
        DType::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
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
fn matmul_matches_cpu_gemm_and_repeats_bit_for_bit() {
    let Some((rt, gemm)) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    let mut seed = 9u64;
    for (ab, c_dt) in [
        (DType::BF16, DType::F32),
        (DType::BF16, DType::BF16),
        (DType::F32, DType::F32),
    ] {
        for (m, n, k) in [
            (64usize, 96usize, 128usize),
            (33, 17, 200),
            (256, 576, 1536),
        ] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let what = format!("{ab:?}->{c_dt:?} m={m} n={n} k={k} ta={ta} tb={tb}");
                let a = round(ab, &rand_vec(&mut seed, m * k));
                let b = round(ab, &rand_vec(&mut seed, k * n));
                let c0 = round(c_dt, &rand_vec(&mut seed, m * n));
                let mut want = c0.clone();
                cpu.gemm(&mut want, &a, &b, m, n, k, ta, tb, 0.5, 0.25)
                    .unwrap();
                let (ga, gb) = (rt.upload(ab, &a).unwrap(), rt.upload(ab, &b).unwrap());
                let mut gc = rt.upload(c_dt, &c0).unwrap();
                gemm.matmul(&mut gc, &ga, &gb, m, n, k, ta, tb, 0.5, 0.25)
                    .unwrap();
                let got = rt.download_f32(&gc).unwrap();
                let scale = (k as f32).sqrt();
                let (atol, rtol) = if c_dt == DType::BF16 {
                    (2e-3 * scale, 1e-2)
                } else {
                    (1e-4 * scale, 1e-4)
                };
                assert_close(&what, &got, &want, atol, rtol);
                let planned = gemm.planned_shapes();
                let mut gc2 = rt.upload(c_dt, &c0).unwrap();
                gemm.matmul(&mut gc2, &ga, &gb, m, n, k, ta, tb, 0.5, 0.25)
                    .unwrap();
                let again = rt.download_f32(&gc2).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&got) == bits(&again), "{what}: two runs differ");
                assert_eq!(gemm.planned_shapes(), planned, "{what}: plan reused");
            }
        }
    }
}

#[test]
fn lora_forward_matches_cpu_without_forming_delta_w() {
    let Some((rt, gemm)) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    let (n, d_in, d_out, r, s) = (48usize, 576usize, 192usize, 8usize, 2.0f32);
    let mut seed = 3u64;
    let dt = DType::BF16;
    let x = round(dt, &rand_vec(&mut seed, n * d_in));
    let w = round(dt, &rand_vec(&mut seed, d_out * d_in));
    let a = round(dt, &rand_vec(&mut seed, r * d_in));
    let b = round(dt, &rand_vec(&mut seed, d_out * r));
    // CPU: Y = X·Wᵀ + s·round_bf16(X·Aᵀ)·Bᵀ (the GPU stores U in bf16).
    let mut want = vec![0f32; n * d_out];
    cpu.gemm(&mut want, &x, &w, n, d_out, d_in, false, true, 1.0, 0.0)
        .unwrap();
    let mut u = vec![0f32; n * r];
    cpu.gemm(&mut u, &x, &a, n, r, d_in, false, true, 1.0, 0.0)
        .unwrap();
    let u = round(dt, &u);
    cpu.gemm(&mut want, &u, &b, n, d_out, r, false, true, s, 1.0)
        .unwrap();
    let up = |v: &[f32]| rt.upload(dt, v).unwrap();
    let (gx, gw, ga, gb) = (up(&x), up(&w), up(&a), up(&b));
    let mut gy = rt.alloc(DType::F32, n * d_out).unwrap();
    let mut gu = rt.alloc(dt, n * r).unwrap();
    gemm.lora_forward(&mut gy, &mut gu, &gx, &gw, &ga, &gb, n, d_in, d_out, r, s)
        .unwrap();
    let got = rt.download_f32(&gy).unwrap();
    // U may round differently where the f32 sums differ in the last bit: allow for one
    // bf16 ulp of U times |B|·s·r.
    assert_close("lora_forward y", &got, &want, 0.05, 1e-2);
    let e = gemm
        .lora_forward(
            &mut gy,
            &mut gu,
            &gx,
            &gw,
            &ga,
            &gb,
            n,
            d_in + 1,
            d_out,
            r,
            s,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("a has"), "{e}");
}
