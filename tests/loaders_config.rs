//! HF `config.json` parsing (model/hf_config.rs): real configs of each supported
//! architecture, both transformers dialects, defaults, round trips and every rejection.

mod loaders_util;

use gradients_engine::model::hf_config::{hf_config_json, load_hf_config, parse_hf_config};
use gradients_engine::model::{Arch, RopeScaling};
use gradients_engine::ErrorKind;
use loaders_util::{assert_mentions, tiny_cfg, tiny_llama3_tied};
use serde_json::{json, Value};

const SMOLLM2_135M: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 576, "initializer_range": 0.041666666666666664, "intermediate_size": 1536,
  "is_llama_config": true, "max_position_embeddings": 8192, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
  "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "use_cache": true, "vocab_size": 49152
}"#;

const LLAMA32_1B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "use_cache": true, "vocab_size": 128256
}"#;

const QWEN25_05B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
}"#;

const MISTRAL_7B: &str = r#"{
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 32000
}"#;

/// As transformers 5.24 writes a llama3-scaled LlamaConfig (`rope_parameters`).
const LLAMA_V5: &str = r#"{
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
  "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 11008, "max_position_embeddings": 2048, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
  "num_key_value_heads": 32, "pad_token_id": null, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
  "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192, "rope_theta": 250000.0, "rope_type": "llama3"},
  "tie_word_embeddings": false, "transformers_version": "5.24.0", "use_cache": true,
  "vocab_size": 32000
}"#;

#[test]
fn smollm2_config() {
    let c = parse_hf_config(SMOLLM2_135M, "smol/config.json").unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers
        ),
        (49152, 576, 1536, 30)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 100000.0));
    assert!(c.tie_word_embeddings && !c.attention_bias && c.rope_scaling.is_none());
    assert_eq!(c.max_position_embeddings, 8192);
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
}

#[test]
fn llama32_config_with_llama3_rope_and_eos_list() {
    let c = parse_hf_config(LLAMA32_1B, "l/config.json").unwrap();
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 64));
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    assert_eq!(
        (c.bos_token_id, c.eos_token_id),
        (Some(128000), Some(128001))
    );
}

#[test]
fn qwen2_config_has_qkv_bias() {
    let c = parse_hf_config(QWEN25_05B, "q/config.json").unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert!(c.attention_bias && c.tie_word_embeddings);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (14, 2, 64));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (1e6, 1e-6));
    assert_eq!(c.eos_token_id, Some(151645));
}

#[test]
fn mistral_config() {
    let c = parse_hf_config(MISTRAL_7B, "m/config.json").unwrap();
    assert_eq!(c.arch, Arch::Mistral);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!(c.max_position_embeddings, 32768);
}

#[test]
fn transformers_v5_rope_parameters() {
    let c = parse_hf_config(LLAMA_V5, "v5/config.json").unwrap();
    assert_eq!(c.rope_theta, 250000.0);
    let r = c.rope_scaling.unwrap();
    assert_eq!((r.factor, r.original_max_position_embeddings), (8.0, 8192));
    // The v5 default rope type means no scaling.
    let mut v: Value = serde_json::from_str(LLAMA_V5).unwrap();
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1234.0});
    let c = parse_hf_config(&v.to_string(), "v5").unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (1234.0, None));
}

#[test]
fn defaults_follow_hf() {
    let minimal = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4});
    let c = parse_hf_config(&minimal.to_string(), "min").unwrap();
    assert_eq!((c.num_kv_heads, c.head_dim), (4, 8));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (10000.0, 1e-6));
    assert!(!c.tie_word_embeddings && c.rope_scaling.is_none());
    assert_eq!(c.max_position_embeddings, 2048);
    assert_eq!((c.bos_token_id, c.eos_token_id), (None, None));
    // null means absent, as in HF.
    let mut v = minimal.clone();
    v["num_key_value_heads"] = Value::Null;
    v["head_dim"] = Value::Null;
    let c = parse_hf_config(&v.to_string(), "min").unwrap();
    assert_eq!((c.num_kv_heads, c.head_dim), (4, 8));
    let mut v = minimal;
    v["model_type"] = json!("qwen2");
    assert_eq!(
        parse_hf_config(&v.to_string(), "q")
            .unwrap()
            .max_position_embeddings,
        32768
    );
}

#[test]
fn writer_round_trips_every_arch() {
    let mut cfgs = vec![tiny_llama3_tied()];
    for arch in [Arch::Llama, Arch::Mistral, Arch::Qwen2] {
        cfgs.push(tiny_cfg(arch));
    }
    cfgs[1].rms_norm_eps = 1e-6;
    cfgs[2].eos_token_id = None;
    for cfg in cfgs {
        let text = hf_config_json(&cfg).to_string();
        assert_eq!(parse_hf_config(&text, "rt").unwrap(), cfg, "{text}");
    }
}

#[test]
fn load_from_file_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, QWEN25_05B).unwrap();
    assert_eq!(load_hf_config(&p).unwrap().arch, Arch::Qwen2);
    let missing = dir.path().join("nope/config.json");
    let e = load_hf_config(&missing).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Io { .. }));
    assert_mentions(&e, &["nope/config.json"]);
    std::fs::write(&p, "{\"model_type\": \"llama\",").unwrap();
    let e = load_hf_config(&p).unwrap_err();
    assert_mentions(&e, &[&p.display().to_string(), "invalid json"]);
}

