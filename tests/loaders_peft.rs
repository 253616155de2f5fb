//! PEFT adapter directories (lora/peft.rs): round trips, a config as PEFT 0.21 writes it,
//! key names, and every rejection named by file and key or field.

mod loaders_util;

use std::collections::BTreeMap;
use std::path::Path;

use gradients_engine::lora::peft::{
    lora_shape, parse_adapter_config, parse_peft_key, peft_key, read_peft_adapter,
    write_peft_adapter, LoraFactor, PeftAdapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use gradients_engine::lora::{LoraConfig, Target};
use gradients_engine::model::st::write_safetensors;
use gradients_engine::model::{Arch, ModelConfig};
use gradients_engine::{ErrorKind, Tensor};
use loaders_util::{assert_mentions, tiny_cfg, Rng};
use serde_json::{json, Value};

/// adapter_config.json exactly as PEFT 0.21.2 saved it for a tiny Llama.
const PEFT_WRITTEN: &str = r#"{
  "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
  "auto_mapping": null, "base_model_name_or_path": null, "bias": "none",
  "corda_config": null, "ensure_weight_tying": false, "eva_config": null,
  "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
  "init_lora_weights": true, "kasa_config": null, "layer_replication": null,
  "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8,
  "lora_bias": false, "lora_dropout": 0.0, "lora_ga_config": null, "megatron_config": null,
  "megatron_core": "megatron.core", "modules_to_save": null, "monteclora_config": null,
  "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 4,
  "rank_pattern": {}, "revision": null, "target_modules": ["q_proj", "down_proj", "v_proj"],
  "target_parameters": null, "task_type": "CAUSAL_LM", "trainable_token_indices": null,
  "use_bdlora": null, "use_dora": false, "use_qalora": false, "use_rslora": false,
  "velora_config": null
}"#;

fn random_adapter(model: &ModelConfig, config: LoraConfig, seed: u64) -> PeftAdapter {
    let mut r = Rng::new(seed);
    let mut tensors = BTreeMap::new();
    for layer in 0..model.num_layers {
        for &t in &config.targets {
            for f in [LoraFactor::A, LoraFactor::B] {
                tensors.insert(
                    (layer, t, f),
                    r.tensor(&lora_shape(model, config.rank, t, f)),
                );
            }
        }
    }
    PeftAdapter { config, tensors }
}

fn custom_config() -> LoraConfig {
    LoraConfig {
        rank: 3,
        alpha: 6.5,
        dropout: 0.05,
        targets: vec![Target::K, Target::O, Target::Up, Target::Down],
        use_rslora: true,
    }
}

#[test]
fn keys_and_shapes() {
    let k = peft_key(3, Target::Q, LoraFactor::A);
    assert_eq!(
        k,
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(parse_peft_key(&k), Some((3, Target::Q, LoraFactor::A)));
    for l in [0, 17] {
        for t in Target::ALL {
            for f in [LoraFactor::A, LoraFactor::B] {
                assert_eq!(parse_peft_key(&peft_key(l, t, f)), Some((l, t, f)));
            }
        }
    }
    for bad in [
        "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_C.weight",
        "base_model.model.model.layers.1.mlp.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight",
        "model.layers.1.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.+1.self_attn.q_proj.lora_A.weight",
    ] {
        assert_eq!(parse_peft_key(bad), None, "{bad}");
    }
    let m = tiny_cfg(Arch::Llama); // hidden 16, q 16, kv 8, intermediate 24
    assert_eq!(lora_shape(&m, 4, Target::K, LoraFactor::B), [8, 4]);
    assert_eq!(lora_shape(&m, 4, Target::O, LoraFactor::A), [4, 16]);
    assert_eq!(lora_shape(&m, 4, Target::Down, LoraFactor::A), [4, 24]);
    assert_eq!(lora_shape(&m, 4, Target::Gate, LoraFactor::B), [24, 4]);
}

#[test]
fn round_trip_default_and_custom_configs() {
    for (arch, config) in [
        (Arch::Llama, LoraConfig::default()),
        (Arch::Qwen2, custom_config()),
    ] {
        let model = tiny_cfg(arch);
        let a = random_adapter(&model, config, 9);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        write_peft_adapter(&out, &a, "HuggingFaceTB/SmolLM2-135M").unwrap();
        let b = read_peft_adapter(&out, &model).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn written_config_has_peft_fields() {
    let model = tiny_cfg(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    write_peft_adapter(
        dir.path(),
        &random_adapter(&model, custom_config(), 1),
        "base/m",
    )
    .unwrap();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(v["peft_type"], "LORA");
    assert_eq!(v["task_type"], "CAUSAL_LM");
    assert_eq!(v["base_model_name_or_path"], "base/m");
    assert_eq!(v["r"], 3);
    assert_eq!(v["lora_alpha"], 6.5);
    assert_eq!(v["lora_dropout"], 0.05, "f32 0.05 must be written as 0.05");
    assert_eq!(
        v["target_modules"],
        json!(["k_proj", "o_proj", "up_proj", "down_proj"])
    );
    assert_eq!(
        (v["use_rslora"].clone(), v["bias"].clone()),
        (json!(true), json!("none"))
    );
    assert_eq!(v["fan_in_fan_out"], false);
    let d = LoraConfig {
        targets: vec![Target::Q],
        ..LoraConfig::default()
    };
    write_peft_adapter(dir.path(), &random_adapter(&model, d, 1), "b").unwrap();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG)).unwrap())
            .unwrap();
    assert!(
        v["lora_alpha"].is_u64(),
        "integral alpha is written as an integer: {}",
        v["lora_alpha"]
    );
    // Only the files PEFT expects, no temporaries.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [ADAPTER_CONFIG, ADAPTER_WEIGHTS]);
}

#[test]
fn peft_written_config_parses() {
    let c = parse_adapter_config(PEFT_WRITTEN, "a/adapter_config.json").unwrap();
    assert_eq!(
        c,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::Down],
            use_rslora: false,
        }
    );
    let mut v: Value = serde_json::from_str(PEFT_WRITTEN).unwrap();
    v["target_modules"] = json!("all-linear");
    assert_eq!(
        parse_adapter_config(&v.to_string(), "a").unwrap().targets,
        Target::ALL.to_vec()
    );
    v["target_modules"] = Value::Null;
    assert_eq!(
        parse_adapter_config(&v.to_string(), "a").unwrap().targets,
        vec![Target::Q, Target::V]
    );
}

