//! SFT evaluation (SPEC §3): the mean cross-entropy over the completion tokens of a set of
//! tokenised samples, prompt tokens masked, plus each sample's own mean, with or without a
//! LoRA adapter.
//!
//! Samples are laid one per row (never packed, so attention cannot mix samples), right-padded
//! to the longest of their batch, in fixed-size batches in the order given. Sums are f64 in
//! token order, so the same inputs give bit-identical results on every run. The trainer
//! (train/trainer.rs) calls [`evaluate`] on the test split; `gradients eval` on a file.
//! dpo.rs holds the DPO evaluation ([`evaluate_dpo`]), grpo.rs the GRPO one
//! ([`evaluate_grpo`], [`grpo_scores`]).

pub mod dpo; // evaluate_dpo, DpoEvalResult, DpoSample, dpo_samples, log_sigmoid
pub mod grpo; // evaluate_grpo, GrpoEvalResult, GrpoEvalOptions, grpo_scores, kl_logits

use serde::Serialize;

use crate::backend::Backend;
use crate::data::TokenizedSample;
use crate::error::{Error, Result};
use crate::lora::LoraState;
use crate::model::batch::{Batch, IGNORE};
use crate::model::llama::Llama;
use crate::model::ModelConfig;

pub use dpo::{dpo_samples, evaluate_dpo, DpoEvalResult, DpoSample, DEFAULT_BETA};
pub use grpo::{evaluate_grpo, grpo_scores, GrpoEvalOptions, GrpoEvalResult, GrpoRaw};

/// The result of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean loss over all completion tokens of all samples.
    pub mean_loss: f64,
    /// Number of completion (target) tokens.
    pub tokens: usize,
    /// Number of samples scored (those with at least one target are kept).
    pub samples: usize,
    /// Each sample's mean completion-token loss, in the order given.
    pub per_sample_loss: Vec<f64>,
    /// Each scored sample's dataset row (0-based, from [`TokenizedSample::row`]).
    pub rows: Vec<usize>,
}

/// SPEC §3's evaluation sequence length: 4096, halved when the model's maximum positions are
/// under 8192.
pub fn eval_seq_len(cfg: &ModelConfig) -> usize {
    if cfg.max_position_embeddings < 8192 {
        2048
    } else {
        4096
    }
}

/// Evaluate `samples` (each with at least one label token, at most the model's positions)
/// in batches of `batch_size` rows, with `lora` or the base model.
pub fn evaluate<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    samples: &[TokenizedSample],
    batch_size: usize,
) -> Result<EvalResult> {
    if batch_size == 0 {
        return Err(Error::config("eval options", "batch_size", "must be > 0"));
    }
    if samples.is_empty() {
        return Err(Error::config(
            "eval options",
            "samples",
            "no sample to evaluate (every row was dropped or the data is empty)",
        ));
    }
    let vocab = model.config().vocab_size;
    let mut per_sample = Vec::with_capacity(samples.len());
    let mut total = 0.0f64;
    let mut tokens = 0usize;
    let mut rows = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size) {
        let longest = chunk.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let views: Vec<_> = chunk.iter().map(|s| s.as_sample()).collect();
        let batch = Batch::unpacked(&views, longest, vocab)?;
        let losses = model.forward_loss(&batch, lora)?;
        let targets = batch.targets();
        for (r, s) in chunk.iter().enumerate() {
            let row = r * longest..(r + 1) * longest;
            let mut sum = 0.0f64;
            let mut n = 0usize;
            for t in row {
                if targets[t] != IGNORE {
                    sum += losses[t] as f64;
                    n += 1;
                }
            }
            if n == 0 {
                // SPEC §3: samples with no label token are dropped
                continue;
            }
            per_sample.push(sum / n as f64);
            rows.push(s.row);
            total += sum;
            tokens += n;
        }
    }
    if tokens == 0 {
        return Err(Error::config(
            "eval data",
            "samples",
            "no sample has a completion token to score",
        ));
    }
    Ok(EvalResult {
        mean_loss: total / tokens as f64,
        tokens,
        samples: per_sample.len(),
        per_sample_loss: per_sample,
        rows,
    })
}
