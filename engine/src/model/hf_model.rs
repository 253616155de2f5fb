//! HF model directories (`config.json` + safetensors) ↔ [`ModelConfig`] and [`ModelWeights`].
//!
//! [`load_hf_model`] reads the config (`hf_config.rs`), opens the tensors (`st.rs`, one file
//! or shards) and maps HF's names onto `ModelWeights`, checking every shape against the
//! config before decoding it. [`save_hf_model`] writes the same layout back (f32, one file),
//! for merged models and for tests. Tensors the model does not use are ignored (e.g. old
//! checkpoints' `rotary_emb.inv_freq`), except layers beyond `num_hidden_layers`, which mean
//! the config and the weights disagree. A present `lm_head.weight` is ignored when the
//! embeddings are tied, as transformers does.

use std::borrow::Cow;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::config::{Arch, ModelConfig};
use crate::model::hf_config::{hf_config_json, load_hf_config};
use crate::model::st::{write_safetensors, TensorStore, SINGLE_FILE};
use crate::model::{LayerWeights, ModelWeights};
use crate::tensor::Tensor;

/// Load an HF model directory: `config.json` plus `model.safetensors` or a sharded set.
pub fn load_hf_model(dir: &Path) -> Result<(ModelConfig, ModelWeights)> {
    let cfg = load_hf_config(&dir.join("config.json"))?;
    let store = TensorStore::open_dir(dir)?;
    let weights = load_weights(&store, &cfg)?;
    Ok((cfg, weights))
}

/// The HF tensor name of a decoder-layer parameter (`sub` like `"self_attn.q_proj.weight"`).
pub fn layer_tensor_name(layer: usize, sub: &str) -> String {
    format!("model.layers.{layer}.{sub}")
}

/// Decode `name` after checking its shape is `want`; errors name the file, tensor and shapes.
fn take(store: &TensorStore, name: &str, want: &[usize]) -> Result<Tensor> {
    match store.shape(name) {
        None => Err(Error::tensor(
            store.source(),
            name,
            "missing from the checkpoint",
        )),
        Some(got) if got != want => Err(Error::tensor(
            store.file_of(name),
            name,
            format!("shape {got:?} does not match {want:?} expected from config.json"),
        )),
        Some(_) => store.tensor(name),
    }
}

