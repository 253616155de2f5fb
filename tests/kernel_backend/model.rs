//! The whole model on any `Backend` against the CPU backend: a tiny random Qwen2-style Llama
//! (attention biases, untied lm_head, head_dim 32 or 64 — the backward kernels cover 32, 64
//! and 128 — GQA 2:1) with LoRA on all seven targets and dropout, two training
//! steps (forward + backward + AdamW on the LoRA parameters; the second step recomputes the
//! blocks), then an eval forward. Losses, LoRA gradients and parameters are compared with the
//! CPU run within tolerance. Shared by ../kernel_backend.rs (emulator) and
//! ../cuda_backend.rs (GPU). Neighbours: ops.rs, ../common (model builders).
#![allow(dead_code)]

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::Backend;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Arch, Batch, Llama, ModelConfig, ModelWeights, StepOptions};

use super::common::{lora_config, mixed_batch, random_lora, random_weights, tiny_config};

/// Learning rate of the AdamW steps.
pub const LR: f64 = 1e-2;

/// The model (two heads of `hd`, one kv head), adapter and batch of the test.
pub fn setup(hd: usize) -> (ModelConfig, ModelWeights, LoraWeights, Batch) {
    let mut cfg = tiny_config(Arch::Qwen2, 2, false);
    cfg.hidden_size = 2 * hd;
    cfg.num_heads = 2;
    cfg.num_kv_heads = 1;
    cfg.head_dim = hd;
    cfg.intermediate_size = 3 * hd;
    let w = random_weights(&cfg, 51);
    let lw = random_lora(&cfg, &lora_config(4, 0.1), 3, 0.2);
    let batch = mixed_batch(16, cfg.vocab_size, 21);
    (cfg, w, lw, batch)
}

/// What a run produced: per-step losses, the first step's LoRA gradients, the parameters
/// after the last step, and the eval per-token losses after training.
pub struct Run {
    /// Mean loss of each training step.
    pub losses: Vec<f32>,
    /// LoRA gradients of step 1.
    pub grads: LoraWeights,
    /// LoRA parameters after the last step.
    pub params: LoraWeights,
    /// `forward_loss` per-token losses after training.
    pub eval: Vec<f32>,
}

/// Two training steps and an eval forward on `be`, with head_dim `hd` (32: the one-warp
/// attention forward; 64 and 128: the tiled one).
pub fn run<B: Backend + Clone>(be: &B, hd: usize) -> Run {
    let (cfg, w, lw, batch) = setup(hd);
    let mut lora = LoraState::upload(be, &lw).unwrap();
    let mut grads = lora.zeros_grads(be).unwrap();
    let mut mo = lora.zeros_grads(be).unwrap();
    let mut vo = lora.zeros_grads(be).unwrap();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let mut losses = Vec::new();
    let mut first = None;
    for step in 1..=2u32 {
        let opts = StepOptions {
            recompute: step == 2,
            seed: 5,
            step: step as u64,
            ..StepOptions::default()
        };
        let s = m
            .forward_backward(&batch, &lora, &mut grads, &opts)
            .unwrap();
        losses.push(s.loss);
        if step == 1 {
            first = Some(grads.download(be, &lw).unwrap());
        }
        let (gs, ms, vs) = (grads.bufs(), mo.bufs_mut(), vo.bufs_mut());
        lora.update(be, |params| {
            for (((p, g), mm), vv) in params.iter_mut().zip(gs).zip(ms).zip(vs) {
                be.adamw(p, g, mm, vv, LR, 0.9, 0.999, 1e-8, 0.01, step)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let eval = m.forward_loss(&batch, Some(&lora)).unwrap();
    let mut params = lw.clone();
    lora.download(be, &mut params).unwrap();
    Run {
        losses,
        grads: first.unwrap_or_else(|| lw.clone()),
        params,
        eval,
    }
}

/// The CPU backend's run (the reference).
pub fn reference(hd: usize) -> Run {
    run(&CpuBackend::<f32>::new(), hd)
}

/// Asserts `got` matches the CPU reference: losses within 1e-4 relative, each LoRA gradient
/// tensor within `1e-3·max|ref| + 1e-3·|ref|`, parameters within 5% of one AdamW step
/// (`0.05·lr`, a step moving each value by about `lr`), eval losses within 1e-4 relative.
pub fn assert_matches(got: &Run, want: &Run) {
    for (i, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs(),
            "step {} loss {g} vs cpu {w}",
            i + 1
        );
    }
    assert_eq!(got.losses.len(), want.losses.len());
    for (pi, (g, w)) in got.grads.pairs().iter().zip(want.grads.pairs()).enumerate() {
        for (name, gt, wt) in [("a", &g.a, &w.a), ("b", &g.b, &w.b)] {
            let max = wt.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > 0.0, "pair {pi} {name}: zero reference gradient");
            for (i, (x, y)) in gt.data.iter().zip(&wt.data).enumerate() {
                let tol = 1e-3 * max + 1e-3 * y.abs();
                assert!(
                    (x - y).abs() <= tol,
                    "grad pair {pi} (layer {}, {:?}) {name}[{i}]: {x} vs cpu {y}",
                    g.layer,
                    g.target
                );
            }
        }
    }
    let tol = 0.05 * LR as f32;
    for (pi, (g, w)) in got
        .params
        .pairs()
        .iter()
        .zip(want.params.pairs())
        .enumerate()
    {
        for (gt, wt) in [(&g.a, &w.a), (&g.b, &w.b)] {
            for (i, (x, y)) in gt.data.iter().zip(&wt.data).enumerate() {
                assert!((x - y).abs() <= tol, "param pair {pi}[{i}]: {x} vs cpu {y}");
            }
        }
    }
    assert_eq!(got.eval.len(), want.eval.len());
    for (i, (g, w)) in got.eval.iter().zip(&want.eval).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "eval loss {i}: {g} vs cpu {w}"
        );
    }
    assert!(want.eval.iter().any(|&l| l > 0.0));
}

