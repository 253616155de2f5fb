//! The training run's configuration ([`TrainConfig`]): read from TOML or JSON (chosen by the
//! file extension; unknown fields are errors), then [`TrainConfig::validate`]d field by field
//! with bounds, each error naming the field (`optimizer.lr`, `lora.r`, ...).
//!
//! Paths: a relative `model` / `dataset` path is resolved against the config file's
//! directory; the values `asset:smollm2` and `asset:alpaca_en_demo` name the cached real
//! assets (engine `assets` module, `${GRADIENTS_CACHE:-~/.cache/gradients}/assets`).
//! trainer.rs consumes the validated config; checkpoint.rs stores it beside each checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Mapping;
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, Target};
use crate::optim::adamw::AdamWConfig;
use crate::optim::schedule::ScheduleKind;

/// LoRA hyper-parameters of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Rank (1..=1024).
    #[serde(default = "default_r")]
    pub r: usize,
    /// `lora_alpha` (> 0).
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Dropout on the LoRA input, in [0, 1).
    #[serde(default)]
    pub dropout: f32,
    /// Adapted projections (`q_proj`, ..., `down_proj`); default all seven.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
    /// rsLoRA scaling `alpha / sqrt(r)`.
    #[serde(default)]
    pub use_rslora: bool,
}

/// AdamW settings and gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    /// Peak learning rate, in (0, 1].
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// `(beta1, beta2)`, each in [0, 1).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Denominator epsilon, in [0, 1).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay, in [0, 10].
    #[serde(default)]
    pub weight_decay: f64,
    /// Global-norm gradient clipping threshold (> 0).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f32,
}

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// `constant_with_warmup`, `linear` or `cosine`.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Linear warmup steps (at most the run's total steps).
    #[serde(default)]
    pub warmup_steps: u64,
}

