//! Backward tests of the Llama model with LoRA on the CPU backend: finite differences in f64
//! for every target's `A` and `B` (Llama tied; Qwen2 with biases, untied head, dropout and
//! recompute), recompute bit-identical to storing activations, and bit-identical results for
//! 1 and 2 rayon threads over 10 AdamW steps.

mod common;

use common::*;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::Backend;
use gradients_engine::lora::{LoraConfig, LoraState, LoraWeights, Target};
use gradients_engine::model::{Arch, Batch, Llama, ModelConfig, ModelWeights, StepOptions};

/// Loss of one forward_backward (same dropout masks as the analytic step).
fn loss_at(
    m: &mut Llama<CpuBackend<f64>>,
    lw: &LoraWeights,
    batch: &Batch,
    opts: &StepOptions,
) -> f64 {
    let be = CpuBackend::<f64>::new();
    let lora = LoraState::upload(&be, lw).unwrap();
    let mut g = lora.zeros_grads(&be).unwrap();
    let s = m.forward_backward(batch, &lora, &mut g, opts).unwrap();
    s.sum_loss / s.num_targets as f64
}

fn fd_check(arch: Arch, tied: bool, lcfg: LoraConfig, recompute: bool) {
    let dropout = lcfg.dropout;
    let cfg = tiny_config(arch, 2, tied);
    let w = random_weights(&cfg, 31);
    let lw = random_lora(&cfg, &lcfg, 6, 0.3);
    let batch = mixed_batch(10, cfg.vocab_size, 8);
    let opts = StepOptions {
        recompute,
        seed: 17,
        step: 2,
        ..StepOptions::default()
    };
    let be = CpuBackend::<f64>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut grads = lora.zeros_grads(&be).unwrap();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let stats = m
        .forward_backward(&batch, &lora, &mut grads, &opts)
        .unwrap();
    assert_eq!(stats.num_targets, batch.num_targets());
    let g = grads.download(&be, &lw).unwrap();

    // Token losses come back as f32 (even from the f64 backend), so the mean loss carries
    // ~5e-8 of rounding noise: with step 1e-2 that is ~1e-5 in the extrapolated quotient.
    let h = 1e-2f32;
    let mut worst = 0.0f64;
    for (pi, p) in lw.pairs().iter().enumerate() {
        for which in 0..2 {
            let (len, gd) = if which == 0 {
                (p.a.len(), &g.pairs()[pi].a)
            } else {
                (p.b.len(), &g.pairs()[pi].b)
            };
            // two single entries, then a random direction over the whole matrix
            let picks = [(pi * 7 + 3) % len, (pi * 13 + 11) % len];
            let mut checks: Vec<(Vec<f32>, f64)> = picks
                .iter()
                .map(|&i| {
                    let mut dir = vec![0.0f32; len];
                    dir[i] = 1.0;
                    (dir, gd.data[i] as f64)
                })
                .collect();
            let dir: Vec<f32> = (0..len)
                .map(|i| unif(&[pi as u64, which, i as u64]))
                .collect();
            let dot = dir
                .iter()
                .zip(&gd.data)
                .map(|(&d, &g)| d as f64 * g as f64)
                .sum();
            checks.push((dir, dot));
            for (dir, analytic) in checks {
                let mut quotient = |step: f32| {
                    let mut plus = lw.clone();
                    let mut minus = lw.clone();
                    let (tp, tm) = if which == 0 {
                        (&mut plus.pairs_mut()[pi].a, &mut minus.pairs_mut()[pi].a)
                    } else {
                        (&mut plus.pairs_mut()[pi].b, &mut minus.pairs_mut()[pi].b)
                    };
                    for ((up, down), &d) in tp.data.iter_mut().zip(tm.data.iter_mut()).zip(&dir) {
                        *up += step * d;
                        *down -= step * d;
                    }
                    let lp = loss_at(&mut m, &plus, &batch, &opts);
                    let lm = loss_at(&mut m, &minus, &batch, &opts);
                    (lp - lm) / (2.0 * step as f64)
                };
                // Richardson extrapolation: O(h⁴) truncation error
                let fd = (4.0 * quotient(h / 2.0) - quotient(h)) / 3.0;
                let err = (fd - analytic).abs();
                let tol = 1e-3 * analytic.abs() + 4e-5;
                worst = worst.max(err / tol);
                assert!(
                    err <= tol,
                    "layer {} {} {}: fd {fd:.8} vs analytic {analytic:.8}",
                    p.layer,
                    p.target.name(),
                    if which == 0 { "A" } else { "B" }
                );
                assert!(analytic.abs() > 1e-6 || fd.abs() < 1e-6);
            }
        }
    }
    eprintln!(
        "{arch:?} tied={tied} dropout={dropout} recompute={recompute}: worst err/tol {worst:.3}"
    );
}