/// Parse SMOLLM2 with one field replaced (or removed with `Value::Null` where noted).
fn with(
    field: &str,
    value: Value,
) -> gradients_engine::Result<gradients_engine::model::ModelConfig> {
    let mut v: Value = serde_json::from_str(SMOLLM2_135M).unwrap();
    v[field] = value;
    parse_hf_config(&v.to_string(), "smol/config.json")
}

fn without(field: &str) -> gradients_engine::Error {
    let mut v: Value = serde_json::from_str(SMOLLM2_135M).unwrap();
    v.as_object_mut().unwrap().remove(field);
    parse_hf_config(&v.to_string(), "smol/config.json").unwrap_err()
}

#[test]
fn unknown_model_type_names_file_and_field() {
    let e = with("model_type", json!("gpt2")).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Config { .. }));
    assert_mentions(&e, &["smol/config.json", "model_type", "gpt2"]);
    assert_mentions(
        &without("model_type"),
        &["smol/config.json", "model_type", "missing"],
    );
}

#[test]
fn missing_and_mistyped_fields_name_file_and_field() {
    for field in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    ] {
        let e = without(field);
        assert!(matches!(e.kind(), ErrorKind::Config { .. }), "{e}");
        assert_mentions(&e, &["smol/config.json", field, "missing"]);
        let e = with(field, json!("576")).unwrap_err();
        assert_mentions(&e, &["smol/config.json", field, "integer"]);
    }
    let cases = [
        ("rms_norm_eps", json!("1e-5"), "number"),
        ("rope_theta", json!([1]), "number"),
        ("tie_word_embeddings", json!(1), "true or false"),
        ("num_key_value_heads", json!(-3), "integer"),
        ("head_dim", json!(64.5), "integer"),
        ("eos_token_id", json!("</s>"), "token id"),
        ("bos_token_id", json!(["<s>"]), "token id"),
        ("rope_scaling", json!("llama3"), "object"),
    ];
    for (field, value, what) in cases {
        let e = with(field, value).unwrap_err();
        assert_mentions(&e, &["smol/config.json", field, what]);
    }
}

#[test]
fn invalid_values_fail_validation() {
    let e = with("num_key_value_heads", json!(4)).unwrap_err();
    assert_mentions(&e, &["smol/config.json", "num_key_value_heads", "multiple"]);
    let e = with("num_attention_heads", json!(0)).unwrap_err();
    assert_mentions(&e, &["num_attention_heads", "positive"]);
    let e = with("rms_norm_eps", json!(0.0)).unwrap_err();
    assert_mentions(&e, &["rms_norm_eps"]);
    let mut v: Value = serde_json::from_str(SMOLLM2_135M).unwrap();
    v.as_object_mut().unwrap().remove("head_dim");
    v["hidden_size"] = json!(577);
    let e = parse_hf_config(&v.to_string(), "smol/config.json").unwrap_err();
    assert_mentions(&e, &["hidden_size", "577", "head_dim"]);
}

#[test]
fn unsupported_features_name_the_field() {
    let e = with("rope_scaling", json!({"type": "linear", "factor": 2.0})).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Unsupported(_)));
    assert_mentions(&e, &["smol/config.json", "rope_scaling.type", "linear"]);
    let e = with("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})).unwrap_err();
    assert_mentions(&e, &["rope_scaling.rope_type", "yarn"]);
    let mut v: Value = serde_json::from_str(LLAMA_V5).unwrap();
    v["rope_parameters"]["rope_type"] = json!("dynamic");
    let e = parse_hf_config(&v.to_string(), "v5/config.json").unwrap_err();
    assert_mentions(
        &e,
        &["v5/config.json", "rope_parameters.rope_type", "dynamic"],
    );
    for (field, value) in [
        ("attention_bias", json!(true)),
        ("mlp_bias", json!(true)),
        ("hidden_act", json!("gelu")),
    ] {
        let e = with(field, value).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Unsupported(_)), "{e}");
        assert_mentions(&e, &["smol/config.json", field]);
    }
}

#[test]
fn llama3_scaling_fields_are_checked() {
    let full = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    assert!(with("rope_scaling", full.clone())
        .unwrap()
        .rope_scaling
        .is_some());
    for field in [
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    ] {
        let mut r = full.clone();
        r.as_object_mut().unwrap().remove(field);
        let e = with("rope_scaling", r).unwrap_err();
        assert_mentions(&e, &["smol/config.json", &format!("rope_scaling.{field}")]);
        let mut r = full.clone();
        r[field] = json!("x");
        let e = with("rope_scaling", r).unwrap_err();
        assert_mentions(&e, &[&format!("rope_scaling.{field}")]);
    }
    let mut r = full;
    r["factor"] = json!(-1.0);
    assert_mentions(
        &with("rope_scaling", r).unwrap_err(),
        &["rope_scaling.factor", "positive"],
    );
}
