//! Parity with HF transformers + PEFT (fixtures written by tools/make_parity_fixtures.py, see
//! tests/fixtures/parity/README.md): for three tiny models — llama tied/GQA, llama3-rope
//! untied, qwen2 with q/k/v bias — the engine's logits, per-token losses, mean loss, base
//! loss (adapter off), LoRA gradients and the losses and weights of 5 AdamW steps match
//! PyTorch's on the CPU backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::hf_model::load_hf_model;
use gradients_engine::model::llama::{Llama, StepOptions};
use gradients_engine::model::st::TensorStore;
use gradients_engine::model::{Batch, Sample};
use gradients_engine::optim::adamw::{AdamW, AdamWConfig};
use gradients_engine::Tensor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

struct Expected {
    tensors: HashMap<String, Tensor>,
}

impl Expected {
    fn load(dir: &Path) -> Self {
        let store = TensorStore::from_file(&dir.join("expected.safetensors"))
            .expect("expected.safetensors opens");
        let tensors = store
            .names()
            .map(|n| (n.to_string(), store.tensor(n).expect("tensor decodes")))
            .collect();
        Expected { tensors }
    }
    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("expected.safetensors lacks {name}"))
    }
}

fn read_batch(dir: &Path) -> (Vec<Vec<u32>>, Vec<Vec<i32>>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let ids = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let labels = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap() as i32)
                .collect()
        })
        .collect();
    (ids, labels)
}

/// `|a − b| ≤ atol + rtol·|b|` elementwise, with a message naming the tensor and the worst
/// element.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        assert!(g.is_finite(), "{what}[{i}] = {g}");
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}[{i}]: got {} want {} (rtol {rtol}, atol {atol})",
        got[i],
        want[i]
    );
}

fn peft_key(layer: usize, module_path: &str, f: &str) -> String {
    format!("base_model.model.model.layers.{layer}.{module_path}.lora_{f}.weight")
}

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let (cfg, weights) = load_hf_model(&dir).expect("fixture model loads");
    let lora_w = LoraWeights::load(&dir, &cfg).expect("fixture adapter loads");
    let exp = Expected::load(&dir);
    let (ids, labels) = read_batch(&dir);
    let seq = ids[0].len();
    let samples: Vec<Sample> = ids
        .iter()
        .zip(&labels)
        .map(|(i, l)| Sample {
            input_ids: i,
            labels: l,
        })
        .collect();
    let batch = Batch::unpacked(&samples, seq, cfg.vocab_size).unwrap();
    let be: CpuBackend = CpuBackend::new();
    let mut model = Llama::new(be.clone(), &cfg, &weights).unwrap();
    let lora = LoraState::upload(&be, &lora_w).unwrap();

    // Per-token losses and their mean, with and without the adapter.
    let token_losses = model.forward_loss(&batch, Some(&lora)).unwrap();
    assert_close(
        &format!("{name} token_losses"),
        &token_losses,
        &exp.get("token_losses").data,
        1e-4,
        1e-5,
    );
    let n = batch.num_targets() as f64;
    let mean = (token_losses.iter().map(|&x| x as f64).sum::<f64>() / n) as f32;
    assert_close(
        &format!("{name} loss"),
        &[mean],
        &exp.get("loss").data,
        1e-4,
        0.0,
    );
    let base = model.forward_loss(&batch, None).unwrap();
    let base_mean = (base.iter().map(|&x| x as f64).sum::<f64>() / n) as f32;
    assert_close(
        &format!("{name} base_loss"),
        &[base_mean],
        &exp.get("base_loss").data,
        1e-4,
        0.0,
    );
    assert!(
        (base_mean - mean).abs() > 1e-3,
        "{name}: the adapter must change the loss"
    );

    // Logits at every position: the last-position logits of each prefix (causality makes
    // them the full sequence's logits at that position).
    let logits = exp.get("logits");
    let vocab = cfg.vocab_size;
    for (b, row) in ids.iter().enumerate() {
        for t in 0..seq {
            let got = model.logits_last(&row[..=t], Some(&lora)).unwrap();
            let off = (b * seq + t) * vocab;
            assert_close(
                &format!("{name} logits[{b},{t}]"),
                &got,
                &logits.data[off..off + vocab],
                1e-4,
                1e-5,
            );
        }
    }

    // LoRA gradients of the mean loss.
    let mut grads = lora.zeros_grads(&be).unwrap();
    let stats = model
        .forward_backward(&batch, &lora, &mut grads, &StepOptions::default())
        .unwrap();
    assert_close(
        &format!("{name} step loss"),
        &[stats.loss],
        &exp.get("loss").data,
        1e-4,
        0.0,
    );
    let g = grads.download(&be, &lora_w).unwrap();
    for (layer, target, ga, gb) in g.iter() {
        for (f, t) in [("A", ga), ("B", gb)] {
            let key = format!("grad.{}", peft_key(layer, target.module_path(), f));
            let want = exp.get(&key);
            assert_eq!(t.shape, want.shape, "{key}");
            let scale = want.data.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_close(
                &format!("{name} {key}"),
                &t.data,
                &want.data,
                1e-3,
                1e-3 * scale,
            );
        }
    }

    // Five AdamW steps (lr 1e-2 constant, torch defaults otherwise, no clipping): the loss
    // before each step and the weights after the last.
    let mut lora = lora;
    let lens: Vec<usize> = lora.params().iter().map(|p| be.len(p)).collect();
    let mut opt = AdamW::new(&be, AdamWConfig::default(), &lens).unwrap();
    let want_losses = &exp.get("adamw_losses").data;
    for (step, want) in want_losses.iter().enumerate() {
        let s = model
            .forward_backward(&batch, &lora, &mut grads, &StepOptions::default())
            .unwrap();
        assert_close(
            &format!("{name} adamw loss {step}"),
            &[s.loss],
            &[*want],
            1e-4,
            0.0,
        );
        lora.update(&be, |params| opt.step(&be, params, &grads.bufs(), 1e-2))
            .unwrap();
    }
    let mut after = lora_w.clone();
    lora.download(&be, &mut after).unwrap();
    for (layer, target, a, b) in after.iter() {
        for (f, t) in [("A", a), ("B", b)] {
            let key = format!("final.{}", peft_key(layer, target.module_path(), f));
            // Adam normalises every element's update, so an element's relative gradient error
            // (up to ~1e-3 above, for elements with tiny gradients) becomes an absolute weight
            // error of up to lr · steps · 1e-3 = 5e-5.
            assert_close(
                &format!("{name} {key}"),
                &t.data,
                &exp.get(&key).data,
                1e-4,
                5e-5,
            );
        }
    }
}

#[test]
fn parity_llama_tied_gqa() {
    check_fixture("llama_tied");
}

#[test]
fn parity_llama3_rope_untied() {
    check_fixture("llama3_untied");
}

#[test]
fn parity_qwen2_qkv_bias() {
    check_fixture("qwen2_bias");
}

use gradients_engine::backend::Backend as _;
