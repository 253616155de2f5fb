//! The training loop (`train_model_on`) on the kernel backend over the kernel emulator — the
//! CUDA backend's op logic running the exact kernels/*.cu sources — against the same run on
//! the CPU backend: a tiny random Llama (head_dim 32, the smallest the attention backward
//! kernels cover) with the letter tokenizer and an in-code instruct dataset, two steps of two
//! accumulated micro-batches with LoRA dropout, then the test evaluation. Step losses,
//! gradient norms and the final test loss agree within tolerance, and the final adapters
//! within a fraction of one AdamW step. Run: `cargo test --test train_kernel_backend`.

mod common;

use std::path::Path;

use common::{random_weights, tiny_config, tiny_run_config, write_animal_dataset};
use common::{LetterTok, INSTRUCT_MAPPING};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::{EmuDevice, KernelBackend};
use gradients_engine::backend::Backend;
use gradients_engine::lora::LoraWeights;
use gradients_engine::model::Arch;
use gradients_engine::train::{train_model_on, RunOptions, StepRecord};

/// Runs the training on `be` into `out`; returns the step records and the summary's test
/// losses and final adapter.
fn run<B: Backend + Clone>(be: B, data: &Path, out: &Path) -> (Vec<StepRecord>, f64, LoraWeights) {
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

#[test]
fn training_on_the_emulated_kernels_matches_the_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_animal_dataset(dir.path(), 6, 24);
    let (cs, ct, cw) = run(CpuBackend::<f32>::new(), &data, &dir.path().join("cpu"));
    let (ks, kt, kw) = run(
        KernelBackend::new(EmuDevice),
        &data,
        &dir.path().join("emu"),
    );
    assert_eq!(cs.len(), 2);
    assert_eq!(ks.len(), cs.len());
    for (k, c) in ks.iter().zip(&cs) {
        assert!(
            (k.loss - c.loss).abs() <= 1e-4 * c.loss,
            "step {} loss {} vs cpu {}",
            c.step,
            k.loss,
            c.loss
        );
        let gn = (k.grad_norm - c.grad_norm).abs();
        assert!(
            gn <= 1e-3 * c.grad_norm,
            "step {} grad norm {} vs cpu {}",
            c.step,
            k.grad_norm,
            c.grad_norm
        );
        assert_eq!((k.tokens, k.targets), (c.tokens, c.targets));
    }
    assert!((kt - ct).abs() <= 1e-4 * ct, "test loss {kt} vs cpu {ct}");
    for (k, c) in kw.params().iter().zip(cw.params()) {
        for (x, y) in k.data.iter().zip(&c.data) {
            assert!((x - y).abs() <= 5e-4, "adapter value {x} vs cpu {y}");
        }
    }
}