/// Everything a training run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A GGUF file or HF model directory (relative: to the config file; or `asset:smollm2`).
    pub model: PathBuf,
    /// The dataset file (JSON array, JSONL or CSV; relative: to the config file; or
    /// `asset:alpaca_en_demo`). It is split into train/test (SPEC §2, seed 42).
    pub dataset: PathBuf,
    /// The column mapping, tagged by `task_type` (`instruct`, `chat`; `dpo`: DPO training,
    /// train/dpo.rs, with `micro_batch` counting pairs and `packing` unused; `grpo`: GRPO
    /// training, train/grpo.rs, with `micro_batch` counting prompts).
    pub mapping: Mapping,
    /// Where metrics, checkpoints and the final adapter go (relative: to the config file).
    pub output_dir: PathBuf,
    /// LoRA settings.
    #[serde(default = "default_lora")]
    pub lora: LoraSection,
    /// Optimiser settings.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerSection,
    /// Learning-rate schedule.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleSection,
    /// Rows per micro-batch (1..=1024).
    #[serde(default = "one")]
    pub micro_batch: usize,
    /// Micro-batches per optimiser step (1..=1024).
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Tokens per row (2..=131072); longer samples lose their tail.
    #[serde(default = "default_seq")]
    pub seq_len: usize,
    /// Pack several samples per row (attention never crosses samples).
    #[serde(default = "yes")]
    pub packing: bool,
    /// Passes over the train split (1..=1000); default 1 when `max_steps` is unset.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// Stop after this many optimiser steps (≥ 1).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Stop before the step that would take the trained tokens (sample tokens, padding
    /// excluded) past this budget (≥ 1).
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Wall-clock budget in hours (> 0): stop and save when the next step would likely
    /// overrun it.
    #[serde(default)]
    pub hours_to_complete: Option<f64>,
    /// Seed of the LoRA init, the batch order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Evaluate the test split every this many steps (0: only before and after training).
    #[serde(default)]
    pub eval_every: u64,
    /// Test samples evaluated (the first ones of the test split; unset: all).
    #[serde(default)]
    pub eval_samples: Option<usize>,
    /// Rows per evaluation batch (1..=1024).
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    /// Skip the base-model and final test evaluations (faster; no test losses reported).
    #[serde(default)]
    pub skip_eval: bool,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub save_every: u64,
    /// Keep `output_dir/best/`: the adapter with the lowest test loss measured so far
    /// (periodic and final evaluations) and `best.json` with its step and loss. Needs
    /// `eval_every` > 0 and evaluation on (`skip_eval = false`).
    #[serde(default)]
    pub keep_best: bool,
    /// Gradient checkpointing (same gradients, less memory).
    #[serde(default)]
    pub recompute: bool,
    /// β of the DPO loss (in (0, 100]; SPEC §3's 0.1 by default); used by `dpo` runs only.
    #[serde(default = "default_dpo_beta")]
    pub dpo_beta: f64,
    /// GRPO settings (train/grpo.rs; unset: the defaults); used by `grpo` runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<super::grpo::GrpoSection>,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f32 {
    16.0
}
fn default_targets() -> Vec<String> {
    Target::ALL.iter().map(|t| t.name().to_string()).collect()
}
fn default_lr() -> f64 {
    2e-4
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f32 {
    1.0
}
fn default_kind() -> String {
    "constant_with_warmup".into()
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_seq() -> usize {
    512
}
fn default_eval_batch() -> usize {
    4
}
fn default_dpo_beta() -> f64 {
    crate::eval::DEFAULT_BETA
}
fn default_lora() -> LoraSection {
    LoraSection {
        r: default_r(),
        alpha: default_alpha(),
        dropout: 0.0,
        targets: default_targets(),
        use_rslora: false,
    }
}
fn default_optimizer() -> OptimizerSection {
    OptimizerSection {
        lr: default_lr(),
        betas: default_betas(),
        eps: default_eps(),
        weight_decay: 0.0,
        max_grad_norm: default_clip(),
    }
}
fn default_schedule() -> ScheduleSection {
    ScheduleSection {
        kind: default_kind(),
        warmup_steps: 0,
    }
}

impl TrainConfig {
    /// Read `path` (`.toml`, or `.json`), resolve its relative paths against the file's
    /// directory and validate it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = path.extension().and_then(|e| e.to_str()) == Some("json");
        let mut cfg = if json {
            Self::from_json(&text, &path.display().to_string())?
        } else {
            Self::from_toml(&text, &path.display().to_string())?
        };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// Parse TOML text and validate it; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text)
            .map_err(|e| Error::config(source, "toml", e.to_string().trim_end().to_string()))?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// Parse JSON text and validate it; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let cfg: TrainConfig =
            serde_json::from_str(text).map_err(|e| Error::config(source, "json", e.to_string()))?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// Make relative `model`, `dataset` and `output_dir` relative to `base` (`asset:` names
    /// and absolute paths are kept).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.model, &mut self.dataset, &mut self.output_dir] {
            let is_asset = p.to_str().is_some_and(|s| s.starts_with("asset:"));
            if p.is_relative() && !is_asset {
                *p = base.join(&*p);
            }
        }
    }

    /// Check every field's bounds; errors name the field.
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |field: &str, msg: String| Err(Error::config(source, field, msg));
        let range = |field: &str, v: usize, lo: usize, hi: usize| -> Result<()> {
            if v < lo || v > hi {
                return err(field, format!("must be in {lo}..={hi}, got {v}"));
            }
            Ok(())
        };
        for (field, p) in [
            ("model", &self.model),
            ("dataset", &self.dataset),
            ("output_dir", &self.output_dir),
        ] {
            if p.as_os_str().is_empty() {
                return err(field, "must not be empty".into());
            }
        }
        self.mapping.validate()?;
        if let Some(g) = &self.grpo {
            g.validate(source)?;
        }
        let beta = self.dpo_beta;
        if !(beta.is_finite() && beta > 0.0 && beta <= 100.0) {
            return err("dpo_beta", format!("must be in (0, 100], got {beta}"));
        }
        range("lora.r", self.lora.r, 1, 1024)?;
        self.lora_config().map_err(|e| match e.kind() {
            crate::error::ErrorKind::Config { field, msg, .. } => {
                Error::config(source, format!("lora.{field}"), msg.clone())
            }
            _ => e,
        })?;
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0 && o.lr <= 1.0) {
            return err("optimizer.lr", format!("must be in (0, 1], got {}", o.lr));
        }
        for (i, b) in o.betas.iter().enumerate() {
            if !(b.is_finite() && (0.0..1.0).contains(b)) {
                return err(
                    &format!("optimizer.betas[{i}]"),
                    format!("must be in [0, 1), got {b}"),
                );
            }
        }
        if !(o.eps.is_finite() && (0.0..1.0).contains(&o.eps)) {
            return err("optimizer.eps", format!("must be in [0, 1), got {}", o.eps));
        }
        if !(o.weight_decay.is_finite() && (0.0..=10.0).contains(&o.weight_decay)) {
            return err(
                "optimizer.weight_decay",
                format!("must be in [0, 10], got {}", o.weight_decay),
            );
        }
        if !(o.max_grad_norm.is_finite() && o.max_grad_norm > 0.0) {
            return err(
                "optimizer.max_grad_norm",
                format!("must be a positive number, got {}", o.max_grad_norm),
            );
        }
        ScheduleKind::parse(&self.schedule.kind).map_err(|_| {
            Error::config(
                source,
                "schedule.kind",
                format!(
                    "unknown schedule `{}` (expected constant_with_warmup, linear or cosine)",
                    self.schedule.kind
                ),
            )
        })?;
        if self.schedule.warmup_steps > 1_000_000 {
            return err("schedule.warmup_steps", "must be at most 1000000".into());
        }
        range("micro_batch", self.micro_batch, 1, 1024)?;
        range("grad_accum", self.grad_accum, 1, 1024)?;
        range("seq_len", self.seq_len, 2, 131_072)?;
        range("eval_batch", self.eval_batch, 1, 1024)?;
        if let Some(e) = self.epochs {
            range("epochs", e as usize, 1, 1000)?;
        }
        if self.max_steps == Some(0) {
            return err("max_steps", "must be at least 1".into());
        }
        if self.token_budget == Some(0) {
            return err("token_budget", "must be at least 1".into());
        }
        if self.eval_samples == Some(0) {
            return err("eval_samples", "must be at least 1 (or unset)".into());
        }
        if self.keep_best && (self.eval_every == 0 || self.skip_eval) {
            return err(
                "keep_best",
                "needs periodic evaluation: set eval_every > 0 and leave skip_eval off".into(),
            );
        }
        if let Some(h) = self.hours_to_complete {
            if !(h.is_finite() && h > 0.0 && h <= 10_000.0) {
                return err(
                    "hours_to_complete",
                    format!("must be in (0, 10000], got {h}"),
                );
            }
        }
        Ok(())
    }

    /// Passes over the data: `epochs`, else 1 without `max_steps`, else unbounded (1000).
    pub fn epoch_limit(&self) -> u32 {
        match (self.epochs, self.max_steps) {
            (Some(e), _) => e,
            (None, None) => 1,
            (None, Some(_)) => 1000,
        }
    }

    /// The LoRA config of this run.
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let mut targets = Vec::with_capacity(self.lora.targets.len());
        for name in &self.lora.targets {
            let t = Target::parse(name).ok_or_else(|| {
                Error::config(
                    "train config",
                    "targets",
                    format!("unknown target module `{name}`"),
                )
            })?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        let c = LoraConfig {
            rank: self.lora.r,
            alpha: self.lora.alpha,
            dropout: self.lora.dropout,
            targets,
            use_rslora: self.lora.use_rslora,
        };
        c.validate("train config")?;
        Ok(c)
    }

    /// The AdamW config of this run.
    pub fn adamw_config(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.optimizer.betas[0],
            beta2: self.optimizer.betas[1],
            eps: self.optimizer.eps,
            weight_decay: self.optimizer.weight_decay,
        }
    }

    /// The schedule kind (validated by [`TrainConfig::validate`]).
    pub fn schedule_kind(&self) -> Result<ScheduleKind> {
        ScheduleKind::parse(&self.schedule.kind)
    }
}

/// Resolve `asset:NAME` paths to the cached real assets; other paths are returned as they are.
pub fn resolve_asset(path: &Path) -> Result<PathBuf> {
    let Some(name) = path.to_str().and_then(|s| s.strip_prefix("asset:")) else {
        return Ok(path.to_path_buf());
    };
    let found = match name {
        "smollm2" => crate::assets::smollm2_gguf(),
        "alpaca_en_demo" => crate::assets::alpaca_en_demo(),
        "dpo_en_demo" => crate::assets::dpo_en_demo(),
        other => Err(format!(
            "unknown asset `{other}` (expected smollm2, alpaca_en_demo or dpo_en_demo)"
        )),
    };
    found.map_err(|why| Error::config("train config", path.display().to_string(), why))
}
