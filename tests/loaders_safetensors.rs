//! Safetensors files (model/st.rs) and HF model directories (model/hf_model.rs): round trips,
//! half-precision decoding, sharded models, and every malformed input named by file and tensor.

mod loaders_util;

use std::collections::HashMap;
use std::path::Path;

use gradients_engine::model::hf_model::{
    hf_named_tensors, layer_tensor_name, load_hf_model, save_hf_model,
};
use gradients_engine::model::st::{write_safetensors, SafetensorsFile, TensorStore};
use gradients_engine::model::{Arch, ModelConfig, ModelWeights};
use gradients_engine::{ErrorKind, Tensor};
use loaders_util::{
    assert_mentions, random_weights, raw_safetensors, tiny_cfg, tiny_llama3_tied, Rng,
};
use serde_json::json;

fn assert_same_weights(a: &ModelWeights, b: &ModelWeights) {
    let (na, nb) = (hf_named_tensors(a), hf_named_tensors(b));
    assert_eq!(na.len(), nb.len());
    for ((n1, t1), (n2, t2)) in na.iter().zip(&nb) {
        assert_eq!(n1, n2);
        assert_eq!(t1, t2, "{n1}");
    }
}

#[test]
fn f32_round_trip_with_metadata_is_valid_for_the_reference_parser() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let mut r = Rng::new(7);
    let (a, b, c) = (r.tensor(&[3, 5]), r.tensor(&[7]), r.tensor(&[2, 3, 4]));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&p, &[("b.weight", &b), ("a", &a), ("c", &c)], Some(&meta)).unwrap();

    let f = SafetensorsFile::open(&p).unwrap();
    assert_eq!(f.names().collect::<Vec<_>>(), ["a", "b.weight", "c"]);
    assert_eq!(f.tensor("a").unwrap(), a);
    assert_eq!(f.tensor("b.weight").unwrap(), b);
    assert_eq!(f.tensor("c").unwrap(), c);
    assert_eq!(
        (f.shape("c"), f.dtype("c")),
        (Some(&[2, 3, 4][..]), Some("F32"))
    );
    assert_eq!(f.metadata(), Some(&meta));

    // The safetensors crate's strict parser (contiguous offsets, full coverage) accepts it.
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("b.weight").unwrap();
    assert_eq!(view.shape(), &[7]);
    let vals: Vec<f32> = view
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, b.data);
    assert!(u64::from_le_bytes(bytes[..8].try_into().unwrap()).is_multiple_of(8));
}

#[test]
fn writer_rejects_duplicates_and_bad_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.safetensors");
    let t = Tensor::zeros(vec![2]);
    let e = write_safetensors(&p, &[("x", &t), ("x", &t)], None).unwrap_err();
    assert_mentions(&e, &["d.safetensors", "`x`", "duplicate"]);
    let bad = Tensor {
        shape: vec![3],
        data: vec![1.0],
    };
    let e = write_safetensors(&p, &[("y", &bad)], None).unwrap_err();
    assert_mentions(&e, &["d.safetensors", "`y`"]);
    assert!(!p.exists());
}

#[test]
fn half_precision_decodes_and_other_dtypes_are_refused_by_name() {
    use safetensors::tensor::{Dtype, TensorView};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.safetensors");
    let vals = [0.5f32, -2.0, 3.25, 1024.0];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let i64b: Vec<u8> = [5i64, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("h", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
        ("ids", TensorView::new(Dtype::I64, vec![2], &i64b).unwrap()),
    ];
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    let f = SafetensorsFile::open(&p).unwrap();
    assert_eq!(
        f.tensor("h").unwrap(),
        Tensor::new(vec![2, 2], vals.to_vec()).unwrap()
    );
    assert_eq!(f.tensor("b").unwrap().data, vals.to_vec());
    let e = f.tensor("ids").unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tensor { .. }));
    assert_mentions(&e, &["h.safetensors", "`ids`", "I64"]);
    assert_mentions(
        &f.tensor("zz").unwrap_err(),
        &["h.safetensors", "`zz`", "not found"],
    );
}

/// Write `bytes` to a fresh file and return the open error.
fn open_err(dir: &Path, name: &str, bytes: &[u8]) -> gradients_engine::Error {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    SafetensorsFile::open(&p).unwrap_err()
}

