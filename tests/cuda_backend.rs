//! The CUDA backend (`CudaBackend` = `KernelBackend<CudaDevice>`) on GPU 0 against the CPU
//! backend: the same op-by-op suite and tiny-Llama training check that tests/kernel_backend.rs
//! runs on the kernel emulator (kernel_backend/{ops,model}.rs, KV-cached decoding included),
//! plus two GPU runs bit-identical and a larger attention sweep. Without a GPU every test
//! prints why it skips (GRADIENTS_REQUIRE_GPU=1 makes that a failure, for runs on a GPU machine); the fatbin check
//! (every kernel of the engine's kernel table compiled for sm_80 and sm_90 without spills)
//! needs no GPU. Without the `cuda` feature this file is empty.
//! Run: `cargo test --features cuda --test cuda_backend`.
#![cfg(feature = "cuda")]

mod common;
#[path = "kernel_backend/model.rs"]
mod model;
#[path = "kernel_backend/ops.rs"]
mod ops;

use std::sync::OnceLock;

use gradients_engine::backend::cuda::{CudaBackend, PTXAS_REPORT};
use gradients_engine::backend::kernel::kernel_names;

/// The CUDA backend on GPU 0, shared by the tests; `None` (reason printed) without a GPU.
fn gpu() -> Option<&'static CudaBackend> {
    static BE: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    common::gpu_or_skip(BE.get_or_init(|| CudaBackend::on_gpu(0).map_err(|e| e.to_string())))
}

#[test]
fn every_table_kernel_is_in_the_fatbin_without_spills() {
    for name in kernel_names() {
        for arch in ["sm_80", "sm_90"] {
            let entry = format!("Compiling entry function '{name}' for '{arch}'");
            assert!(PTXAS_REPORT.contains(&entry), "missing {entry}");
        }
    }
    for line in PTXAS_REPORT
        .lines()
        .filter(|l| l.contains("bytes spill stores"))
    {
        for part in line.split(',').filter(|p| p.contains("spill")) {
            let bytes: u64 = part.split_whitespace().next().unwrap().parse().unwrap();
            assert_eq!(bytes, 0, "spill: {line}");
        }
    }
}

#[test]
fn elementwise_gemm_adamw_match_cpu() {
    let Some(be) = gpu() else { return };
    ops::elementwise_gemm_adamw(be);
}

#[test]
fn block_ops_match_cpu() {
    let Some(be) = gpu() else { return };
    ops::block_ops(be);
}

#[test]
fn sum_squares_each_is_bit_identical_to_one_call_per_tensor() {
    let Some(be) = gpu() else { return };
    ops::sum_squares_each(be);
}

#[test]
fn attention_matches_cpu_for_every_head_dim() {
    let Some(be) = gpu() else { return };
    for hd in [32, 64, 128, 16] {
        ops::attention(be, hd, &[5, 11, 3]);
        ops::attention(be, hd, &[100, 1, 160]);
    }
}

#[test]
fn kv_cache_ops_match_cpu() {
    let Some(be) = gpu() else { return };
    for hd in [16, 32, 64, 128] {
        ops::decode(be, hd);
    }
}

#[test]
fn cached_decoding_matches_cpu_and_repeats_bit_for_bit() {
    let Some(be) = gpu() else { return };
    let cpu = gradients_engine::backend::cpu::CpuBackend::<f32>::new();
    for hd in [32, 64] {
        let a = model::decode(be, hd);
        model::assert_decodes_like(&a, &model::decode(&cpu, hd));
        let b = model::decode(be, hd);
        let bits = |d: &model::Decoded| d.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.completions, b.completions);
    }
}

#[test]
fn llama_steps_match_cpu_and_repeat_bit_for_bit() {
    let Some(be) = gpu() else { return };
    for hd in [32, 64, 128] {
        let a = model::run(be, hd);
        model::assert_matches(&a, &model::reference(hd));
        let b = model::run(be, hd);
        model::assert_bit_identical(&a, &b);
    }
}

/// Mixed precision on the GPU (bf16 weights, activations and tensor-core GEMMs; f32 LoRA,
/// gradients and AdamW): tracks the f32 CPU run within bf16's rounding, as on the emulator
/// (tests/kernel_backend.rs), and two GPU runs are bit-identical.
#[test]
fn llama_steps_in_bf16_track_cpu_and_repeat_bit_for_bit() {
    let Some(be) = gpu() else { return };
    let be = be
        .clone()
        .with_precision(gradients_engine::backend::Precision::Bf16);
    for hd in [32, 64, 128] {
        let a = model::run(&be, hd);
        let (_, _, init, _) = model::setup(hd);
        model::assert_tracks_bf16(&a, &model::reference(hd), &init);
        model::assert_bit_identical(&a, &model::run(&be, hd));
    }
}

/// KV-cached decoding in bf16 on the GPU: logits track the f32 CPU ones within bf16's
/// rounding (as on the emulator), and two GPU runs are bit-identical.
#[test]
fn bf16_cached_decoding_tracks_cpu() {
    let Some(be) = gpu() else { return };
    let be = be
        .clone()
        .with_precision(gradients_engine::backend::Precision::Bf16);
    let cpu = gradients_engine::backend::cpu::CpuBackend::<f32>::new();
    for hd in [32, 64] {
        let a = model::decode(&be, hd);
        let e = model::rel_l2(&a.logits, &model::decode(&cpu, hd).logits);
        assert!(
            e <= 2e-2,
            "hd {hd}: bf16 cached logits: relative L2 error {e:.3e}"
        );
        let b = model::decode(&be, hd);
        let bits = |d: &model::Decoded| d.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }
}
