//! GRPO evaluation (SPEC §3): `Σ reward_weight·normalised_reward − 0.5·KL(base‖tuned)`.
//!
//! [`evaluate_grpo`] scores one submission: for each prompt (data/grpo.rs [`GrpoPrompt`]) the
//! tuned model (base + adapter) generates a completion (model/generate.rs: greedy by default,
//! or seeded sampling keyed by the prompt's dataset row, at most `max_new_tokens`), every
//! reward function (data/reward.rs) scores its decoded text, and the KL is estimated:
//!
//! **KL estimator.** Along the tuned model's own completion `y` (its tokens, plus the end
//! token when it produced one), at each position `t` predicting `y_t` the exact
//! `KL_t = Σ_v p_base(v | x, y_<t) · (log p_base(v | ·) − log p_tuned(v | ·))` between the two
//! full next-token distributions (temperature 1, log-softmax in f64), from one forward of
//! `x + y` with the adapter and one without (model/decode.rs `logits_from`); a prompt's KL is
//! the mean of `KL_t` over its scored positions (clamped at 0 against rounding), and the
//! result's KL the mean over prompts. Without an adapter it is exactly 0.
//!
//! The result keeps each prompt's completion text, raw rewards and KL, and the per-function
//! means over prompts (the raw values). Normalisation needs every compared submission, so it
//! is separate: [`grpo_scores`] shifts each reward's means across submissions so the minimum
//! is 0 and divides by the (shifted) maximum. Everything is f64 in prompt order and each
//! prompt is generated and scored by itself, so the same inputs give bit-identical results
//! on every run and thread count. Cost: generation is KV-cached (one prefill, then one
//! one-token step per new token), plus two full forwards per prompt for the KL.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::data::grpo::{GrpoMapping, GrpoPrompt};
use crate::data::TextTokenizer;
use crate::error::{Error, Result};
use crate::lora::LoraState;
use crate::model::{Llama, Sampling};

/// SPEC §3's KL coefficient.
pub const KL_COEF: f64 = 0.5;
/// Default most new tokens per completion.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;
/// Largest `max_new_tokens`.
pub const MAX_NEW_TOKENS_LIMIT: usize = 4096;

/// How completions are generated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoEvalOptions {
    /// Most new tokens per completion (1..=4096).
    pub max_new_tokens: usize,
    /// Greedy (default) or seeded sampling.
    pub sampling: Sampling,
}

impl Default for GrpoEvalOptions {
    fn default() -> Self {
        GrpoEvalOptions {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            sampling: Sampling::greedy(),
        }
    }
}

impl GrpoEvalOptions {
    /// Check the bounds; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let n = self.max_new_tokens;
        if !(1..=MAX_NEW_TOKENS_LIMIT).contains(&n) {
            return Err(Error::config(
                "grpo eval options",
                "max_new_tokens",
                format!("must be in 1..={MAX_NEW_TOKENS_LIMIT}, got {n}"),
            ));
        }
        self.sampling.validate("grpo eval options")
    }
}

/// One prompt's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrpoPromptResult {
    /// Dataset row (0-based).
    pub row: usize,
    /// The decoded completion.
    pub completion: String,
    /// Its tokens (without the end token).
    pub completion_tokens: usize,
    /// Whether the model produced the end token.
    pub ended: bool,
    /// Each reward function's raw value, in the mapping's order.
    pub rewards: Vec<f64>,
    /// Mean per-position KL(base‖tuned) along the completion.
    pub kl: f64,
}

/// The result of a GRPO evaluation of one submission.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrpoEvalResult {
    /// Prompts scored.
    pub prompts: usize,
    /// Each reward function's kind, in the mapping's order.
    pub reward_kinds: Vec<String>,
    /// Each reward function's weight.
    pub weights: Vec<f64>,
    /// Each reward function's mean raw value over the prompts.
    pub mean_rewards: Vec<f64>,
    /// `Σ weight · mean_rewards` (unnormalised; SPEC's score normalises across submissions).
    pub weighted_reward: f64,
    /// Mean KL(base‖tuned) over the prompts.
    pub mean_kl: f64,
    /// Positions the KL was measured at, in all.
    pub kl_positions: usize,
    /// Per prompt, in the order given.
    pub per_prompt: Vec<GrpoPromptResult>,
    /// The generation options used.
    pub options: GrpoEvalOptions,
}

/// What [`grpo_scores`] needs of one submission.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoRaw {
    /// Mean raw value of each reward function.
    pub mean_rewards: Vec<f64>,
    /// Mean KL(base‖tuned).
    pub kl: f64,
}

impl GrpoEvalResult {
    /// The raw means [`grpo_scores`] compares.
    pub fn raw(&self) -> GrpoRaw {
        GrpoRaw {
            mean_rewards: self.mean_rewards.clone(),
            kl: self.mean_kl,
        }
    }
}

/// Log-softmax of `row` in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// `KL(p‖q)` of two logit rows (`Σ p·(log p − log q)` in f64, index order, clamped at 0).
pub fn kl_logits(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    let kl: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
    kl.max(0.0)
}