#[test]
fn malformed_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = open_err(d, "empty.safetensors", b"");
    assert!(matches!(e.kind(), ErrorKind::Format { .. }));
    assert_mentions(&e, &["empty.safetensors", "too short"]);
    assert_mentions(
        &open_err(d, "short.safetensors", b"\x05\0\0"),
        &["short.safetensors"],
    );

    let mut big = 1000u64.to_le_bytes().to_vec();
    big.extend_from_slice(b"{}");
    assert_mentions(
        &open_err(d, "len.safetensors", &big),
        &["len.safetensors", "header length 1000", "past the end"],
    );

    let e = open_err(d, "json.safetensors", &raw_safetensors("{\"a\": [", &[]));
    assert_mentions(&e, &["json.safetensors", "invalid json header"]);
    let mut utf = 1u64.to_le_bytes().to_vec();
    utf.push(0xff);
    let e = open_err(d, "utf.safetensors", &utf);
    assert_mentions(&e, &["utf.safetensors", "utf-8"]);

    let hdr = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let e = open_err(d, "trunc.safetensors", &raw_safetensors(hdr, &[0u8; 12]));
    assert!(matches!(e.kind(), ErrorKind::Tensor { .. }));
    assert_mentions(
        &e,
        &["trunc.safetensors", "`w`", "out of range", "12 bytes"],
    );

    let hdr = r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#;
    let e = open_err(d, "size.safetensors", &raw_safetensors(hdr, &[0u8; 16]));
    assert_mentions(&e, &["size.safetensors", "`w`", "[2, 3]", "24 bytes", "16"]);

    let hdr = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#;
    let e = open_err(d, "order.safetensors", &raw_safetensors(hdr, &[0u8; 8]));
    assert_mentions(&e, &["order.safetensors", "`w`", "[8, 4]"]);

    let hdr = r#"{"w":{"dtype":"F32","data_offsets":[0,4]}}"#;
    let e = open_err(d, "entry.safetensors", &raw_safetensors(hdr, &[0u8; 4]));
    assert_mentions(&e, &["entry.safetensors", "`w`", "shape"]);
    let hdr = r#"{"__metadata__":{"format":1}}"#;
    assert_mentions(
        &open_err(d, "meta.safetensors", &raw_safetensors(hdr, &[])),
        &["meta.safetensors", "__metadata__"],
    );
    let e = SafetensorsFile::open(&d.join("absent.safetensors")).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Io { .. }));
    assert_mentions(&e, &["absent.safetensors"]);
}

#[test]
fn model_round_trips_for_every_arch() {
    let cfgs = [
        tiny_cfg(Arch::Llama),
        tiny_cfg(Arch::Mistral),
        tiny_cfg(Arch::Qwen2),
        tiny_llama3_tied(),
    ];
    for (seed, cfg) in cfgs.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let w = random_weights(cfg, seed as u64);
        save_hf_model(dir.path(), cfg, &w).unwrap();
        let (cfg2, w2) = load_hf_model(dir.path()).unwrap();
        assert_eq!(&cfg2, cfg);
        assert_same_weights(&w, &w2);
        assert_eq!(w2.layers[1].bq.is_some(), cfg.arch == Arch::Qwen2);
        assert_eq!(w2.lm_head.is_some(), !cfg.tie_word_embeddings);
    }
}

/// Save a model, then rewrite its safetensors file through `edit` on the tensor list.
fn model_with(
    cfg: &ModelConfig,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let w = random_weights(cfg, 3);
    save_hf_model(dir.path(), cfg, &w).unwrap();
    let mut named: Vec<(String, Tensor)> = hf_named_tensors(&w)
        .into_iter()
        .map(|(n, t)| (n, t.into_owned()))
        .collect();
    edit(&mut named);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&dir.path().join("model.safetensors"), &refs, None).unwrap();
    dir
}

#[test]
fn tied_model_ignores_a_present_lm_head_and_extra_buffers() {
    let cfg = tiny_llama3_tied();
    let dir = model_with(&cfg, |v| {
        v.push(("lm_head.weight".into(), Tensor::zeros(vec![40, 16])));
        v.push((
            layer_tensor_name(0, "self_attn.rotary_emb.inv_freq"),
            Tensor::zeros(vec![2]),
        ));
    });
    let (_, w) = load_hf_model(dir.path()).unwrap();
    assert!(w.lm_head.is_none());
}

#[test]
fn missing_wrong_shaped_and_extra_tensors_are_named() {
    let cfg = tiny_cfg(Arch::Qwen2);
    let dir = model_with(&cfg, |v| {
        v.retain(|(n, _)| n != "model.layers.1.self_attn.k_proj.bias")
    });
    let e = load_hf_model(dir.path()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Tensor { .. }));
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "model.layers.1.self_attn.k_proj.bias",
            "missing",
        ],
    );

    let cfg = tiny_cfg(Arch::Llama);
    let dir = model_with(&cfg, |v| v.retain(|(n, _)| n != "lm_head.weight"));
    assert_mentions(
        &load_hf_model(dir.path()).unwrap_err(),
        &["model.safetensors", "lm_head.weight", "missing"],
    );

    let dir = model_with(&cfg, |v| {
        let t = v
            .iter_mut()
            .find(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight")
            .unwrap();
        t.1 = Tensor::zeros(vec![16, 16]);
    });
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.k_proj.weight",
            "[16, 16]",
            "[8, 16]",
        ],
    );

    let dir = model_with(&cfg, |v| {
        v.push((
            layer_tensor_name(2, "input_layernorm.weight"),
            Tensor::zeros(vec![16]),
        ))
    });
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &[
            "model.layers.2.input_layernorm.weight",
            "layer 2",
            "2 layers",
        ],
    );
}

