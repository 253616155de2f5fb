//! Memory-plan tests of the Llama model on the CPU backend: [`Llama::from_weights`] (host
//! weights moved in) gives the same bits as [`Llama::new`], and an evaluation that runs in the
//! training plan (after a step) gives the same bits as one in a fresh forward-only plan (two
//! residual buffers), with and without the adapter. The numerics of the recomputed block
//! inputs are covered by the finite-difference tests in `llama_backward.rs`.

mod common;

use common::*;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::{LoraConfig, LoraGrads, LoraState, LoraWeights, Target};
use gradients_engine::model::{Arch, Llama, StepOptions};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn grads_of(be: &CpuBackend, g: &LoraGrads<CpuBackend>, lw: &LoraWeights) -> Vec<Vec<u32>> {
    let g = g.download(be, lw).unwrap();
    g.params().iter().map(|t| bits(&t.data)).collect()
}

#[test]
fn from_weights_matches_new_and_eval_reuses_the_training_plan() {
    for (arch, tied, targets) in [
        (Arch::Llama, true, Target::ALL.to_vec()),
        (Arch::Qwen2, false, vec![Target::K, Target::Up]),
    ] {
        let cfg = tiny_config(arch, 3, tied);
        let w = random_weights(&cfg, 5);
        let lcfg = LoraConfig {
            targets,
            dropout: 0.1,
            ..lora_config(4, 0.1)
        };
        let lw = random_lora(&cfg, &lcfg, 9, 0.3);
        let batch = mixed_batch(12, cfg.vocab_size, 4);
        let be = CpuBackend::<f32>::new();
        let lora = LoraState::upload(&be, &lw).unwrap();
        let opts = StepOptions {
            seed: 2,
            step: 3,
            ..StepOptions::default()
        };

        // a fresh model evaluates in its own forward-only plan
        let mut fresh = Llama::new(be.clone(), &cfg, &w).unwrap();
        let eval_lora = bits(&fresh.forward_loss(&batch, Some(&lora)).unwrap());
        let eval_base = bits(&fresh.forward_loss(&batch, None).unwrap());
        let mut g0 = lora.zeros_grads(&be).unwrap();
        let s0 = fresh
            .forward_backward(&batch, &lora, &mut g0, &opts)
            .unwrap();

        // the moved-in weights: same step, then evaluation inside the training plan
        let mut moved = Llama::from_weights(be.clone(), &cfg, w.clone()).unwrap();
        let mut g1 = lora.zeros_grads(&be).unwrap();
        let s1 = moved
            .forward_backward(&batch, &lora, &mut g1, &opts)
            .unwrap();
        assert_eq!(s0.loss.to_bits(), s1.loss.to_bits(), "{arch:?}");
        assert_eq!(grads_of(&be, &g0, &lw), grads_of(&be, &g1, &lw), "{arch:?}");
        assert_eq!(
            bits(&moved.forward_loss(&batch, Some(&lora)).unwrap()),
            eval_lora,
            "{arch:?}: evaluation in the training plan"
        );
        assert_eq!(
            bits(&moved.forward_loss(&batch, None).unwrap()),
            eval_base,
            "{arch:?}: base-model evaluation in the training plan"
        );
        // and a step after those evaluations is unchanged (nothing carried over)
        let mut g2 = lora.zeros_grads(&be).unwrap();
        let s2 = moved
            .forward_backward(&batch, &lora, &mut g2, &opts)
            .unwrap();
        assert_eq!(s0.loss.to_bits(), s2.loss.to_bits(), "{arch:?}");
        assert_eq!(grads_of(&be, &g0, &lw), grads_of(&be, &g2, &lw), "{arch:?}");
        assert_ne!(eval_lora, eval_base, "the adapter must change the losses");
    }
}

#[test]
fn from_weights_rejects_bad_shapes() {
    let cfg = tiny_config(Arch::Llama, 2, true);
    let mut w = random_weights(&cfg, 1);
    w.layers[1].w_up = gradients_engine::Tensor::zeros(vec![1, 1]).into();
    let be = CpuBackend::<f32>::new();
    let err = Llama::from_weights(be, &cfg, w).err().unwrap().to_string();
    assert!(err.contains("layers.1.mlp.up_proj"), "{err}");
}