#[test]
fn finite_differences_llama_tied() {
    fd_check(Arch::Llama, true, lora_config(4, 0.0), false);
}

#[test]
fn finite_differences_qwen2_untied_dropout_recompute() {
    fd_check(Arch::Qwen2, false, lora_config(4, 0.2), true);
}

#[test]
fn finite_differences_mistral_some_targets_rslora() {
    let lcfg = LoraConfig {
        targets: vec![Target::Q, Target::V, Target::Down],
        use_rslora: true,
        ..lora_config(2, 0.0)
    };
    fd_check(Arch::Mistral, true, lcfg, false);
}

fn f32_setup(
    arch: Arch,
    dropout: f32,
    hidden: usize,
) -> (ModelConfig, ModelWeights, LoraWeights, Batch) {
    let mut cfg = tiny_config(arch, 2, arch != Arch::Qwen2);
    cfg.hidden_size = hidden;
    cfg.head_dim = hidden / cfg.num_heads;
    cfg.intermediate_size = 2 * hidden;
    let w = random_weights(&cfg, 41);
    let lw = random_lora(&cfg, &lora_config(8, dropout), 2, 0.2);
    let batch = mixed_batch(24, cfg.vocab_size, 12);
    (cfg, w, lw, batch)
}

#[test]
fn recompute_gives_bit_identical_gradients() {
    for (arch, p) in [(Arch::Llama, 0.0), (Arch::Qwen2, 0.1)] {
        let (cfg, w, lw, batch) = f32_setup(arch, p, 32);
        let be = CpuBackend::<f32>::new();
        let lora = LoraState::upload(&be, &lw).unwrap();
        let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
        let mut run = |recompute: bool| {
            let mut g = lora.zeros_grads(&be).unwrap();
            let opts = StepOptions {
                recompute,
                seed: 1,
                step: 9,
                ..StepOptions::default()
            };
            let s = m.forward_backward(&batch, &lora, &mut g, &opts).unwrap();
            (s.loss, g.download(&be, &lw).unwrap())
        };
        let (l0, g0) = run(false);
        let (l1, g1) = run(true);
        assert_eq!(l0.to_bits(), l1.to_bits());
        assert_eq!(g0, g1, "{arch:?}: recompute changed the gradients");
        assert!(g0.params().iter().all(|t| t.data.iter().any(|&v| v != 0.0)));
    }
}

/// 10 AdamW steps; returns the losses, the last gradients and the final parameters.
fn train(
    cfg: &ModelConfig,
    w: &ModelWeights,
    lw: &LoraWeights,
    batch: &Batch,
) -> (Vec<u32>, LoraWeights, LoraWeights) {
    let be = CpuBackend::<f32>::new();
    let mut lora = LoraState::upload(&be, lw).unwrap();
    let mut grads = lora.zeros_grads(&be).unwrap();
    let mut mo = lora.zeros_grads(&be).unwrap();
    let mut vo = lora.zeros_grads(&be).unwrap();
    let mut m = Llama::new(be.clone(), cfg, w).unwrap();
    let mut losses = Vec::new();
    for step in 1..=10u32 {
        let opts = StepOptions {
            recompute: step % 2 == 0,
            seed: 3,
            step: step as u64,
            ..StepOptions::default()
        };
        let s = m.forward_backward(batch, &lora, &mut grads, &opts).unwrap();
        losses.push(s.loss.to_bits());
        let (gs, ms, vs) = (grads.bufs(), mo.bufs_mut(), vo.bufs_mut());
        lora.update(&be, |params| {
            for (((p, g), mm), vv) in params.iter_mut().zip(gs).zip(ms).zip(vs) {
                be.adamw(p, g, mm, vv, 1e-2, 0.9, 0.999, 1e-8, 0.01, step)?;
            }
            Ok(())
        })
        .unwrap();
    }
    let mut out = lw.clone();
    lora.download(&be, &mut out).unwrap();
    (losses, grads.download(&be, lw).unwrap(), out)
}

