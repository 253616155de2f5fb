//! A miner's method (SPEC §5): a declarative recipe, never code. It picks values of the
//! engine's TrainConfig (LoRA rank/alpha/dropout/targets/rsLoRA, AdamW, schedule and warmup,
//! micro-batch, accumulation, sequence length, packing, epochs) and policies for spending the
//! validator's token budget: what fraction to spend and an optional step cap (`[budget]`),
//! which checkpoint to submit (`last`, or `best` on a held-out slice of the miner's train
//! split), and an optional successive-halving search over learning rates and ranks inside
//! the same budget (`[search]`). validator.rs turns it into TrainConfigs with its own data,
//! seed and budget.
//!
//! Every field has bounds ([`Method::validate`]); files are read field by field (fields.rs),
//! so unknown fields, wrong types and out-of-range values are errors naming the field
//! (`lora.r`, `search.lr[1]`). The content hash ([`Method::hash`]) is the sha256 of a
//! canonical JSON form (fixed field order, shortest float text, targets in block order,
//! search lists sorted and deduplicated; the free-text `name` left out), so formatting,
//! field order or `2e-4` vs `0.0002` never change it.

use std::path::Path;

use gradients_engine::lora::Target;
use gradients_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fields::{parse_text, Fields};

/// LoRA settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraRecipe {
    /// Rank, 1..=256.
    pub r: usize,
    /// `lora_alpha`, in (0, 4096].
    pub alpha: f64,
    /// Dropout on the LoRA input, in [0, 0.5].
    pub dropout: f64,
    /// Adapted projections (`q_proj` … `down_proj`), at least one.
    pub targets: Vec<String>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
}

/// AdamW settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerRecipe {
    /// Peak learning rate, in [1e-7, 0.1].
    pub lr: f64,
    /// `(beta1, beta2)`, each in [0, 0.9999].
    pub betas: [f64; 2],
    /// Epsilon, in [1e-12, 1e-3].
    pub eps: f64,
    /// Weight decay, in [0, 1].
    pub weight_decay: f64,
    /// Gradient clipping norm, in [0.01, 100].
    pub max_grad_norm: f64,
}

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRecipe {
    /// `constant_with_warmup`, `linear` or `cosine`.
    pub kind: String,
    /// Warmup as a fraction of the run's planned steps, in [0, 0.5].
    pub warmup_fraction: f64,
}

/// Batching and passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRecipe {
    /// Rows per micro-batch, 1..=64.
    pub micro_batch: usize,
    /// Micro-batches per step, 1..=64.
    pub grad_accum: usize,
    /// Tokens per row, 16..=8192.
    pub seq_len: usize,
    /// Pack samples into rows.
    pub packing: bool,
    /// Most passes over the train split, 1..=100.
    pub epochs: u32,
}

/// Which adapter to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointPolicy {
    /// The adapter after the last step.
    Last,
    /// The checkpoint with the lowest loss on the held-out slice of the train split.
    Best,
}

/// How to spend the token budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Fraction of the validator's token budget to spend, in [0.05, 1].
    pub fraction: f64,
    /// Optional cap on optimiser steps of the final run, 1..=1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// `last` or `best`.
    pub checkpoint: CheckpointPolicy,
    /// For `best`: evaluate (and checkpoint) every this many steps, 1..=100,000; default a
    /// quarter of the planned steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
    /// Held-out samples scored per evaluation (for `best` and the search), 1..=400.
    pub eval_samples: usize,
}

/// Successive halving over learning rates × ranks inside the budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchPolicy {
    /// Candidate learning rates (1..=8 values, each in the `optimizer.lr` range).
    pub lr: Vec<f64>,
    /// Candidate ranks (1..=4 values, each in the `lora.r` range).
    pub r: Vec<usize>,
    /// Halving rounds, 1..=4 (each keeps the better half, doubling their tokens).
    pub rungs: u32,
    /// Fraction of the spent budget the search may use, in [0.1, 0.9]; the winner then
    /// trains from scratch on the rest.
    pub fraction: f64,
}

/// A miner's training method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Free-text label (at most 64 characters; not part of the hash).
    #[serde(default)]
    pub name: String,
    /// LoRA settings.
    pub lora: LoraRecipe,
    /// Optimiser settings.
    pub optimizer: OptimizerRecipe,
    /// Schedule.
    pub schedule: ScheduleRecipe,
    /// Batching and passes.
    pub train: TrainRecipe,
    /// Budget policy.
    pub budget: BudgetPolicy,
    /// Optional hyper-parameter search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchPolicy>,
}

