//! Hugging Face `config.json` → [`ModelConfig`] for the Llama family (llama incl. SmolLM,
//! mistral, qwen2).
//!
//! Its neighbours: `config.rs` defines the target type, `st.rs` loads the weights that go
//! with it (`load_hf_model` calls [`load_hf_config`]). Both config dialects are read: the
//! transformers 4 one (`rope_theta`, `rope_scaling`) and the transformers 5 one
//! (`rope_parameters` holding `rope_theta` and `rope_type`).
//!
//! Decisions worth knowing:
//! - defaults follow the HF config classes: `num_key_value_heads` = `num_attention_heads`,
//!   `head_dim` = `hidden_size / num_attention_heads`, `rope_theta` 10000, `rms_norm_eps`
//!   1e-6, `tie_word_embeddings` false, `max_position_embeddings` 2048 (llama),
//!   131072 (mistral), 32768 (qwen2);
//! - qwen2 always has q/k/v biases; llama/mistral with `attention_bias: true` are rejected
//!   because HF then also puts a bias on `o_proj`, which the model does not implement;
//!   `mlp_bias: true` and a `hidden_act` other than silu are rejected too;
//! - sliding-window attention (mistral `sliding_window`, qwen2 `use_sliding_window`) is
//!   ignored, as for the sequence lengths we train it never engages;
//! - `eos_token_id` may be a list: the first entry is taken.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig, RopeScaling};

/// Read and parse `path` (a `config.json`), then validate it.
pub fn load_hf_config(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_hf_config(&text, &path.display().to_string())
}

/// Parse the text of a `config.json`; `source` names it in errors. Validates the result.
pub fn parse_hf_config(text: &str, source: &str) -> Result<ModelConfig> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(source, "<root>", format!("invalid json: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Error::config(source, "<root>", "expected a json object"));
    };
    let f = Fields { obj: &obj, source };

    let model_type = f.req_str("model_type")?;
    let arch = match model_type {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(Error::config(
                source,
                "model_type",
                format!("unsupported model type `{other}` (expected llama, mistral or qwen2)"),
            ))
        }
    };

    if let Some(act) = f.opt_str("hidden_act")? {
        if act != "silu" {
            return Err(unsupported(source, "hidden_act", &format!("`{act}`")));
        }
    }
    if f.opt_bool("mlp_bias")? == Some(true) {
        return Err(unsupported(source, "mlp_bias", "true"));
    }
    let attention_bias = match arch {
        Arch::Qwen2 => true,
        Arch::Llama | Arch::Mistral => {
            if f.opt_bool("attention_bias")? == Some(true) {
                return Err(unsupported(
                    source,
                    "attention_bias",
                    "true (it adds an o_proj bias the model does not implement)",
                ));
            }
            false
        }
    };

    let hidden_size = f.req_usize("hidden_size")?;
    let num_heads = f.req_usize("num_attention_heads")?;
    if num_heads == 0 {
        return Err(Error::config(
            source,
            "num_attention_heads",
            "must be positive",
        ));
    }
    let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match f.opt_usize("head_dim")? {
        Some(d) => d,
        None => {
            if !hidden_size.is_multiple_of(num_heads) {
                return Err(Error::config(
                    source,
                    "hidden_size",
                    format!(
                        "{hidden_size} is not a multiple of {num_heads} heads and `head_dim` is not set"
                    ),
                ));
            }
            hidden_size / num_heads
        }
    };

    // transformers 5 moves rope_theta and the scaling into `rope_parameters`.
    let rope_params = match obj.get("rope_parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(v) => return Err(wrong_type(source, "rope_parameters", "an object", v)),
    };
    let rope_theta = match f.opt_f64("rope_theta")? {
        Some(t) => t,
        None => match rope_params {
            Some(m) => Fields { obj: m, source }
                .opt_f64("rope_theta")
                .map_err(|e| rename_field(e, source, "rope_parameters.rope_theta"))?
                .unwrap_or(10000.0),
            None => 10000.0,
        },
    };
    let rope_scaling = match obj.get("rope_scaling") {
        Some(Value::Object(m)) => parse_rope_scaling(m, source, "rope_scaling")?,
        None | Some(Value::Null) => match rope_params {
            Some(m) => parse_rope_scaling(m, source, "rope_parameters")?,
            None => None,
        },
        Some(v) => return Err(wrong_type(source, "rope_scaling", "an object", v)),
    };

    let default_max_pos = match arch {
        Arch::Llama => 2048,
        Arch::Mistral => 131072,
        Arch::Qwen2 => 32768,
    };
    let cfg = ModelConfig {
        arch,
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size,
        intermediate_size: f.req_usize("intermediate_size")?,
        num_layers: f.req_usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
        rope_theta: rope_theta as f32,
        rope_scaling,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        max_position_embeddings: f
            .opt_usize("max_position_embeddings")?
            .unwrap_or(default_max_pos),
        bos_token_id: f.opt_token("bos_token_id")?,
        eos_token_id: f.opt_token("eos_token_id")?,
    };
    cfg.validate(source)?;
    Ok(cfg)
}

