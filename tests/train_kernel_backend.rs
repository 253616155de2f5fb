//! The training loop (`train_model_on`) on the kernel backend over the kernel emulator — the
//! CUDA backend's op logic running the exact kernels/*.cu sources — against the same run on
//! the CPU backend: a tiny random Llama (head_dim 32, the smallest the attention backward
//! kernels cover) with the letter tokenizer and an in-code instruct dataset, two steps of two
//! accumulated micro-batches with LoRA dropout, then the test evaluation. Step losses,
//! gradient norms and the final test loss agree within tolerance, and the final adapters
//! within a fraction of one AdamW step. The CPU backend's own bf16 mode (bf16 products on
//! AVX512_BF16) is held to the same f32 run. Run: `cargo test --test train_kernel_backend`.

mod common;

use std::path::Path;

use common::{random_weights, tiny_config, tiny_run_config, write_animal_dataset};
use common::{LetterTok, INSTRUCT_MAPPING};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::{EmuDevice, KernelBackend};
use gradients_engine::backend::{Backend, Precision};
use gradients_engine::lora::LoraWeights;
use gradients_engine::model::Arch;
use gradients_engine::train::{train_model_on, RunOptions, StepRecord};

/// Runs the training on `be` into `out`; returns the step records and the summary's test
/// losses and final adapter.
fn run<B: Backend + Clone>(be: B, data: &Path, out: &Path) -> Run {
    let mut mcfg = tiny_config(Arch::Llama, 2, true);
    mcfg.hidden_size = 64;
    mcfg.num_heads = 2;
    mcfg.num_kv_heads = 1;
    mcfg.head_dim = 32;
    mcfg.intermediate_size = 96;
    let w = random_weights(&mcfg, 9);
    let rest = "dropout = 0.1\n[optimizer]\nlr = 0.01";
    let top = "seq_len = 32\nmicro_batch = 2\ngrad_accum = 2\nmax_steps = 2\neval_samples = 3";
    let cfg = tiny_run_config(data, out, top, INSTRUCT_MAPPING, rest).unwrap();
    let mut steps = Vec::new();
    let mut on_event = |e: gradients_engine::train::Event<'_>| {
        if let gradients_engine::train::Event::Step(r) = e {
            steps.push(r.clone());
        }
    };
    let s = train_model_on(
        be,
        &cfg,
        &mcfg,
        &w,
        &LetterTok,
        "tiny",
        &RunOptions::default(),
        &mut on_event,
    )
    .unwrap();
    let lw = LoraWeights::load(&s.adapter_dir, &mcfg).unwrap();
    (steps, s.final_test_loss.unwrap(), lw)
}

/// The bits of each step's loss and gradient norm.
fn key(s: &[StepRecord]) -> Vec<(u64, u64)> {
    s.iter()
        .map(|r| (r.loss.to_bits(), r.grad_norm.to_bits()))
        .collect()
}

/// A run's step records, test loss and final adapter.
type Run = (Vec<StepRecord>, f64, LoraWeights);

/// `a` and `b` gave the same bits: every step's loss and gradient norm, the test loss and
/// the adapter.
fn assert_same_run(a: &Run, b: &Run, what: &str) {
    assert_eq!(key(&a.0), key(&b.0), "{what}: steps differ");
    assert_eq!(a.1.to_bits(), b.1.to_bits(), "{what}: test loss differs");
    assert_eq!(a.2, b.2, "{what}: adapters differ");
}

/// How far a bf16 run may be from the f32 CPU run: the emulator gave (2026-12-07) at most
/// 0.13 relative L2 on an adapter tensor.
fn bf16_tol() -> Tol {
    Tol {
        loss: 1e-2,
        grad_norm: 5e-2,
        adapter: AdapterTol::RelL2(0.3),
    }
}

/// How far a kernel-backend run may be from the CPU run: step losses and the test loss
/// relative, gradient norms relative, and the adapter.
struct Tol {
    loss: f64,
    grad_norm: f64,
    adapter: AdapterTol,
}

/// How close the final adapters must be.
enum AdapterTol {
    /// Every value within this absolute difference.
    Abs(f32),
    /// Each tensor within this relative L2 distance (`‖got − cpu‖ / ‖cpu‖`): with bf16
    /// gradients an entry near zero may take an AdamW step of the other sign, so single values
    /// can differ by two steps while the tensor stays close.
    RelL2(f64),
}