impl Default for Method {
    /// r 8, alpha 16, all seven targets, lr 2e-4, constant schedule, micro-batch 4,
    /// seq_len 512, packing, 1 epoch, the whole budget, last checkpoint, no search.
    fn default() -> Self {
        Method {
            name: String::new(),
            lora: LoraRecipe {
                r: 8,
                alpha: 16.0,
                dropout: 0.0,
                targets: Target::ALL.iter().map(|t| t.name().to_string()).collect(),
                use_rslora: false,
            },
            optimizer: OptimizerRecipe {
                lr: 2e-4,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: 0.0,
                max_grad_norm: 1.0,
            },
            schedule: ScheduleRecipe {
                kind: "constant_with_warmup".into(),
                warmup_fraction: 0.0,
            },
            train: TrainRecipe {
                micro_batch: 4,
                grad_accum: 1,
                seq_len: 512,
                packing: true,
                epochs: 1,
            },
            budget: BudgetPolicy {
                fraction: 1.0,
                max_steps: None,
                checkpoint: CheckpointPolicy::Last,
                eval_every: None,
                eval_samples: 32,
            },
            search: None,
        }
    }
}

const LR_RANGE: (f64, f64) = (1e-7, 0.1);
const R_RANGE: (usize, usize) = (1, 256);

fn range_f(source: &str, field: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        return Err(Error::config(
            source,
            field,
            format!("must be in [{lo}, {hi}], got {v}"),
        ));
    }
    Ok(())
}

fn range_u(source: &str, field: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        return Err(Error::config(
            source,
            field,
            format!("must be in {lo}..={hi}, got {v}"),
        ));
    }
    Ok(())
}