/// Generate, score and measure the KL for every prompt of `prompts` with `lora` (`None`: the
/// base model itself, KL 0); see the module doc. `mapping` supplies the reward functions
/// (the prompts must come from it), `tok` the end token and the decoding.
pub fn evaluate_grpo<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    tok: &dyn TextTokenizer,
    mapping: &GrpoMapping,
    prompts: &[GrpoPrompt],
    opts: &GrpoEvalOptions,
) -> Result<GrpoEvalResult> {
    opts.validate()?;
    let rewards = mapping.rewards()?;
    if prompts.is_empty() {
        return Err(Error::config(
            "grpo eval",
            "prompts",
            "no prompt to evaluate (the data is empty)",
        ));
    }
    let max_pos = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size;
    let eos = tok.eos_id();
    let mut per_prompt = Vec::with_capacity(prompts.len());
    let mut kl_positions = 0usize;
    for p in prompts {
        if p.references.len() != rewards.len() {
            return Err(Error::shape(
                "grpo eval",
                format!(
                    "row {}: {} references for {} rewards (prompts from another mapping?)",
                    p.row + 1,
                    p.references.len(),
                    rewards.len()
                ),
            ));
        }
        if p.ids.is_empty() || p.ids.len() >= max_pos {
            return Err(Error::config(
                "grpo eval",
                "prompts",
                format!(
                    "row {}: a prompt of {} tokens leaves no room to generate within the model's {max_pos} positions",
                    p.row + 1,
                    p.ids.len()
                ),
            ));
        }
        let key = [p.row as u64, 0];
        let c = model.generate(&p.ids, opts.max_new_tokens, eos, lora, &opts.sampling, key)?;
        let text = tok.decode(&c.ids)?;
        let scores: Vec<f64> = rewards
            .iter()
            .zip(&p.references)
            .map(|(r, refv)| r.score(&text, refv.as_deref()))
            .collect();
        // the sequence whose positions p.len()-1 .. predict the completion (and its end)
        let mut seq: Vec<u32> = p.ids.iter().chain(&c.ids).copied().collect();
        if c.ended {
            seq.extend(eos);
        }
        let start = p.ids.len() - 1;
        let scored = seq.len() - 1 - start;
        let kl = match lora {
            Some(l) if scored > 0 => {
                let ctx = &seq[..seq.len() - 1];
                let tuned = model.logits_from(ctx, start, Some(l))?;
                let base = model.logits_from(ctx, start, None)?;
                let sum: f64 = tuned
                    .chunks(vocab)
                    .zip(base.chunks(vocab))
                    .map(|(t, b)| kl_logits(b, t))
                    .sum();
                sum / scored as f64
            }
            _ => 0.0,
        };
        kl_positions += scored;
        per_prompt.push(GrpoPromptResult {
            row: p.row,
            completion: text,
            completion_tokens: c.ids.len(),
            ended: c.ended,
            rewards: scores,
            kl,
        });
    }
    let n = per_prompt.len() as f64;
    let mean_rewards: Vec<f64> = (0..rewards.len())
        .map(|k| per_prompt.iter().map(|r| r.rewards[k]).sum::<f64>() / n)
        .collect();
    let weights: Vec<f64> = mapping.rewards.iter().map(|s| s.weight).collect();
    Ok(GrpoEvalResult {
        prompts: per_prompt.len(),
        reward_kinds: mapping.rewards.iter().map(|s| s.kind.clone()).collect(),
        weighted_reward: weights.iter().zip(&mean_rewards).map(|(w, r)| w * r).sum(),
        mean_kl: per_prompt.iter().map(|r| r.kl).sum::<f64>() / n,
        kl_positions,
        mean_rewards,
        weights,
        per_prompt,
        options: *opts,
    })
}

/// SPEC §3's GRPO score of each compared submission (higher is better), from their raw
/// reward means and KLs and the task's reward `weights`:
/// `Σ_k w_k·norm_k − 0.5·KL`, where for reward `k` over the valid submissions
/// `norm_k = (r_k − min_k) / max_j(r_jk − min_k)`. When every valid submission has the same
/// mean for reward `k` (the maximum shifted value is 0: also the case of a single
/// submission) that reward separates no one and `norm_k = 0` for all, so only the rest and
/// the KL decide. A submission with a non-finite reward mean or KL is invalid: it takes no
/// part in the min/max and scores NaN (the worst rank, SPEC §4).
pub fn grpo_scores(results: &[GrpoRaw], weights: &[f64]) -> Result<Vec<f64>> {
    for (i, r) in results.iter().enumerate() {
        if r.mean_rewards.len() != weights.len() {
            return Err(Error::shape(
                "grpo scores",
                format!(
                    "submission {i} has {} reward means for {} weights",
                    r.mean_rewards.len(),
                    weights.len()
                ),
            ));
        }
    }
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(Error::config(
            "grpo scores",
            "weights",
            format!("must be finite and non-negative, got {w}"),
        ));
    }
    let valid: Vec<bool> = results
        .iter()
        .map(|r| r.kl.is_finite() && r.mean_rewards.iter().all(|v| v.is_finite()))
        .collect();
    let mut scores: Vec<f64> = results.iter().map(|r| -KL_COEF * r.kl).collect();
    for (k, w) in weights.iter().enumerate() {
        let vals = || {
            results
                .iter()
                .zip(&valid)
                .filter(|(_, &ok)| ok)
                .map(move |(r, _)| r.mean_rewards[k])
        };
        let min = vals().fold(f64::INFINITY, f64::min);
        let max = vals().map(|v| v - min).fold(0.0f64, f64::max);
        if max > 0.0 {
            for (s, r) in scores.iter_mut().zip(results) {
                *s += w * (r.mean_rewards[k] - min) / max;
            }
        }
    }
    for (s, ok) in scores.iter_mut().zip(&valid) {
        if !ok {
            *s = f64::NAN;
        }
    }
    Ok(scores)
}
