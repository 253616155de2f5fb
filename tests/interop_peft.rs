//! Interop with transformers + PEFT in the two directions the engine writes (fixtures made
//! by tools/make_interop_fixtures.py, see tests/fixtures/interop/README.md):
//! - PEFT loads our adapters: the committed adapter is one our code saved; re-saving the same
//!   deterministic adapter gives the same bytes, and our logits with it equal the logits PEFT
//!   computed after `PeftModel.from_pretrained` loaded it onto the tiny parity model.
//! - `merge`: the merged model our code writes gives, with no adapter, the logits of
//!   base + PEFT adapter and of transformers loading the merged directory; tensors the
//!   adapter does not touch are copied bit for bit.
//! - On the real SmolLM2 GGUF (skipped without the assets): the merged HF directory (weights
//!   and tokenizer) gives the same ids and logits as the GGUF with the adapter, so the GGUF
//!   Q/K layout is undone exactly once.
//!
//! `write_fixture_adapter` (ignored) is the generator's Rust half.

mod common;

use std::path::{Path, PathBuf};

use common::unif;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::merge::merge_model;
use gradients_engine::lora::{LoraConfig, LoraState, LoraWeights, Target};
use gradients_engine::model::hf_model::{hf_named_tensors, load_hf_model};
use gradients_engine::model::load::load_model;
use gradients_engine::model::st::TensorStore;
use gradients_engine::model::{Llama, ModelConfig, ModelWeights};

/// The base model of the fixture: the parity suite's untied llama3-rope model.
fn base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/llama3_untied")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interop")
}

/// The name written into the adapter's `base_model_name_or_path`.
const BASE_NAME: &str = "llama3_untied";
/// The token ids the fixture's logits are for.
const IDS: [u32; 12] = [39, 54, 111, 46, 59, 14, 126, 61, 90, 40, 29, 38];

/// The fixture adapter: r 4, alpha 12, rsLoRA, all seven targets; A from PEFT's init (seed
/// 11), B uniform in ±0.2 from a counter hash, so the adapter visibly moves the logits.
fn fixture_adapter(cfg: &ModelConfig) -> LoraWeights {
    let lcfg = LoraConfig {
        rank: 4,
        alpha: 12.0,
        dropout: 0.05,
        targets: Target::ALL.to_vec(),
        use_rslora: true,
    };
    let mut w = LoraWeights::init(cfg, &lcfg, 11).unwrap();
    for p in w.pairs_mut() {
        for (i, v) in p.b.data.iter_mut().enumerate() {
            *v = 0.2 * unif(&[11, 5, p.layer as u64, p.target as u64, i as u64]);
        }
    }
    w
}

/// Logits `[IDS.len(), vocab]` of `weights` (optionally with `lora`), one prefix at a time.
fn logits(cfg: &ModelConfig, weights: &ModelWeights, lora: Option<&LoraWeights>) -> Vec<f32> {
    let be: CpuBackend = CpuBackend::new();
    let mut model = Llama::new(be.clone(), cfg, weights).unwrap();
    let st = lora.map(|l| LoraState::upload(&be, l).unwrap());
    (0..IDS.len())
        .flat_map(|t| model.logits_last(&IDS[..=t], st.as_ref()).unwrap())
        .collect()
}

fn expected(name: &str) -> Vec<f32> {
    let store = TensorStore::from_file(&fixture_dir().join("expected.safetensors")).unwrap();
    store.tensor(name).unwrap().data
}

/// `|a − b| ≤ atol + rtol·|b|` everywhere; reports the worst element.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, excess) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs()))
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |m, (i, e)| if e > m.1 { (i, e) } else { m },
        );
    assert!(
        excess <= 0.0,
        "{what}[{i}]: got {} want {}",
        got[i],
        want[i]
    );
}

#[test]
fn peft_loads_our_adapter_and_computes_our_logits() {
    let (cfg, weights) = load_hf_model(&base_dir()).unwrap();
    let ours = fixture_adapter(&cfg);
    // what PEFT loaded is exactly what our code writes for this adapter
    let tmp = tempfile::tempdir().unwrap();
    ours.save(tmp.path(), BASE_NAME).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let a = std::fs::read(tmp.path().join(f)).unwrap();
        let b = std::fs::read(fixture_dir().join("adapter").join(f)).unwrap();
        assert!(
            a == b,
            "{f}: re-saved bytes differ from the fixture PEFT loaded"
        );
    }
    let loaded = LoraWeights::load(&fixture_dir().join("adapter"), &cfg).unwrap();
    assert_eq!(loaded, ours);

    let peft = expected("peft_logits");
    let base = expected("base_logits");
    assert_close(
        "base logits vs transformers",
        &logits(&cfg, &weights, None),
        &base,
        1e-4,
        1e-5,
    );
    let got = logits(&cfg, &weights, Some(&ours));
    assert_close("logits with adapter vs PEFT", &got, &peft, 1e-4, 1e-5);
    let effect = peft
        .iter()
        .zip(&base)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(effect > 1e-2, "the adapter must move the logits ({effect})");
}