/// The `config.json` for `cfg`, in the transformers 4 dialect (readable by transformers 4
/// and 5); [`parse_hf_config`] of its text gives `cfg` back.
pub fn hf_config_json(cfg: &ModelConfig) -> Value {
    let (model_type, architecture) = match cfg.arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Mistral => ("mistral", "MistralForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
    };
    // Shortest decimal that round-trips the f32, so 1e-5 is written as 1e-5, not 9.99e-6.
    let num = |v: f32| -> Value {
        let v: f64 = v.to_string().parse().unwrap_or(v as f64);
        serde_json::json!(v)
    };
    let rope_scaling = match cfg.rope_scaling {
        None => Value::Null,
        Some(r) => serde_json::json!({
            "rope_type": "llama3",
            "factor": num(r.factor),
            "low_freq_factor": num(r.low_freq_factor),
            "high_freq_factor": num(r.high_freq_factor),
            "original_max_position_embeddings": r.original_max_position_embeddings,
        }),
    };
    let mut v = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": num(cfg.rms_norm_eps),
        "rope_theta": num(cfg.rope_theta),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32",
    });
    if cfg.arch != Arch::Qwen2 {
        v["attention_bias"] = Value::Bool(false);
        v["mlp_bias"] = Value::Bool(false);
    }
    v
}

/// Parse a rope scaling object (`rope_scaling`, or v5's `rope_parameters`) named `field`.
fn parse_rope_scaling(
    m: &Map<String, Value>,
    source: &str,
    field: &str,
) -> Result<Option<RopeScaling>> {
    let f = Fields { obj: m, source };
    let sub = |name: &str| format!("{field}.{name}");
    // HF accepts both `rope_type` and the older `type`.
    let (kind, kind_field) = match f.opt_str("rope_type") {
        Ok(Some(k)) => (Some(k), sub("rope_type")),
        Ok(None) => (
            f.opt_str("type")
                .map_err(|e| rename_field(e, source, &sub("type")))?,
            sub("type"),
        ),
        Err(e) => return Err(rename_field(e, source, &sub("rope_type"))),
    };
    match kind {
        None | Some("default") => Ok(None),
        Some("llama3") => {
            let num = |name: &str| -> Result<f32> {
                match f.opt_f64(name) {
                    Ok(Some(v)) if v.is_finite() && v > 0.0 => Ok(v as f32),
                    Ok(Some(_)) => Err(Error::config(source, sub(name), "must be positive")),
                    Ok(None) => Err(Error::config(source, sub(name), "missing")),
                    Err(e) => Err(rename_field(e, source, &sub(name))),
                }
            };
            let omp = match f.opt_usize("original_max_position_embeddings") {
                Ok(Some(v)) if v > 0 => v,
                Ok(_) => {
                    return Err(Error::config(
                        source,
                        sub("original_max_position_embeddings"),
                        "missing or zero",
                    ))
                }
                Err(e) => {
                    return Err(rename_field(
                        e,
                        source,
                        &sub("original_max_position_embeddings"),
                    ))
                }
            };
            Ok(Some(RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: omp,
            }))
        }
        Some(other) => Err(unsupported(
            source,
            &kind_field,
            &format!("rope type `{other}` (only llama3 scaling is implemented)"),
        )),
    }
}

/// An error for a feature the model does not implement, naming the field.
fn unsupported(source: &str, field: &str, what: &str) -> Error {
    Error::unsupported(format!(
        "{source}: field `{field}`: {what} is not supported"
    ))
}

/// A wrong-type error for `field`.
fn wrong_type(source: &str, field: &str, expected: &str, got: &Value) -> Error {
    Error::config(source, field, format!("expected {expected}, got {got}"))
}

/// Re-issue a config error from a nested object under its full dotted field name.
fn rename_field(e: Error, source: &str, field: &str) -> Error {
    match e.kind() {
        crate::error::ErrorKind::Config { msg, .. } => Error::config(source, field, msg.clone()),
        _ => e,
    }
}

/// Typed access to the fields of one JSON object, with errors naming the file and field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
}

impl<'a> Fields<'a> {
    /// The value of `field`, treating JSON `null` as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn req_str(&self, field: &str) -> Result<&'a str> {
        self.opt_str(field)?
            .ok_or_else(|| Error::config(self.source, field, "missing"))
    }

    fn opt_str(&self, field: &str) -> Result<Option<&'a str>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(self.source, field, "a string", v)),
        }
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(self.source, field, "true or false", v)),
        }
    }

    fn req_usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| Error::config(self.source, field, "missing"))
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(wrong_type(self.source, field, "a non-negative integer", v)),
            },
        }
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(n) => Ok(Some(n)),
                None => Err(wrong_type(self.source, field, "a number", v)),
            },
        }
    }

    /// A token id: an integer, or a list of integers (the first is taken; empty = none).
    fn opt_token(&self, field: &str) -> Result<Option<u32>> {
        let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(first) => as_id(first).map(Some).ok_or_else(|| {
                    wrong_type(self.source, field, "a list of token ids", &items[0])
                }),
            },
            Some(v) => as_id(v)
                .map(Some)
                .ok_or_else(|| wrong_type(self.source, field, "a token id", v)),
        }
    }
}
