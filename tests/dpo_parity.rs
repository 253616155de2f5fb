//! DPO parity with PyTorch (fixtures written by tools/make_dpo_fixtures.py on the tiny
//! llama_tied parity model and its PEFT adapter): the policy and reference log-probs, the
//! per-pair DPO losses and margins, the mean loss and its LoRA gradients (the DPO training
//! step's `dpo_backward`) match transformers + PEFT with a hand-written DPO loss (β 0.1,
//! reference = the adapter disabled), on the CPU backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::DpoTokens;
use gradients_engine::eval::dpo::{pair_logps, score_dpo};
use gradients_engine::eval::{dpo_samples, evaluate_dpo, DpoSample};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::hf_model::load_hf_model;
use gradients_engine::model::llama::{Llama, StepOptions};
use gradients_engine::model::st::TensorStore;
use gradients_engine::train::dpo::dpo_backward;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `|a − b| ≤ atol + rtol·|b|` elementwise, naming the worst element.
fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() && (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g} want {w} (rtol {rtol}, atol {atol})"
        );
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    let mut out = Vec::new();
    for x in v.as_array().unwrap() {
        match x.as_array() {
            Some(row) => out.extend(row.iter().map(|y| y.as_f64().unwrap())),
            None => out.push(x.as_f64().unwrap()),
        }
    }
    out
}

#[test]
fn dpo_loss_and_gradients_match_pytorch() {
    let dir = fixtures();
    let model_dir = dir.join("parity/llama_tied");
    let (cfg, weights) = load_hf_model(&model_dir).expect("fixture model loads");
    let lw = LoraWeights::load(&model_dir, &cfg).expect("fixture adapter loads");
    let text = std::fs::read_to_string(dir.join("dpo/pairs.json")).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let beta = fx["beta"].as_f64().unwrap();
    let tokens: Vec<DpoTokens> = fx["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(row, p)| DpoTokens {
            row,
            prompt: ids(&p["prompt"]),
            chosen: ids(&p["chosen"]),
            rejected: ids(&p["rejected"]),
        })
        .collect();
    let (pairs, dropped) = dpo_samples(&tokens, 64).unwrap();
    assert_eq!((pairs.len(), dropped), (tokens.len(), 0));
    let exp = &fx["expected"];

    let be = CpuBackend::<f32>::new();
    let mut model = Llama::new(be.clone(), &cfg, &weights).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let policy = pair_logps(&mut model, Some(&lora), &pairs).unwrap();
    let reference = pair_logps(&mut model, None, &pairs).unwrap();
    let flat = |v: &[[f64; 2]]| v.iter().flatten().copied().collect::<Vec<f64>>();
    assert_close(
        "policy_logps",
        &flat(&policy),
        &floats(&exp["policy_logps"]),
        1e-5,
        1e-5,
    );
    assert_close(
        "reference_logps",
        &flat(&reference),
        &floats(&exp["reference_logps"]),
        1e-5,
        1e-5,
    );
    let r = score_dpo(&pairs, &policy, &reference, beta).unwrap();
    assert_close(
        "per_pair_loss",
        &r.per_pair_loss,
        &floats(&exp["per_pair_loss"]),
        1e-5,
        1e-6,
    );
    assert_close(
        "margins",
        &r.per_pair_margin,
        &floats(&exp["margins"]),
        1e-4,
        1e-6,
    );
    let want_loss = exp["loss"].as_f64().unwrap();
    assert_close("loss", &[r.mean_loss], &[want_loss], 1e-5, 0.0);
    // the fixture mixes pairs the adapter prefers and pairs it does not
    assert!(r.reward_accuracy > 0.0 && r.reward_accuracy < 1.0);
    assert_eq!(
        evaluate_dpo(&mut model, Some(&lora), &pairs, beta).unwrap(),
        r
    );

    // the DPO training step's gradient of the mean loss
    let mut grads = lora.zeros_grads(&be).unwrap();
    let mut scratch = lora.zeros_grads(&be).unwrap();
    let refs: Vec<&DpoSample> = pairs.iter().collect();
    let st = dpo_backward(
        &mut model,
        &lora,
        &mut grads,
        &mut scratch,
        &refs,
        &reference,
        beta,
        &StepOptions::default(),
        false,
    )
    .unwrap();
    assert_close("step loss", &[st.loss], &[want_loss], 1e-5, 0.0);
    assert_eq!(st.targets, pairs.iter().map(|p| p.targets()).sum::<usize>());
    let store = TensorStore::from_file(&dir.join("dpo/expected.safetensors")).unwrap();
    let want: HashMap<String, Vec<f32>> = store
        .names()
        .map(|n| (n.to_string(), store.tensor(n).unwrap().data))
        .collect();
    let g = grads.download(&be, &lw).unwrap();
    let mut checked = 0;
    for (layer, target, ga, gb) in g.iter() {
        for (f, t) in [("A", ga), ("B", gb)] {
            let key = format!(
                "grad.base_model.model.model.layers.{layer}.{}.lora_{f}.weight",
                target.module_path()
            );
            let w = want
                .get(&key)
                .unwrap_or_else(|| panic!("fixture lacks {key}"));
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            let got: Vec<f64> = t.data.iter().map(|&x| x as f64).collect();
            let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            assert_close(&key, &got, &w, 1e-3, 1e-3 * scale);
            checked += 1;
        }
    }
    assert_eq!(checked, want.len());
}
