//! PEFT adapter directories, both ways: `adapter_config.json` ↔ [`LoraConfig`] and
//! `adapter_model.safetensors` ↔ a neutral [`PeftAdapter`] (one f32 tensor per layer,
//! target and factor), with every shape checked against the model config and the rank.
//!
//! Neighbours: `lora/mod.rs` defines `Target` and `LoraConfig`; the in-memory trainable
//! parameters (`lora/params.rs`) convert to and from [`PeftAdapter`]; the file format itself
//! is `model/st.rs`. Key names are PEFT's own, e.g.
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`, so adapters we write
//! load with `PeftModel.from_pretrained` and adapters PEFT writes load here.
//!
//! Only what changes the math of plain LoRA on the seven Llama projections is accepted:
//! DoRA, per-module rank/alpha patterns, `layers_to_transform`, `modules_to_save`, biases,
//! `fan_in_fan_out` and regex `target_modules` are refused with an error naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::lora::{LoraConfig, Target};
use crate::model::config::ModelConfig;
use crate::model::st::{write_safetensors, SafetensorsFile};
use crate::tensor::Tensor;

/// File name of the adapter's hyper-parameters.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File name of the adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Which of the two LoRA factors: `A [r, in]` (PEFT `lora_A`) or `B [out, r]` (`lora_B`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraFactor {
    /// `lora_A`, shape `[r, in]`.
    A,
    /// `lora_B`, shape `[out, r]`.
    B,
}

/// A LoRA adapter as stored by PEFT: its config and one tensor per (layer, target, factor).
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapter {
    /// Hyper-parameters (rank, alpha, targets, ...).
    pub config: LoraConfig,
    /// `(layer, target, factor)` → `A [r, in]` or `B [out, r]`.
    pub tensors: BTreeMap<(usize, Target, LoraFactor), Tensor>,
}

/// The shape of one LoRA factor: `A` is `[rank, in]`, `B` is `[out, rank]`.
pub fn lora_shape(cfg: &ModelConfig, rank: usize, target: Target, f: LoraFactor) -> [usize; 2] {
    let (dout, din) = super::params::target_dims(cfg, target);
    match f {
        LoraFactor::A => [rank, din],
        LoraFactor::B => [dout, rank],
    }
}

const KEY_PREFIX: &str = "base_model.model.model.layers.";

/// PEFT's tensor name for one factor of one layer's target.
pub fn peft_key(layer: usize, target: Target, f: LoraFactor) -> String {
    let ab = match f {
        LoraFactor::A => "lora_A",
        LoraFactor::B => "lora_B",
    };
    format!("{KEY_PREFIX}{layer}.{}.{ab}.weight", target.module_path())
}

/// Parse a PEFT tensor name back into (layer, target, factor).
pub fn parse_peft_key(key: &str) -> Option<(usize, Target, LoraFactor)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer = layer.parse().ok()?;
    let (module, f) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, LoraFactor::A)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, LoraFactor::B)
    };
    let target = Target::ALL
        .into_iter()
        .find(|t| t.module_path() == module)?;
    Some((layer, target, f))
}

/// Parse the text of an `adapter_config.json`; `source` names it in errors.
pub fn parse_adapter_config(text: &str, source: &str) -> Result<LoraConfig> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(source, "<root>", format!("invalid json: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(Error::config(source, "<root>", "expected a json object"));
    };
    let get = |f: &str| obj.get(f).filter(|v| !v.is_null());
    let wrong = |f: &str, what: &str, v: &Value| {
        Error::config(source, f, format!("expected {what}, got {v}"))
    };
    let unsupported =
        |f: &str, what: &str| Error::unsupported(format!("{source}: field `{f}`: {what}"));
    let string = |f: &str| -> Result<Option<&str>> {
        match get(f) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(f, "a string", v)),
        }
    };
    let flag = |f: &str| -> Result<bool> {
        match get(f) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong(f, "true or false", v)),
        }
    };
    let number = |f: &str, default: f64| -> Result<f64> {
        match get(f) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| wrong(f, "a number", v)),
        }
    };

    match string("peft_type")? {
        Some("LORA") => {}
        Some(other) => {
            return Err(unsupported(
                "peft_type",
                &format!("`{other}` (only LORA is supported)"),
            ))
        }
        None => return Err(Error::config(source, "peft_type", "missing")),
    }
    match string("task_type")? {
        None | Some("CAUSAL_LM") => {}
        Some(other) => {
            return Err(unsupported(
                "task_type",
                &format!("`{other}` (only CAUSAL_LM is supported)"),
            ))
        }
    }
    match string("bias")? {
        None | Some("none") => {}
        Some(other) => return Err(unsupported("bias", &format!("`{other}` (only none)"))),
    }
    for f in ["fan_in_fan_out", "use_dora", "lora_bias", "use_qalora"] {
        if flag(f)? {
            return Err(unsupported(f, "true is not supported"));
        }
    }
    for f in [
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "modules_to_save",
        "exclude_modules",
        "layer_replication",
        "target_parameters",
        "trainable_token_indices",
    ] {
        let empty = match get(f) {
            None => true,
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if !empty {
            return Err(unsupported(f, "must be empty or null"));
        }
    }

    let rank = match get("r") {
        None => 8,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| wrong("r", "a positive integer", v))?,
    };
    let targets = match get("target_modules") {
        // PEFT's default for the Llama family when none are given.
        None => vec![Target::Q, Target::V],
        Some(Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
        Some(Value::String(s)) => {
            return Err(unsupported(
                "target_modules",
                &format!("regex `{s}` (give a list of module names)"),
            ))
        }
        Some(Value::Array(items)) => {
            let mut t = Vec::with_capacity(items.len());
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| wrong("target_modules", "a list of module names", item))?;
                t.push(Target::parse(name).ok_or_else(|| {
                    unsupported(
                        "target_modules",
                        &format!("module `{name}` (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"),
                    )
                })?);
            }
            t.sort();
            t.dedup();
            t
        }
        Some(v) => return Err(wrong("target_modules", "a list of module names", v)),
    };
    let cfg = LoraConfig {
        rank,
        alpha: number("lora_alpha", 8.0)? as f32,
        dropout: number("lora_dropout", 0.0)? as f32,
        targets,
        use_rslora: flag("use_rslora")?,
    };
    cfg.validate(source)?;
    Ok(cfg)
}

/// The `adapter_config.json` PEFT expects for `cfg` on top of `base_model`.
pub fn adapter_config_json(cfg: &LoraConfig, base_model: &str) -> Value {
    // Shortest decimal that round-trips the f32 (0.05, not 0.05000000074505806); integral
    // alphas are written as integers, as PEFT users write them.
    let num = |v: f32| -> Value {
        if v.fract() == 0.0 && v.abs() < 1e9 {
            Value::from(v as i64)
        } else {
            Value::from(v.to_string().parse::<f64>().unwrap_or(v as f64))
        }
    };
    let targets: Vec<Value> = cfg.targets.iter().map(|t| Value::from(t.name())).collect();
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("peft_type", "LORA".into());
    put("task_type", "CAUSAL_LM".into());
    put("base_model_name_or_path", base_model.into());
    put("r", cfg.rank.into());
    put("lora_alpha", num(cfg.alpha));
    put("lora_dropout", num(cfg.dropout));
    put("target_modules", Value::Array(targets));
    put("use_rslora", cfg.use_rslora.into());
    put("bias", "none".into());
    put("fan_in_fan_out", false.into());
    put("use_dora", false.into());
    put("init_lora_weights", true.into());
    put("inference_mode", true.into());
    put("modules_to_save", Value::Null);
    put("layers_to_transform", Value::Null);
    put("rank_pattern", Value::Object(Map::new()));
    put("alpha_pattern", Value::Object(Map::new()));
    put("revision", Value::Null);
    Value::Object(m)
}

impl PeftAdapter {
    /// Check the adapter against `model_cfg`: every layer has A and B for every target, with
    /// the shapes the model and rank imply, and nothing else. `source` names it in errors.
    pub fn validate(&self, model_cfg: &ModelConfig, source: &Path) -> Result<()> {
        let rank = self.config.rank;
        for (&(layer, target, f), t) in &self.tensors {
            let key = peft_key(layer, target, f);
            if layer >= model_cfg.num_layers {
                return Err(Error::tensor(
                    source,
                    key,
                    format!("layer {layer} but the model has {}", model_cfg.num_layers),
                ));
            }
            if !self.config.targets.contains(&target) {
                return Err(Error::tensor(
                    source,
                    key,
                    format!("`{}` is not in target_modules", target.name()),
                ));
            }
            let want = lora_shape(model_cfg, rank, target, f);
            if t.shape != want {
                return Err(Error::tensor(
                    source,
                    key,
                    format!(
                        "shape {:?} does not match {want:?} expected for rank {rank}",
                        t.shape
                    ),
                ));
            }
        }
        for layer in 0..model_cfg.num_layers {
            for &target in &self.config.targets {
                for f in [LoraFactor::A, LoraFactor::B] {
                    if !self.tensors.contains_key(&(layer, target, f)) {
                        return Err(Error::tensor(source, peft_key(layer, target, f), "missing"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Read a PEFT adapter directory and check it against `model_cfg` (see
/// [`PeftAdapter::validate`]); unknown tensor names are errors naming the file and key.
pub fn read_peft_adapter(dir: &Path, model_cfg: &ModelConfig) -> Result<PeftAdapter> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config = parse_adapter_config(&text, &cfg_path.display().to_string())?;
    let st_path = dir.join(ADAPTER_WEIGHTS);
    if !st_path.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(Error::unsupported(format!(
            "{}: adapter_model.bin (pickle) is not supported: save with safe_serialization",
            dir.display()
        )));
    }
    let file = SafetensorsFile::open(&st_path)?;
    let mut tensors = BTreeMap::new();
    for name in file.names() {
        let key = parse_peft_key(name).ok_or_else(|| {
            Error::tensor(
                &st_path,
                name,
                "unknown key (expected base_model.model.model.layers.<i>.<module>.lora_A.weight or .lora_B.weight)",
            )
        })?;
        // Check the shape before decoding, so a wrong file fails fast and clearly.
        let (layer, target, f) = key;
        if layer < model_cfg.num_layers {
            let want = lora_shape(model_cfg, config.rank, target, f);
            if file.shape(name) != Some(&want[..]) {
                return Err(Error::tensor(
                    &st_path,
                    name,
                    format!(
                        "shape {:?} does not match {want:?} expected for rank {} on this model",
                        file.shape(name).unwrap_or(&[]),
                        config.rank
                    ),
                ));
            }
        }
        tensors.insert(key, file.tensor(name)?);
    }
    let adapter = PeftAdapter { config, tensors };
    adapter.validate(model_cfg, &st_path)?;
    Ok(adapter)
}

/// Write `adapter` as a PEFT directory (`adapter_model.safetensors` in f32, then
/// `adapter_config.json`), creating `dir` if needed; each file is written atomically.
///
/// The adapter must be complete for layers `0..n` (n = 1 + the highest layer present) and
/// its factors must have rank `config.rank`.
pub fn write_peft_adapter(dir: &Path, adapter: &PeftAdapter, base_model: &str) -> Result<()> {
    let st_path = dir.join(ADAPTER_WEIGHTS);
    let cfg_path = dir.join(ADAPTER_CONFIG);
    adapter.config.validate(&cfg_path.display().to_string())?;
    let rank = adapter.config.rank;
    let Some(n_layers) = adapter.tensors.keys().map(|k| k.0 + 1).max() else {
        return Err(Error::format(&st_path, "the adapter has no tensors"));
    };
    for layer in 0..n_layers {
        for &target in &adapter.config.targets {
            let a = adapter.tensors.get(&(layer, target, LoraFactor::A));
            let b = adapter.tensors.get(&(layer, target, LoraFactor::B));
            let key = |f| peft_key(layer, target, f);
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, _) => return Err(Error::tensor(&st_path, key(LoraFactor::A), "missing")),
                (_, None) => return Err(Error::tensor(&st_path, key(LoraFactor::B), "missing")),
            };
            let (ar, _) = a
                .dims2()
                .map_err(|e| Error::tensor(&st_path, key(LoraFactor::A), e.to_string()))?;
            let (_, bc) = b
                .dims2()
                .map_err(|e| Error::tensor(&st_path, key(LoraFactor::B), e.to_string()))?;
            if ar != rank || bc != rank {
                return Err(Error::tensor(
                    &st_path,
                    key(LoraFactor::A),
                    format!(
                        "A {:?} and B {:?} do not have rank {rank}",
                        a.shape, b.shape
                    ),
                ));
            }
        }
    }
    if let Some(&(layer, target, f)) = adapter
        .tensors
        .keys()
        .find(|k| !adapter.config.targets.contains(&k.1))
    {
        return Err(Error::tensor(
            &st_path,
            peft_key(layer, target, f),
            format!("`{}` is not in target_modules", target.name()),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let names: Vec<(String, &Tensor)> = adapter
        .tensors
        .iter()
        .map(|(&(l, t, f), x)| (peft_key(l, t, f), x))
        .collect();
    let refs: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&st_path, &refs, Some(&meta))?;
    let text = serde_json::to_string_pretty(&adapter_config_json(&adapter.config, base_model))
        .map_err(|e| Error::format(&cfg_path, format!("cannot encode: {e}")))?;
    write_atomic(&cfg_path, text.as_bytes())
}