#[test]
fn config_and_weights_must_agree() {
    // Weights of a 2-kv-head model under a config claiming 4 kv heads.
    let cfg = tiny_cfg(Arch::Mistral);
    let dir = tempfile::tempdir().unwrap();
    save_hf_model(dir.path(), &cfg, &random_weights(&cfg, 1)).unwrap();
    let cfg_path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["num_key_value_heads"] = json!(4);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &["model.safetensors", "k_proj.weight", "[8, 16]", "[16, 16]"],
    );
    // And the config's own errors come first, naming config.json.
    v["model_type"] = json!("falcon");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_mentions(
        &load_hf_model(dir.path()).unwrap_err(),
        &["config.json", "model_type", "falcon"],
    );
}

#[test]
fn directory_without_weights_is_a_clear_error() {
    let cfg = tiny_cfg(Arch::Llama);
    let dir = tempfile::tempdir().unwrap();
    save_hf_model(dir.path(), &cfg, &random_weights(&cfg, 1)).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &[
            "model.safetensors.index.json",
            &dir.path().display().to_string(),
        ],
    );
    std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
    assert_mentions(
        &load_hf_model(dir.path()).unwrap_err(),
        &["pytorch_model.bin"],
    );
}

/// Write `w` as two shards plus an index; returns the dir.
fn sharded(cfg: &ModelConfig, w: &ModelWeights) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    save_hf_model(dir.path(), cfg, w).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let named = hf_named_tensors(w);
    let (first, second) = named.split_at(named.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let refs: Vec<(&str, &Tensor)> = part.iter().map(|(n, t)| (n.as_str(), &**t)).collect();
        write_safetensors(&dir.path().join(file), &refs, None).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    dir
}

#[test]
fn sharded_model_loads_like_a_single_file() {
    let cfg = tiny_cfg(Arch::Qwen2);
    let w = random_weights(&cfg, 11);
    let dir = sharded(&cfg, &w);
    let (cfg2, w2) = load_hf_model(dir.path()).unwrap();
    assert_eq!(cfg2, cfg);
    assert_same_weights(&w, &w2);
    let store = TensorStore::open_dir(dir.path()).unwrap();
    assert!(store
        .file_of("model.embed_tokens.weight")
        .ends_with("model-00001-of-00002.safetensors"));
    assert!(store
        .file_of("lm_head.weight")
        .ends_with("model-00002-of-00002.safetensors"));
}

#[test]
fn broken_shard_sets_are_named() {
    let cfg = tiny_cfg(Arch::Llama);
    let w = random_weights(&cfg, 12);
    let dir = sharded(&cfg, &w);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &[
            "model.safetensors.index.json",
            "model-00002-of-00002.safetensors",
            "missing",
        ],
    );

    let dir = sharded(&cfg, &w);
    let idx = dir.path().join("model.safetensors.index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&idx).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(&idx, v.to_string()).unwrap();
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(
        &e,
        &[
            "model-00001-of-00002.safetensors",
            "model.norm.weight",
            "absent",
        ],
    );

    v["weight_map"]["model.norm.weight"] = json!("../model-00002-of-00002.safetensors");
    std::fs::write(&idx, v.to_string()).unwrap();
    assert_mentions(
        &load_hf_model(dir.path()).unwrap_err(),
        &["index.json", "plain file name"],
    );

    std::fs::write(&idx, "{\"metadata\": {}}").unwrap();
    assert_mentions(
        &load_hf_model(dir.path()).unwrap_err(),
        &["index.json", "weight_map"],
    );

    // A shard that is truncated is named, with its tensor.
    let dir = sharded(&cfg, &w);
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_hf_model(dir.path()).unwrap_err();
    assert_mentions(&e, &["model-00001-of-00002.safetensors", "out of range"]);
}

#[test]
fn bf16_checkpoint_decodes_to_f32() {
    use safetensors::tensor::{Dtype, TensorView};
    let cfg = tiny_llama3_tied();
    let w = random_weights(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    save_hf_model(dir.path(), &cfg, &w).unwrap();
    let named = hf_named_tensors(&w);
    let bytes: Vec<Vec<u8>> = named
        .iter()
        .map(|(_, t)| {
            t.data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(&str, TensorView)> = named
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::BF16, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let (_, w2) = load_hf_model(dir.path()).unwrap();
    let got = w2.layers[1].w_down.to_tensor().data;
    let want: Vec<f32> = w.layers[1]
        .w_down
        .to_tensor()
        .data
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(got, want);
    assert_ne!(
        got,
        w.layers[1].w_down.to_tensor().data,
        "bf16 rounding should be visible"
    );
}