impl Method {
    /// Read a method file (`.json` is JSON, anything else TOML).
    pub fn from_file(path: &Path) -> Result<Method> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = path.extension().and_then(|e| e.to_str()) == Some("json");
        Self::parse(&text, &path.display().to_string(), json)
    }

    /// Parse method text (JSON when `json`, else TOML), fill defaults, check every bound and
    /// normalise it; `source` names it in errors.
    pub fn parse(text: &str, source: &str, json: bool) -> Result<Method> {
        let mut f = Fields::new(source, "", parse_text(text, source, json)?)?;
        let d = Method::default();
        let mut m = d.clone();
        m.name = f.or("name", String::new())?;
        if let Some(mut s) = f.section("lora")? {
            m.lora.r = s.or("r", d.lora.r)?;
            m.lora.alpha = s.or("alpha", d.lora.alpha)?;
            m.lora.dropout = s.or("dropout", d.lora.dropout)?;
            m.lora.targets = s.or("targets", d.lora.targets.clone())?;
            m.lora.use_rslora = s.or("use_rslora", false)?;
            s.finish(&["r", "alpha", "dropout", "targets", "use_rslora"])?;
        }
        if let Some(mut s) = f.section("optimizer")? {
            let o = &d.optimizer;
            m.optimizer.lr = s.or("lr", o.lr)?;
            m.optimizer.betas = s.or("betas", o.betas)?;
            m.optimizer.eps = s.or("eps", o.eps)?;
            m.optimizer.weight_decay = s.or("weight_decay", o.weight_decay)?;
            m.optimizer.max_grad_norm = s.or("max_grad_norm", o.max_grad_norm)?;
            s.finish(&["lr", "betas", "eps", "weight_decay", "max_grad_norm"])?;
        }
        if let Some(mut s) = f.section("schedule")? {
            m.schedule.kind = s.or("kind", d.schedule.kind.clone())?;
            m.schedule.warmup_fraction = s.or("warmup_fraction", 0.0)?;
            s.finish(&["kind", "warmup_fraction"])?;
        }
        if let Some(mut s) = f.section("train")? {
            let t = &d.train;
            m.train.micro_batch = s.or("micro_batch", t.micro_batch)?;
            m.train.grad_accum = s.or("grad_accum", t.grad_accum)?;
            m.train.seq_len = s.or("seq_len", t.seq_len)?;
            m.train.packing = s.or("packing", t.packing)?;
            m.train.epochs = s.or("epochs", t.epochs)?;
            s.finish(&["micro_batch", "grad_accum", "seq_len", "packing", "epochs"])?;
        }
        if let Some(mut s) = f.section("budget")? {
            let b = &d.budget;
            m.budget.fraction = s.or("fraction", b.fraction)?;
            m.budget.max_steps = s.opt("max_steps")?;
            m.budget.checkpoint = s.or("checkpoint", b.checkpoint)?;
            m.budget.eval_every = s.opt("eval_every")?;
            m.budget.eval_samples = s.or("eval_samples", b.eval_samples)?;
            s.finish(&[
                "fraction",
                "max_steps",
                "checkpoint",
                "eval_every",
                "eval_samples",
            ])?;
        }
        if let Some(mut s) = f.section("search")? {
            let lr: Vec<f64> = s.or("lr", vec![m.optimizer.lr])?;
            let r: Vec<usize> = s.or("r", vec![m.lora.r])?;
            m.search = Some(SearchPolicy {
                lr,
                r,
                rungs: s.or("rungs", 2)?,
                fraction: s.or("fraction", 0.3)?,
            });
            s.finish(&["lr", "r", "rungs", "fraction"])?;
        }
        f.finish(&[
            "name",
            "lora",
            "optimizer",
            "schedule",
            "train",
            "budget",
            "search",
        ])?;
        m.normalise();
        m.validate(source)?;
        Ok(m)
    }

    /// A method stored in its canonical JSON form ([`Method::canonical_json`] plus `name`).
    pub fn from_stored(json: &str, source: &str) -> Result<Method> {
        let mut m: Method =
            serde_json::from_str(json).map_err(|e| Error::config(source, "json", e.to_string()))?;
        m.normalise();
        m.validate(source)?;
        Ok(m)
    }

    /// Put targets in block order (deduplicated) and search lists in ascending order.
    pub fn normalise(&mut self) {
        let mut known: Vec<Target> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        for t in &self.lora.targets {
            match Target::parse(t) {
                Some(t) if !known.contains(&t) => known.push(t),
                Some(_) => {}
                None => unknown.push(t.clone()),
            }
        }
        if unknown.is_empty() {
            known.sort();
            self.lora.targets = known.iter().map(|t| t.name().to_string()).collect();
        }
        if let Some(s) = &mut self.search {
            s.lr.sort_by(f64::total_cmp);
            s.lr.dedup_by(|a, b| a.to_bits() == b.to_bits());
            s.r.sort_unstable();
            s.r.dedup();
        }
    }

    /// Check every bound; errors name the field.
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.name.chars().count() > 64 {
            return Err(Error::config(source, "name", "at most 64 characters"));
        }
        let l = &self.lora;
        range_u(
            source,
            "lora.r",
            l.r as u64,
            R_RANGE.0 as u64,
            R_RANGE.1 as u64,
        )?;
        if !(l.alpha.is_finite() && l.alpha > 0.0 && l.alpha <= 4096.0) {
            return Err(Error::config(
                source,
                "lora.alpha",
                format!("must be in (0, 4096], got {}", l.alpha),
            ));
        }
        range_f(source, "lora.dropout", l.dropout, 0.0, 0.5)?;
        if l.targets.is_empty() {
            return Err(Error::config(
                source,
                "lora.targets",
                "must name at least one module",
            ));
        }
        for (i, t) in l.targets.iter().enumerate() {
            if Target::parse(t).is_none() {
                return Err(Error::config(
                    source,
                    format!("lora.targets[{i}]"),
                    format!("unknown module `{t}` (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)"),
                ));
            }
        }
        let o = &self.optimizer;
        range_f(source, "optimizer.lr", o.lr, LR_RANGE.0, LR_RANGE.1)?;
        for (i, b) in o.betas.iter().enumerate() {
            range_f(source, &format!("optimizer.betas[{i}]"), *b, 0.0, 0.9999)?;
        }
        range_f(source, "optimizer.eps", o.eps, 1e-12, 1e-3)?;
        range_f(source, "optimizer.weight_decay", o.weight_decay, 0.0, 1.0)?;
        range_f(
            source,
            "optimizer.max_grad_norm",
            o.max_grad_norm,
            0.01,
            100.0,
        )?;
        if !["constant_with_warmup", "linear", "cosine"].contains(&self.schedule.kind.as_str()) {
            return Err(Error::config(
                source,
                "schedule.kind",
                format!(
                    "unknown schedule `{}` (expected constant_with_warmup, linear or cosine)",
                    self.schedule.kind
                ),
            ));
        }
        range_f(
            source,
            "schedule.warmup_fraction",
            self.schedule.warmup_fraction,
            0.0,
            0.5,
        )?;
        let t = &self.train;
        range_u(source, "train.micro_batch", t.micro_batch as u64, 1, 64)?;
        range_u(source, "train.grad_accum", t.grad_accum as u64, 1, 64)?;
        range_u(source, "train.seq_len", t.seq_len as u64, 16, 8192)?;
        range_u(source, "train.epochs", u64::from(t.epochs), 1, 100)?;
        let b = &self.budget;
        range_f(source, "budget.fraction", b.fraction, 0.05, 1.0)?;
        if let Some(s) = b.max_steps {
            range_u(source, "budget.max_steps", s, 1, 1_000_000)?;
        }
        if let Some(e) = b.eval_every {
            range_u(source, "budget.eval_every", e, 1, 100_000)?;
        }
        range_u(source, "budget.eval_samples", b.eval_samples as u64, 1, 400)?;
        if let Some(s) = &self.search {
            if s.lr.is_empty() || s.lr.len() > 8 {
                return Err(Error::config(
                    source,
                    "search.lr",
                    format!("needs 1 to 8 values, got {}", s.lr.len()),
                ));
            }
            for (i, v) in s.lr.iter().enumerate() {
                range_f(
                    source,
                    &format!("search.lr[{i}]"),
                    *v,
                    LR_RANGE.0,
                    LR_RANGE.1,
                )?;
            }
            if s.r.is_empty() || s.r.len() > 4 {
                return Err(Error::config(
                    source,
                    "search.r",
                    format!("needs 1 to 4 values, got {}", s.r.len()),
                ));
            }
            for (i, v) in s.r.iter().enumerate() {
                range_u(
                    source,
                    &format!("search.r[{i}]"),
                    *v as u64,
                    R_RANGE.0 as u64,
                    R_RANGE.1 as u64,
                )?;
            }
            if s.lr.len() * s.r.len() < 2 {
                return Err(Error::config(
                    source,
                    "search",
                    "needs at least 2 candidates (learning rates × ranks)",
                ));
            }
            range_u(source, "search.rungs", u64::from(s.rungs), 1, 4)?;
            range_f(source, "search.fraction", s.fraction, 0.1, 0.9)?;
        }
        Ok(())
    }

    /// The canonical JSON of the recipe (`name` left out): what [`Method::hash`] hashes.
    pub fn canonical_json(&self) -> String {
        let mut m = self.clone();
        m.normalise();
        m.name = String::new();
        // a struct of plain numbers, strings and lists always serialises
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// The content hash: sha256 hex of `"gradients-method-v1\n"` + [`Method::canonical_json`].
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"gradients-method-v1\n");
        h.update(self.canonical_json().as_bytes());
        hex::encode(h.finalize())
    }

    /// The normalised method as TOML (every field written out).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config("method", "toml", e.to_string()))
    }

    /// The search candidates `(lr, r)` in order (lr ascending, then r), or none.
    pub fn candidates(&self) -> Vec<(f64, usize)> {
        match &self.search {
            None => Vec::new(),
            Some(s) => {
                s.lr.iter()
                    .flat_map(|&lr| s.r.iter().map(move |&r| (lr, r)))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_formatting_order_and_name() {
        let a = Method::parse(
            "[optimizer]\nlr = 2e-4\n[lora]\nr = 8\ntargets = [\"v_proj\", \"q\"]\n",
            "a",
            false,
        )
        .unwrap();
        let b = Method::parse(
            r#"{"name": "mine", "lora": {"targets": ["q_proj", "v_proj", "q_proj"], "r": 8}, "optimizer": {"lr": 0.0002}}"#,
            "b",
            true,
        )
        .unwrap();
        assert_eq!(a.lora.targets, vec!["q_proj", "v_proj"]);
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        let c = Method::parse("[optimizer]\nlr = 3e-4\n", "c", false).unwrap();
        assert_ne!(a.hash(), c.hash());
        // the printed TOML reads back to the same method
        let again = Method::parse(&b.to_toml().unwrap(), "again", false).unwrap();
        assert_eq!(again, b);
        let stored = Method::from_stored(&serde_json::to_string(&b).unwrap(), "db").unwrap();
        assert_eq!(stored, b);
    }
}