#[test]
fn merged_model_equals_base_plus_adapter() {
    let (cfg, base_w) = load_hf_model(&base_dir()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let s = merge_model(&base_dir(), &fixture_dir().join("adapter"), &out).unwrap();
    assert_eq!(s.merged, cfg.num_layers * 7);
    let (mcfg, merged) = load_hf_model(&out).unwrap();
    assert_eq!(mcfg, cfg);
    let got = logits(&mcfg, &merged, None);
    assert_close(
        "merged logits vs PEFT",
        &got,
        &expected("peft_logits"),
        1e-4,
        1e-5,
    );
    assert_close(
        "merged logits vs transformers on our merged dir",
        &got,
        &expected("merged_logits"),
        1e-4,
        1e-5,
    );
    // untouched tensors are copied bit for bit; adapted ones moved
    for ((name, a), (_, b)) in hf_named_tensors(&base_w)
        .into_iter()
        .zip(hf_named_tensors(&merged))
    {
        let adapted = name.ends_with("_proj.weight");
        assert_eq!(a.data != b.data, adapted, "{name}");
    }
    // a mismatched adapter is refused, naming the shape
    let other = tmp.path().join("other");
    let (tcfg, _) = load_hf_model(&base_dir().with_file_name("llama_tied")).unwrap();
    fixture_adapter(&tcfg).save(&other, "x").unwrap();
    let err = merge_model(&base_dir(), &other, &tmp.path().join("bad"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora") || err.contains("shape"), "{err}");
}

/// A random adapter for SmolLM2 on q, k (the GGUF-permuted projections) and down.
fn smollm2_adapter(cfg: &ModelConfig) -> LoraWeights {
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::K, Target::Down],
        use_rslora: false,
    };
    let mut lw = LoraWeights::init(cfg, &lcfg, 3).unwrap();
    for p in lw.pairs_mut() {
        for (i, v) in p.b.data.iter_mut().enumerate() {
            *v = 0.05 * unif(&[3, p.layer as u64, p.target as u64, i as u64]);
        }
    }
    lw
}

#[test]
fn merged_gguf_base_keeps_weights_and_tokenizer() {
    let model = match gradients_engine::assets::smollm2_gguf() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let gguf = load_model(&model).unwrap();
    let lw = smollm2_adapter(&gguf.config);
    let adapter = tmp.path().join("adapter");
    lw.save(&adapter, "smollm2").unwrap();
    let out = tmp.path().join("merged");
    let s = merge_model(&model, &adapter, &out).unwrap();
    assert_eq!(
        s.tokenizer_files,
        vec!["tokenizer.json", "tokenizer_config.json"]
    );
    let hf = load_model(&out).unwrap();
    assert_eq!(hf.config, gguf.config);
    let (t1, t2) = (gguf.tokenizer.unwrap(), hf.tokenizer.unwrap());
    let text = "<|im_start|>user\nWhat is 2+2? Answer in 12 words.<|im_end|>\n";
    let ids = t1.encode(text).unwrap();
    assert_eq!(ids, t2.encode(text).unwrap());
    assert_eq!((t1.bos_id(), t1.eos_id()), (t2.bos_id(), t2.eos_id()));
    assert_eq!(t1.chat_template(), t2.chat_template());

    let be: CpuBackend = CpuBackend::new();
    let st = LoraState::upload(&be, &lw).unwrap();
    let mut with_adapter = Llama::new(be.clone(), &gguf.config, &gguf.weights).unwrap();
    let mut merged = Llama::new(be.clone(), &hf.config, &hf.weights).unwrap();
    let a = with_adapter.logits_last(&ids, Some(&st)).unwrap();
    let b = merged.logits_last(&ids, None).unwrap();
    let base = with_adapter.logits_last(&ids, None).unwrap();
    assert_close("merged gguf logits", &b, &a, 1e-3, 1e-3);
    let effect = a
        .iter()
        .zip(&base)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(effect > 1e-2, "the adapter must move the logits ({effect})");
}

#[test]
#[ignore = "run by tools/make_interop_fixtures.py to (re)write tests/fixtures/interop/adapter"]
fn write_fixture_adapter() {
    let (cfg, _) = load_hf_model(&base_dir()).unwrap();
    let dir = fixture_dir().join("adapter");
    fixture_adapter(&cfg).save(&dir, BASE_NAME).unwrap();
    if let Ok(work) = std::env::var("GRADIENTS_INTEROP_DIR") {
        merge_model(&base_dir(), &dir, &Path::new(&work).join("merged")).unwrap();
    }
    println!("wrote {}", dir.display());
}

#[test]
#[ignore = "run by tools/make_interop_fixtures.py --gguf (needs the real assets)"]
fn write_gguf_adapter() {
    let model = gradients_engine::assets::smollm2_gguf().unwrap();
    let work = std::env::var("GRADIENTS_INTEROP_DIR").expect("GRADIENTS_INTEROP_DIR");
    let gguf = load_model(&model).unwrap();
    let dir = Path::new(&work).join("smollm2_adapter");
    smollm2_adapter(&gguf.config).save(&dir, "smollm2").unwrap();
    println!("wrote {}", dir.display());
}
