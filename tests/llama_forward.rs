//! Forward-pass tests of the Llama model on the CPU backend: against a naive f64 reference
//! (Llama and Qwen2, tied and untied heads, packed rows), LoRA with `B = 0` equals the base
//! model, packing equals separate rows, and `logits_last`.

mod common;

use common::*;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::{LoraConfig, LoraState, LoraWeights, Target};
use gradients_engine::model::{Arch, Batch, Llama, Sample};

fn check_against_reference(arch: Arch, tied: bool, layers: usize, lcfg: LoraConfig) {
    let cfg = tiny_config(arch, layers, tied);
    let w = random_weights(&cfg, 11);
    let lw = random_lora(&cfg, &lcfg, 5, 0.3);
    let batch = mixed_batch(12, cfg.vocab_size, 3);
    let (ref_losses, ref_logits) = reference_forward(&cfg, &w, Some(&lw), &batch);
    let (ref_base, _) = reference_forward(&cfg, &w, None, &batch);

    // f64 backend: agrees to near f64 precision (losses are returned as f32)
    let be = CpuBackend::<f64>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be, &cfg, &w).unwrap();
    let got = m.forward_loss(&batch, Some(&lora)).unwrap();
    let base = m.forward_loss(&batch, None).unwrap();
    let mut diff_lora = 0.0f64;
    for t in 0..got.len() {
        assert!(
            (got[t] as f64 - ref_losses[t]).abs() < 1e-5,
            "token {t}: {} vs {}",
            got[t],
            ref_losses[t]
        );
        assert!(
            (base[t] as f64 - ref_base[t]).abs() < 1e-5,
            "token {t}: {} vs {}",
            base[t],
            ref_base[t]
        );
        diff_lora += (ref_losses[t] - ref_base[t]).abs();
    }
    assert!(diff_lora > 1e-3, "the adapter must change the losses");

    // f32 backend: within f32 tolerance
    let be = CpuBackend::<f32>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be, &cfg, &w).unwrap();
    let got = m.forward_loss(&batch, Some(&lora)).unwrap();
    for t in 0..got.len() {
        assert!(
            (got[t] as f64 - ref_losses[t]).abs() < 2e-4,
            "token {t}: {} vs {}",
            got[t],
            ref_losses[t]
        );
    }

    // logits of the last position of row 1's sample (a single sequence)
    let len = batch.seq - 2;
    let ids = &batch.input_ids[batch.seq..batch.seq + len];
    let logits = m.logits_last(ids, Some(&lora)).unwrap();
    let want = &ref_logits[batch.seq + len - 1];
    assert_eq!(logits.len(), cfg.vocab_size);
    for (g, r) in logits.iter().zip(want) {
        assert!((*g as f64 - r).abs() < 2e-4, "{g} vs {r}");
    }
}

#[test]
fn llama_one_layer_matches_reference() {
    check_against_reference(Arch::Llama, true, 1, lora_config(4, 0.0));
}

#[test]
fn qwen2_untied_two_layers_matches_reference() {
    check_against_reference(Arch::Qwen2, false, 2, lora_config(4, 0.0));
}

#[test]
fn some_targets_rslora_match_reference() {
    let lcfg = LoraConfig {
        targets: vec![Target::K, Target::O, Target::Up],
        use_rslora: true,
        ..lora_config(3, 0.0)
    };
    check_against_reference(Arch::Mistral, true, 2, lcfg);
}

#[test]
fn zero_b_gives_exactly_the_base_model() {
    let cfg = tiny_config(Arch::Qwen2, 2, true);
    let w = random_weights(&cfg, 2);
    let lw = LoraWeights::init(&cfg, &lora_config(4, 0.0), 9).unwrap();
    let batch = mixed_batch(10, cfg.vocab_size, 4);
    let be = CpuBackend::<f32>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be, &cfg, &w).unwrap();
    let with = m.forward_loss(&batch, Some(&lora)).unwrap();
    let without = m.forward_loss(&batch, None).unwrap();
    assert_eq!(with, without);
    assert!(with.iter().any(|&l| l > 0.0));
}

#[test]
fn packed_row_equals_separate_rows() {
    let cfg = tiny_config(Arch::Llama, 2, false);
    let w = random_weights(&cfg, 8);
    let lw = random_lora(&cfg, &lora_config(2, 0.0), 1, 0.3);
    let a = random_ids(4, cfg.vocab_size, 20);
    let b = random_ids(6, cfg.vocab_size, 21);
    let la: Vec<i32> = a.iter().map(|&t| t as i32).collect();
    let mut lb: Vec<i32> = b.iter().map(|&t| t as i32).collect();
    lb[0] = -100;
    let (sa, sb) = (
        Sample {
            input_ids: &a,
            labels: &la,
        },
        Sample {
            input_ids: &b,
            labels: &lb,
        },
    );
    let packed = Batch::packed(&[vec![sa, sb]], 11, cfg.vocab_size).unwrap();
    let separate = Batch::unpacked(&[sa, sb], 11, cfg.vocab_size).unwrap();
    let be = CpuBackend::<f32>::new();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut m = Llama::new(be, &cfg, &w).unwrap();
    let lp = m.forward_loss(&packed, Some(&lora)).unwrap();
    let ls = m.forward_loss(&separate, Some(&lora)).unwrap();
    let pairs = (0..4)
        .map(|i| (i, i))
        .chain((0..6).map(|i| (4 + i, 11 + i)));
    for (p, s) in pairs {
        assert!(
            (lp[p] - ls[s]).abs() < 1e-5,
            "packed {p} vs row {s}: {} {}",
            lp[p],
            ls[s]
        );
    }
    assert_eq!(lp[3], 0.0, "the shift must not cross samples");
    assert!(lp[4] > 0.0 && lp[..3].iter().all(|&l| l > 0.0));
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny_config(Arch::Llama, 1, true);
    let mut w = random_weights(&cfg, 1);
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    assert!(m.logits_last(&[], None).is_err());
    assert!(m.logits_last(&[3, 50], None).is_err());
    w.layers[0].wk = gradients_engine::Tensor::zeros(vec![8, 32]).into();
    let err = Llama::new(be, &cfg, &w).err().unwrap().to_string();
    assert!(err.contains("layers.0.self_attn.k_proj"), "{err}");
}
