//! Criterion benches of one LoRA training step (forward, backward, AdamW) and of forward-only
//! evaluation on the real SmolLM2-135M at batch 4 × seq 256 — the settings of
//! scripts/compare/torch_peft.py — on the CPU backend (`smollm2_135m_4x256/…`), in its bf16
//! mode on AVX512_BF16 CPUs (`cpu_bf16_smollm2_135m_4x256/…`) and, built
//! with the `cuda` feature on a machine with a usable GPU, on the CUDA backend
//! (`cuda_smollm2_135m_4x256/…`; f32 weights, as the trainer stores them; each timed step
//! ends with a synchronising read-back, benches/support). Skips (printing why) when the model
//! cannot be fetched.
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench step`; `cargo bench --features cuda --bench step`.
//! Tokens/s = 1024 / the reported time.

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gradients_engine::assets;
use gradients_engine::lora::{LoraConfig, LoraState, LoraWeights};
use gradients_engine::model::load::load_model;
use gradients_engine::model::{Batch, Llama, StepOptions};
use gradients_engine::optim::adamw::{AdamW, AdamWConfig};
use support::{BenchBackend, Target};

/// The step, the step with recomputation and the evaluation forward on `t`, the model loaded
/// from `path` (once per backend: the weights move into the model).
fn step_on<B: BenchBackend>(c: &mut Criterion, t: &Target<B>, path: &std::path::Path) {
    let be = &t.be;
    let m = load_model(path).expect("model loads");
    let cfg = &m.config;
    let mut model = Llama::from_weights(be.clone(), cfg, m.weights).unwrap();
    let lw = LoraWeights::init(cfg, &LoraConfig::default(), 0).unwrap();
    let mut lora = LoraState::upload(be, &lw).unwrap();
    let mut grads = lora.zeros_grads(be).unwrap();
    let lens: Vec<usize> = lora.params().iter().map(|p| be.len(p)).collect();
    let mut opt = AdamW::new(be, AdamWConfig::default(), &lens).unwrap();
    let (batch, seq) = (4usize, 256usize);
    let b = Batch::synthetic(batch, seq, cfg.vocab_size).unwrap();

    let mut g = t.group(c, "smollm2_135m_4x256");
    g.sample_size(10);
    g.throughput(Throughput::Elements((batch * seq) as u64));
    g.bench_function("train_step", |bench| {
        bench.iter(|| {
            model
                .forward_backward(&b, &lora, &mut grads, &StepOptions::default())
                .unwrap();
            lora.update(be, |p| opt.step(be, p, &grads.bufs(), 1e-4))
                .unwrap();
            t.sync();
        })
    });
    g.bench_function("train_step_recompute", |bench| {
        let opts = StepOptions {
            recompute: true,
            ..StepOptions::default()
        };
        bench.iter(|| {
            model
                .forward_backward(&b, &lora, &mut grads, &opts)
                .unwrap();
            t.sync();
        })
    });
    g.bench_function("eval_forward", |bench| {
        // returns the host losses: synchronised
        bench.iter(|| model.forward_loss(&b, Some(&lora)).unwrap())
    });
    g.finish();
}

fn step(c: &mut Criterion) {
    let path = match assets::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP: SmolLM2-135M unavailable: {why}");
            return;
        }
    };
    step_on(c, &support::cpu(), &path);
    if let Some(bf16) = support::cpu_bf16() {
        step_on(c, &bf16, &path);
    }
    #[cfg(feature = "cuda")]
    if let Some(gpu) = support::cuda() {
        step_on(c, &gpu, &path);
    }
    #[cfg(not(feature = "cuda"))]
    support::cuda_missing();
}

criterion_group!(benches, step);
criterion_main!(benches);