#[test]
fn bit_identical_across_thread_counts() {
    let (cfg, w, lw, batch) = f32_setup(Arch::Qwen2, 0.1, 64);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&cfg, &w, &lw, &batch))
    };
    let (l1, g1, p1) = run(1);
    let (l2, g2, p2) = run(2);
    assert_eq!(l1, l2, "losses differ between 1 and 2 threads");
    assert_eq!(g1, g2, "gradients differ between 1 and 2 threads");
    assert_eq!(p1, p2, "parameters differ between 1 and 2 threads");
    let first = f32::from_bits(l1[0]);
    let last = f32::from_bits(l1[9]);
    assert!(
        last < first,
        "training must lower the loss: {first} -> {last}"
    );
}

#[test]
fn gradients_overwrite_and_scale() {
    let (cfg, w, lw, batch) = f32_setup(Arch::Llama, 0.0, 32);
    let be = CpuBackend::<f32>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let mut g = lora.zeros_grads(&be).unwrap();
    let opts = StepOptions::default();
    m.forward_backward(&batch, &lora, &mut g, &opts).unwrap();
    let first = g.download(&be, &lw).unwrap();
    let s = m.forward_backward(&batch, &lora, &mut g, &opts).unwrap();
    assert_eq!(
        first,
        g.download(&be, &lw).unwrap(),
        "gradients must overwrite"
    );
    // the forward_backward loss is the mean of forward_loss's token losses
    let tok = m.forward_loss(&batch, Some(&lora)).unwrap();
    let mean = tok.iter().map(|&l| l as f64).sum::<f64>() / s.num_targets as f64;
    assert!((mean - s.loss as f64).abs() < 1e-6);
    // loss_scale = 2/N doubles every gradient (up to rounding)
    let scaled = StepOptions {
        loss_scale: Some(2.0 / s.num_targets as f32),
        ..opts
    };
    m.forward_backward(&batch, &lora, &mut g, &scaled).unwrap();
    let twice = g.download(&be, &lw).unwrap();
    for (a, b) in first.params().iter().zip(twice.params()) {
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!((2.0 * x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{x} {y}");
        }
    }
}

#[test]
fn accumulate_adds_micro_batch_gradients() {
    let (cfg, w, lw, batch) = f32_setup(Arch::Qwen2, 0.1, 32);
    let other = mixed_batch(24, cfg.vocab_size, 77);
    let be = CpuBackend::<f32>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let total = (batch.num_targets() + other.num_targets()) as f32;
    let opts = StepOptions {
        seed: 4,
        loss_scale: Some(1.0 / total),
        ..StepOptions::default()
    };
    let mut ga = lora.zeros_grads(&be).unwrap();
    let mut gb = lora.zeros_grads(&be).unwrap();
    m.forward_backward(&batch, &lora, &mut ga, &opts).unwrap();
    m.forward_backward(&other, &lora, &mut gb, &opts).unwrap();
    let (a, b) = (
        ga.download(&be, &lw).unwrap(),
        gb.download(&be, &lw).unwrap(),
    );
    let acc = StepOptions {
        accumulate: true,
        ..opts
    };
    m.forward_backward(&other, &lora, &mut ga, &acc).unwrap();
    let sum = ga.download(&be, &lw).unwrap();
    for ((x, y), s) in a.params().iter().zip(b.params()).zip(sum.params()) {
        for ((x, y), s) in x.data.iter().zip(&y.data).zip(&s.data) {
            assert!(
                (x + y - s).abs() <= 1e-6 * (x.abs() + y.abs()) + 1e-9,
                "{x} + {y} != {s}"
            );
        }
    }
}