/// Trains on the CPU backend in f32 and on `be` and compares within `tol`; returns `be`'s run.
fn matches_cpu<B: Backend + Clone>(be: B, tol: Tol) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let data = write_animal_dataset(dir.path(), 6, 24);
    let (cs, ct, cw) = run(CpuBackend::<f32>::new(), &data, &dir.path().join("cpu"));
    let (ks, kt, kw) = run(be, &data, &dir.path().join("other"));
    assert_eq!(cs.len(), 2);
    assert_eq!(ks.len(), cs.len());
    for (k, c) in ks.iter().zip(&cs) {
        assert!(
            (k.loss - c.loss).abs() <= tol.loss * c.loss,
            "step {} loss {} vs cpu {}",
            c.step,
            k.loss,
            c.loss
        );
        let gn = (k.grad_norm - c.grad_norm).abs();
        assert!(
            gn <= tol.grad_norm * c.grad_norm,
            "step {} grad norm {} vs cpu {}",
            c.step,
            k.grad_norm,
            c.grad_norm
        );
        assert_eq!((k.tokens, k.targets), (c.tokens, c.targets));
    }
    assert!(
        (kt - ct).abs() <= tol.loss * ct,
        "test loss {kt} vs cpu {ct}"
    );
    for (i, (k, c)) in kw.params().iter().zip(cw.params()).enumerate() {
        match tol.adapter {
            AdapterTol::Abs(t) => {
                for (x, y) in k.data.iter().zip(&c.data) {
                    assert!((x - y).abs() <= t, "adapter value {x} vs cpu {y}");
                }
            }
            AdapterTol::RelL2(t) => {
                let (mut d, mut n) = (0f64, 0f64);
                for (&x, &y) in k.data.iter().zip(&c.data) {
                    d += (x as f64 - y as f64).powi(2);
                    n += (y as f64).powi(2);
                }
                let e = (d / n).sqrt();
                assert!(e <= t, "adapter tensor {i}: relative L2 distance {e:.3e}");
            }
        }
    }
    (ks, kt, kw)
}

#[test]
fn training_on_the_emulated_kernels_matches_the_cpu_backend() {
    let tol = Tol {
        loss: 1e-4,
        grad_norm: 1e-3,
        adapter: AdapterTol::Abs(5e-4),
    };
    matches_cpu(KernelBackend::new(EmuDevice), tol);
}

/// Mixed precision (bf16 weights, activations and GEMM operands; f32 LoRA, gradients and
/// AdamW) tracks the f32 CPU run within bf16's rounding, and repeats bit for bit.
#[test]
fn bf16_training_tracks_the_cpu_backend_and_repeats() {
    let bf16 = || KernelBackend::new(EmuDevice).with_precision(Precision::Bf16);
    let first = matches_cpu(bf16(), bf16_tol());
    let dir = tempfile::tempdir().unwrap();
    let data = write_animal_dataset(dir.path(), 6, 24);
    let again = run(bf16(), &data, &dir.path().join("again"));
    assert_same_run(&first, &again, "bf16 between runs");
    // and the precision took effect: the f32 kernel run's numbers are not these
    let (sf, _, _) = run(
        KernelBackend::new(EmuDevice),
        &data,
        &dir.path().join("f32"),
    );
    assert_ne!(key(&sf), key(&first.0), "bf16 run equals the f32 run");
}

/// The CPU backend's bf16 mode (frozen-weight and lm_head products bf16 × bf16 → f32 on
/// AVX512_BF16) tracks its f32 run within bf16's rounding, repeats bit for bit on 1 and 3
/// threads, and differs from f32 (the mode took effect).
#[test]
fn cpu_bf16_products_track_f32_and_repeat_on_any_thread_count() {
    // the tiny model's products have at most 64 rows, its cross-entropy fewer labelled
    // tokens: lower the bf16 threshold so they all run in bf16
    let Ok(bf16) =
        CpuBackend::<f32>::with_precision(Precision::Bf16).map(|b| b.with_bf16_min_rows(1))
    else {
        assert!(!gradients_engine::backend::cpu::bf16_available());
        eprintln!("skipped: this CPU has no AVX512_BF16 (the CPU bf16 mode cannot run here)");
        return;
    };
    assert_eq!(bf16.precision(), Precision::Bf16);
    let first = matches_cpu(bf16.clone(), bf16_tol());
    let dir = tempfile::tempdir().unwrap();
    let data = write_animal_dataset(dir.path(), 6, 24);
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let out = dir.path().join(format!("t{threads}"));
        let again = pool.install(|| run(bf16.clone(), &data, &out));
        assert_same_run(&first, &again, &format!("bf16 on {threads} threads"));
    }
    let (sf, _, _) = run(CpuBackend::<f32>::new(), &data, &dir.path().join("f32"));
    assert_ne!(key(&sf), key(&first.0), "bf16 run equals the f32 run");
}