/// Map the tensors of `store` onto `ModelWeights` for `cfg`, checking every shape.
pub fn load_weights(store: &TensorStore, cfg: &ModelConfig) -> Result<ModelWeights> {
    for name in store.names() {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let idx = rest.split('.').next().and_then(|s| s.parse::<usize>().ok());
            if let Some(i) = idx.filter(|&i| i >= cfg.num_layers) {
                return Err(Error::tensor(
                    store.file_of(name),
                    name,
                    format!(
                        "belongs to layer {i} but config.json has {} layers",
                        cfg.num_layers
                    ),
                ));
            }
        }
    }
    let (h, v, inter) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
    let embed = take(store, "model.embed_tokens.weight", &[v, h])?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let t = |sub: &str, want: &[usize]| take(store, &layer_tensor_name(i, sub), want);
        let bias = |sub: &str, n: usize| -> Result<Option<Tensor>> {
            if cfg.attention_bias {
                t(sub, &[n]).map(Some)
            } else {
                Ok(None)
            }
        };
        layers.push(LayerWeights {
            attn_norm: t("input_layernorm.weight", &[h])?,
            wq: t("self_attn.q_proj.weight", &[q, h])?.into(),
            wk: t("self_attn.k_proj.weight", &[kv, h])?.into(),
            wv: t("self_attn.v_proj.weight", &[kv, h])?.into(),
            wo: t("self_attn.o_proj.weight", &[h, q])?.into(),
            bq: bias("self_attn.q_proj.bias", q)?,
            bk: bias("self_attn.k_proj.bias", kv)?,
            bv: bias("self_attn.v_proj.bias", kv)?,
            mlp_norm: t("post_attention_layernorm.weight", &[h])?,
            w_gate: t("mlp.gate_proj.weight", &[inter, h])?.into(),
            w_up: t("mlp.up_proj.weight", &[inter, h])?.into(),
            w_down: t("mlp.down_proj.weight", &[h, inter])?.into(),
        });
    }
    let final_norm = take(store, "model.norm.weight", &[h])?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(take(store, "lm_head.weight", &[v, h])?)
    };
    Ok(ModelWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// Every tensor of `w` under its HF name, in model order (packed Linear weights widened to
/// f32, dense ones borrowed).
pub fn hf_named_tensors(w: &ModelWeights) -> Vec<(String, Cow<'_, Tensor>)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        Cow::Borrowed(&w.embed),
    )];
    for (i, l) in w.layers.iter().enumerate() {
        let n = |sub: &str| layer_tensor_name(i, sub);
        out.push((n("input_layernorm.weight"), Cow::Borrowed(&l.attn_norm)));
        out.push((n("self_attn.q_proj.weight"), l.wq.dense()));
        out.push((n("self_attn.k_proj.weight"), l.wk.dense()));
        out.push((n("self_attn.v_proj.weight"), l.wv.dense()));
        out.push((n("self_attn.o_proj.weight"), l.wo.dense()));
        for (sub, b) in [
            ("self_attn.q_proj.bias", &l.bq),
            ("self_attn.k_proj.bias", &l.bk),
            ("self_attn.v_proj.bias", &l.bv),
        ] {
            if let Some(b) = b {
                out.push((n(sub), Cow::Borrowed(b)));
            }
        }
        out.push((
            n("post_attention_layernorm.weight"),
            Cow::Borrowed(&l.mlp_norm),
        ));
        out.push((n("mlp.gate_proj.weight"), l.w_gate.dense()));
        out.push((n("mlp.up_proj.weight"), l.w_up.dense()));
        out.push((n("mlp.down_proj.weight"), l.w_down.dense()));
    }
    out.push((
        "model.norm.weight".to_string(),
        Cow::Borrowed(&w.final_norm),
    ));
    if let Some(head) = &w.lm_head {
        out.push(("lm_head.weight".to_string(), Cow::Borrowed(head)));
    }
    out
}

/// Write `cfg` and `w` as an HF model directory (`config.json`, `model.safetensors` in f32),
/// each file atomically. `dir` must exist. The weights' presence of `lm_head` and of biases
/// must agree with `cfg`.
pub fn save_hf_model(dir: &Path, cfg: &ModelConfig, w: &ModelWeights) -> Result<()> {
    let st_path = dir.join(SINGLE_FILE);
    if w.lm_head.is_some() == cfg.tie_word_embeddings {
        return Err(Error::tensor(
            &st_path,
            "lm_head.weight",
            format!(
                "present = {} but tie_word_embeddings = {}",
                w.lm_head.is_some(),
                cfg.tie_word_embeddings
            ),
        ));
    }
    if cfg.attention_bias != (cfg.arch == Arch::Qwen2) {
        return Err(Error::unsupported(
            "attention biases are only written for qwen2 models",
        ));
    }
    for (i, l) in w.layers.iter().enumerate() {
        if [&l.bq, &l.bk, &l.bv]
            .iter()
            .any(|b| b.is_some() != cfg.attention_bias)
        {
            return Err(Error::tensor(
                &st_path,
                layer_tensor_name(i, "self_attn.q_proj.bias"),
                format!(
                    "q/k/v biases must be present exactly when attention_bias = {}",
                    cfg.attention_bias
                ),
            ));
        }
    }
    let named = hf_named_tensors(w);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), &**t)).collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&st_path, &refs, Some(&meta))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config_json(cfg))
        .map_err(|e| Error::format(&config_path, format!("cannot encode: {e}")))?;
    write_atomic(&config_path, text.as_bytes())
}