/// Asserts two runs are bit-identical.
pub fn assert_bit_identical(a: &Run, b: &Run) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&a.losses),
        bits(&b.losses),
        "losses differ between runs"
    );
    assert_eq!(
        bits(&a.eval),
        bits(&b.eval),
        "eval losses differ between runs"
    );
    assert_eq!(a.grads, b.grads, "gradients differ between runs");
    assert_eq!(a.params, b.params, "parameters differ between runs");
}

/// What the KV-cached decoding gave: completions of a prompt for three keys, greedy and
/// sampled, and the logits of a prefill and of two decode steps (the second a shrunk batch).
pub struct Decoded {
    /// Greedy, then sampled completions.
    pub completions: Vec<gradients_engine::model::Completion>,
    /// Prefill, then decode-step logits, concatenated.
    pub logits: Vec<f32>,
}

/// KV-cached decoding of the model of [`setup`] (with its adapter) on `be`.
pub fn decode<B: Backend + Clone>(be: &B, hd: usize) -> Decoded {
    use gradients_engine::model::Sampling;
    let (cfg, w, lw, _) = setup(hd);
    let lora = LoraState::upload(be, &lw).unwrap();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let prompt = super::common::random_ids(11, cfg.vocab_size, 6);
    let keys = [[0u64, 0], [0, 1], [2, 0]];
    let sampled = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 3,
    };
    let mut completions = Vec::new();
    for s in [Sampling::greedy(), sampled] {
        let c = m.generate_many(&prompt, 8, None, Some(&lora), &s, &keys);
        completions.extend(c.unwrap());
    }
    let mut logits = m.prefill(&prompt, 3, 16, Some(&lora)).unwrap();
    logits.extend(m.decode_step(&[0, 1, 2], &[5, 6, 7], Some(&lora)).unwrap());
    logits.extend(m.decode_step(&[2, 0], &[8, 9], Some(&lora)).unwrap());
    Decoded {
        completions,
        logits,
    }
}

/// Asserts `got` decodes as the CPU reference `want`: the same completions, logits within
/// `1e-4·(1 + |ref|)`.
pub fn assert_decodes_like(got: &Decoded, want: &Decoded) {
    assert_eq!(got.completions, want.completions);
    assert_eq!(got.logits.len(), want.logits.len());
    for (i, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "logit {i}: {g} vs cpu {w}"
        );
    }
}

/// `‖got − want‖ / ‖want‖` over all values.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut d, mut n) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        d += (g as f64 - w as f64).powi(2);
        n += (w as f64).powi(2);
    }
    (d / n).sqrt()
}

/// Asserts a mixed-precision (bf16) run tracks the f32 CPU reference within bf16's rounding
/// (8 significant bits; the numbers in parentheses are what the emulator gave on this model,
/// 2026-12-07): step losses within 2e-3 relative (1.6e-4), each LoRA gradient tensor within
/// 5e-2 relative L2 (1.5e-2), each parameter tensor's AdamW update `params − init` within 0.4
/// relative L2 of the reference update (0.15: AdamW divides by √v, so it magnifies the
/// relative error of small gradient entries), eval losses within 2e-2·max(1, |ref|) (5.4e-3).
pub fn assert_tracks_bf16(got: &Run, want: &Run, init: &LoraWeights) {
    assert_eq!(got.losses.len(), want.losses.len());
    for (i, (g, w)) in got.losses.iter().zip(&want.losses).enumerate() {
        assert!(
            (g - w).abs() <= 2e-3 * w.abs(),
            "bf16 step {} loss {g} vs cpu {w}",
            i + 1
        );
    }
    for (g, w) in got.grads.pairs().iter().zip(want.grads.pairs()) {
        for (name, gt, wt) in [("a", &g.a, &w.a), ("b", &g.b, &w.b)] {
            let e = rel_l2(&gt.data, &wt.data);
            assert!(
                e <= 5e-2,
                "bf16 grad (layer {}, {:?}) {name}: relative L2 error {e:.3e}",
                g.layer,
                g.target
            );
        }
    }
    let pairs = got.params.pairs().iter().zip(want.params.pairs());
    for ((g, w), i) in pairs.zip(init.pairs()) {
        for (name, gt, wt, it) in [("a", &g.a, &w.a, &i.a), ("b", &g.b, &w.b, &i.b)] {
            let dg: Vec<f32> = gt.data.iter().zip(&it.data).map(|(a, b)| a - b).collect();
            let dw: Vec<f32> = wt.data.iter().zip(&it.data).map(|(a, b)| a - b).collect();
            let e = rel_l2(&dg, &dw);
            assert!(
                e <= 0.4,
                "bf16 update (layer {}, {:?}) {name}: relative L2 error {e:.3e}",
                g.layer,
                g.target
            );
        }
    }
    assert_eq!(got.eval.len(), want.eval.len());
    for (i, (g, w)) in got.eval.iter().zip(&want.eval).enumerate() {
        assert!(
            (g - w).abs() <= 2e-2 * w.abs().max(1.0),
            "bf16 eval loss {i}: {g} vs cpu {w}"
        );
    }
}