fn config_err(field: &str, value: Value) -> gradients_engine::Error {
    let mut v: Value = serde_json::from_str(PEFT_WRITTEN).unwrap();
    v[field] = value;
    parse_adapter_config(&v.to_string(), "a/adapter_config.json").unwrap_err()
}

#[test]
fn config_rejections_name_the_field() {
    let unsupported = [
        ("target_modules", json!(".*\\.(q|v)_proj")),
        ("target_modules", json!(["q_proj", "lm_head"])),
        ("peft_type", json!("IA3")),
        ("task_type", json!("SEQ_CLS")),
        ("bias", json!("all")),
        ("use_dora", json!(true)),
        ("fan_in_fan_out", json!(true)),
        ("rank_pattern", json!({"q_proj": 8})),
        ("alpha_pattern", json!({"q_proj": 8})),
        ("layers_to_transform", json!([0])),
        ("modules_to_save", json!(["lm_head"])),
    ];
    for (field, value) in unsupported {
        let e = config_err(field, value);
        assert!(matches!(e.kind(), ErrorKind::Unsupported(_)), "{e}");
        assert_mentions(&e, &["a/adapter_config.json", field]);
    }
    let invalid = [
        ("r", json!("8"), "integer"),
        ("r", json!(0), "at least 1"),
        ("lora_alpha", json!("16"), "number"),
        ("lora_alpha", json!(0), "positive"),
        ("lora_dropout", json!(1.0), "[0, 1)"),
        ("use_rslora", json!("yes"), "true or false"),
        ("target_modules", json!([]), "at least one"),
        ("target_modules", json!([3]), "module names"),
        ("peft_type", Value::Null, "missing"),
    ];
    for (field, value, what) in invalid {
        let e = config_err(field, value);
        assert!(matches!(e.kind(), ErrorKind::Config { .. }), "{e}");
        assert_mentions(&e, &["a/adapter_config.json", field, what]);
    }
    assert_mentions(&config_err("target_modules", json!(".*")), &["regex"]);
    let e = parse_adapter_config("[1]", "a/adapter_config.json").unwrap_err();
    assert_mentions(&e, &["a/adapter_config.json", "object"]);
}

/// Write a valid adapter, then replace its tensors file by `edit` of the named tensors.
fn adapter_with(
    model: &ModelConfig,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> tempfile::TempDir {
    let a = random_adapter(model, custom_config(), 4);
    let dir = tempfile::tempdir().unwrap();
    write_peft_adapter(dir.path(), &a, "m").unwrap();
    let mut named: Vec<(String, Tensor)> = a
        .tensors
        .iter()
        .map(|(&(l, t, f), x)| (peft_key(l, t, f), x.clone()))
        .collect();
    edit(&mut named);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&dir.path().join(ADAPTER_WEIGHTS), &refs, None).unwrap();
    dir
}

fn read_err(dir: &Path, model: &ModelConfig) -> gradients_engine::Error {
    read_peft_adapter(dir, model).unwrap_err()
}

#[test]
fn tensor_rejections_name_file_and_key() {
    let m = tiny_cfg(Arch::Llama);
    let key = peft_key(1, Target::O, LoraFactor::B);

    let dir = adapter_with(&m, |v| v.retain(|(n, _)| *n != key));
    let e = read_err(dir.path(), &m);
    assert!(matches!(e.kind(), ErrorKind::Tensor { .. }));
    assert_mentions(&e, &[ADAPTER_WEIGHTS, &key, "missing"]);

    let dir = adapter_with(&m, |v| {
        v.iter_mut().find(|(n, _)| *n == key).unwrap().1 = Tensor::zeros(vec![16, 4])
    });
    assert_mentions(
        &read_err(dir.path(), &m),
        &[ADAPTER_WEIGHTS, &key, "[16, 4]", "[16, 3]"],
    );

    let dir = adapter_with(&m, |v| {
        v.push((
            "base_model.model.lm_head.lora_A.weight".into(),
            Tensor::zeros(vec![3, 16]),
        ))
    });
    assert_mentions(
        &read_err(dir.path(), &m),
        &[
            ADAPTER_WEIGHTS,
            "base_model.model.lm_head.lora_A.weight",
            "unknown key",
        ],
    );

    let q = peft_key(0, Target::Q, LoraFactor::A);
    let dir = adapter_with(&m, |v| v.push((q.clone(), Tensor::zeros(vec![3, 16]))));
    assert_mentions(
        &read_err(dir.path(), &m),
        &[ADAPTER_WEIGHTS, &q, "target_modules"],
    );

    let far = peft_key(2, Target::K, LoraFactor::A);
    let dir = adapter_with(&m, |v| v.push((far.clone(), Tensor::zeros(vec![3, 16]))));
    assert_mentions(
        &read_err(dir.path(), &m),
        &[ADAPTER_WEIGHTS, &far, "layer 2"],
    );

    // An adapter for another model: a wider hidden size.
    let mut wide = m.clone();
    wide.hidden_size = 32;
    wide.head_dim = 8;
    let dir = adapter_with(&m, |_| {});
    assert_mentions(
        &read_err(dir.path(), &wide),
        &[ADAPTER_WEIGHTS, "does not match"],
    );
}

#[test]
fn file_level_rejections() {
    let m = tiny_cfg(Arch::Llama);
    let dir = adapter_with(&m, |_| {});
    std::fs::remove_file(dir.path().join(ADAPTER_CONFIG)).unwrap();
    let e = read_err(dir.path(), &m);
    assert!(matches!(e.kind(), ErrorKind::Io { .. }));
    assert_mentions(&e, &[ADAPTER_CONFIG]);

    let dir = adapter_with(&m, |_| {});
    std::fs::remove_file(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
    assert_mentions(&read_err(dir.path(), &m), &[ADAPTER_WEIGHTS]);
    std::fs::write(dir.path().join("adapter_model.bin"), b"pickle").unwrap();
    let e = read_err(dir.path(), &m);
    assert!(matches!(e.kind(), ErrorKind::Unsupported(_)));
    assert_mentions(&e, &["adapter_model.bin"]);

    let dir = adapter_with(&m, |_| {});
    let p = dir.path().join(ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
    assert_mentions(
        &read_err(dir.path(), &m),
        &[ADAPTER_WEIGHTS, "out of range"],
    );
}

#[test]
fn writer_refuses_inconsistent_adapters() {
    let m = tiny_cfg(Arch::Mistral);
    let dir = tempfile::tempdir().unwrap();
    let base = random_adapter(&m, custom_config(), 2);

    let mut a = base.clone();
    a.tensors.remove(&(0, Target::Up, LoraFactor::B));
    let e = write_peft_adapter(dir.path(), &a, "m").unwrap_err();
    assert_mentions(
        &e,
        &[
            ADAPTER_WEIGHTS,
            &peft_key(0, Target::Up, LoraFactor::B),
            "missing",
        ],
    );

    let mut a = base.clone();
    a.tensors
        .insert((1, Target::K, LoraFactor::A), Tensor::zeros(vec![4, 16]));
    let e = write_peft_adapter(dir.path(), &a, "m").unwrap_err();
    assert_mentions(&e, &[&peft_key(1, Target::K, LoraFactor::A), "rank 3"]);

    let mut a = base.clone();
    a.tensors
        .insert((0, Target::Q, LoraFactor::A), Tensor::zeros(vec![3, 16]));
    assert_mentions(
        &write_peft_adapter(dir.path(), &a, "m").unwrap_err(),
        &["q_proj", "target_modules"],
    );

    let mut a = base.clone();
    a.tensors.clear();
    assert_mentions(
        &write_peft_adapter(dir.path(), &a, "m").unwrap_err(),
        &["no tensors"],
    );

    let mut a = base;
    a.config.alpha = f32::NAN;
    assert_mentions(
        &write_peft_adapter(dir.path(), &a, "m").unwrap_err(),
        &["lora_alpha"],
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written on error"
    );
}
