//! DPO evaluation (SPEC §3): the DPO loss of preference pairs with β = 0.1 by default and the
//! base model (adapter disabled) as the reference, plus reward accuracy and margins.
//!
//! For a pair with prompt `x`, chosen `y_c` and rejected `y_r`, `π(y)` is the policy's summed
//! log-probability of the completion tokens given the prompt (`−Σ` token cross-entropy,
//! prompt tokens masked) and `ρ(y)` the same under the reference. With the rewards
//! `r_c = β·(π(y_c) − ρ(y_c))`, `r_r = β·(π(y_r) − ρ(y_r))` and the logit `z = r_c − r_r`,
//! the pair's loss is `−log σ(z)` (computed by [`log_sigmoid`], stable for any `z`). The
//! result reports the mean loss, each pair's loss and margin `z`, and the reward accuracy
//! (the fraction of pairs with `r_c > r_r`, as TRL counts it).
//!
//! Every sequence (prompt + completion, one per forward, unpadded) is scored by itself, so a
//! pair's numbers do not depend on the other pairs, and sums are f64 in token order: the
//! same inputs give bit-identical results on every run and thread count. [`DpoSample`]s are
//! made from tokenize.rs's [`DpoTokens`] by [`dpo_samples`]; the DPO trainer
//! (train/dpo.rs) reuses the log-prob and loss functions; `gradients eval` prints
//! [`DpoEvalResult`] as JSON. mod.rs holds the SFT evaluation.

use serde::Serialize;

use super::EvalResult;
use crate::backend::Backend;
use crate::data::{DpoTokens, TokenizedSample};
use crate::error::{Error, Result};
use crate::lora::LoraState;
use crate::model::batch::{Batch, IGNORE};
use crate::model::llama::Llama;

/// SPEC §3's β of the DPO loss.
pub const DEFAULT_BETA: f64 = 0.1;

/// One preference pair as two full sequences: the prompt (labels −100) followed by the chosen
/// or the rejected completion (labelled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpoSample {
    /// 0-based index of the source record.
    pub row: usize,
    /// Prompt + chosen completion.
    pub chosen: TokenizedSample,
    /// Prompt + rejected completion.
    pub rejected: TokenizedSample,
}

impl DpoSample {
    /// Tokens of both sequences (what a DPO step trains on; the token budget counts these).
    pub fn tokens(&self) -> usize {
        self.chosen.len() + self.rejected.len()
    }

    /// Scored completion tokens of both sequences.
    pub fn targets(&self) -> usize {
        targets_of(&self.chosen) + targets_of(&self.rejected)
    }
}

/// Number of labels with a predecessor (the first token of a sequence predicts nothing).
fn targets_of(s: &TokenizedSample) -> usize {
    s.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
}

fn sequence(row: usize, prompt: &[u32], completion: &[u32], seq_len: usize) -> TokenizedSample {
    let mut input_ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let mut labels: Vec<i32> = std::iter::repeat_n(IGNORE, prompt.len())
        .chain(completion.iter().map(|&t| t as i32))
        .collect();
    input_ids.truncate(seq_len);
    labels.truncate(seq_len);
    TokenizedSample {
        row,
        input_ids,
        labels,
    }
}

/// The pairs of `tokens` as [`DpoSample`]s of at most `seq_len` tokens per sequence, and the
/// number of pairs dropped. Truncation keeps each sequence's head (the prompt survives, the
/// completion's tail is cut, as for SFT); a pair is dropped when either sequence is left
/// without a scored completion token (an empty completion, or a prompt filling `seq_len`).
pub fn dpo_samples(tokens: &[DpoTokens], seq_len: usize) -> Result<(Vec<DpoSample>, usize)> {
    if seq_len < 2 {
        return Err(Error::config(
            "dpo options",
            "seq_len",
            format!("must be at least 2, got {seq_len}"),
        ));
    }
    let mut out = Vec::with_capacity(tokens.len());
    let mut dropped = 0;
    for t in tokens {
        let s = DpoSample {
            row: t.row,
            chosen: sequence(t.row, &t.prompt, &t.chosen, seq_len),
            rejected: sequence(t.row, &t.prompt, &t.rejected, seq_len),
        };
        if targets_of(&s.chosen) == 0 || targets_of(&s.rejected) == 0 {
            dropped += 1;
        } else {
            out.push(s);
        }
    }
    Ok((out, dropped))
}

/// `log σ(x)` without overflow: `−ln(1 + e^{−x})` for `x ≥ 0`, `x − ln(1 + e^{x})` below.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// `σ(x)` without overflow.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The DPO logit `z = β·((π_c − ρ_c) − (π_r − ρ_r))` of a pair from its policy and reference
/// log-probs `[chosen, rejected]`.
pub fn dpo_logit(beta: f64, policy: [f64; 2], reference: [f64; 2]) -> f64 {
    beta * ((policy[0] - reference[0]) - (policy[1] - reference[1]))
}

/// Summed log-probability of `s`'s labelled tokens (`−Σ` token cross-entropy, f64 in token
/// order) and their count, from one forward of `s` alone, with `lora` or the base model.
pub fn sequence_logp<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    s: &TokenizedSample,
) -> Result<(f64, usize)> {
    let vocab = model.config().vocab_size;
    let batch = Batch::unpacked(&[s.as_sample()], s.len().max(1), vocab)?;
    let losses = model.forward_loss(&batch, lora)?;
    let targets = batch.targets();
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (&l, &t) in losses.iter().zip(&targets) {
        if t != IGNORE {
            sum += l as f64;
            n += 1;
        }
    }
    Ok((-sum, n))
}

/// `[chosen, rejected]` log-probs of every pair, with `lora` (the policy) or without (the
/// reference), in the order given.
pub fn pair_logps<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    pairs: &[DpoSample],
) -> Result<Vec<[f64; 2]>> {
    pairs
        .iter()
        .map(|p| {
            let (c, _) = sequence_logp(model, lora, &p.chosen)?;
            let (r, _) = sequence_logp(model, lora, &p.rejected)?;
            Ok([c, r])
        })
        .collect()
}

/// The result of a DPO evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DpoEvalResult {
    /// Mean DPO loss over the pairs.
    pub mean_loss: f64,
    /// Number of pairs scored.
    pub pairs: usize,
    /// Each pair's loss `−log σ(z)`, in the order given.
    pub per_pair_loss: Vec<f64>,
    /// Fraction of pairs whose chosen reward exceeds the rejected one (`z > 0`).
    pub reward_accuracy: f64,
    /// Mean margin `z = r_c − r_r`.
    pub mean_margin: f64,
    /// Each pair's margin `z`.
    pub per_pair_margin: Vec<f64>,
    /// Each pair's chosen reward `β·(π_c − ρ_c)`.
    pub chosen_rewards: Vec<f64>,
    /// Each pair's rejected reward `β·(π_r − ρ_r)`.
    pub rejected_rewards: Vec<f64>,
    /// The β used.
    pub beta: f64,
    /// Scored completion tokens of both sequences of all pairs.
    pub tokens: usize,
    /// Each pair's dataset row (0-based).
    pub rows: Vec<usize>,
}

impl DpoEvalResult {
    /// The SFT-shaped view the trainer records: the mean DPO loss, completion tokens, pairs
    /// as samples and per-pair losses as per-sample losses.
    pub fn as_eval_result(&self) -> EvalResult {
        EvalResult {
            mean_loss: self.mean_loss,
            tokens: self.tokens,
            samples: self.pairs,
            per_sample_loss: self.per_pair_loss.clone(),
            rows: self.rows.clone(),
        }
    }
}

fn check_beta(beta: f64) -> Result<()> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(Error::config(
            "dpo options",
            "beta",
            format!("must be a positive number, got {beta}"),
        ));
    }
    Ok(())
}

/// Score `pairs` from their policy and reference log-probs (`[chosen, rejected]` each).
pub fn score_dpo(
    pairs: &[DpoSample],
    policy: &[[f64; 2]],
    reference: &[[f64; 2]],
    beta: f64,
) -> Result<DpoEvalResult> {
    check_beta(beta)?;
    if pairs.is_empty() {
        return Err(Error::config(
            "eval options",
            "pairs",
            "no pair to evaluate (every row was dropped or the data is empty)",
        ));
    }
    if policy.len() != pairs.len() || reference.len() != pairs.len() {
        return Err(Error::shape(
            "dpo eval",
            format!(
                "{} pairs, {} policy and {} reference log-probs",
                pairs.len(),
                policy.len(),
                reference.len()
            ),
        ));
    }
    let n = pairs.len();
    let mut r = DpoEvalResult {
        mean_loss: 0.0,
        pairs: n,
        per_pair_loss: Vec::with_capacity(n),
        reward_accuracy: 0.0,
        mean_margin: 0.0,
        per_pair_margin: Vec::with_capacity(n),
        chosen_rewards: Vec::with_capacity(n),
        rejected_rewards: Vec::with_capacity(n),
        beta,
        tokens: pairs.iter().map(DpoSample::targets).sum(),
        rows: pairs.iter().map(|p| p.row).collect(),
    };
    let (mut loss, mut margin, mut wins) = (0.0f64, 0.0f64, 0usize);
    for (p, q) in policy.iter().zip(reference) {
        let rc = beta * (p[0] - q[0]);
        let rr = beta * (p[1] - q[1]);
        let z = dpo_logit(beta, *p, *q);
        let l = -log_sigmoid(z);
        loss += l;
        margin += z;
        wins += usize::from(rc > rr);
        r.per_pair_loss.push(l);
        r.per_pair_margin.push(z);
        r.chosen_rewards.push(rc);
        r.rejected_rewards.push(rr);
    }
    r.mean_loss = loss / n as f64;
    r.mean_margin = margin / n as f64;
    r.reward_accuracy = wins as f64 / n as f64;
    Ok(r)
}

/// Evaluate `pairs` with the policy `lora` against the base model (`lora = None`: the base
/// model is its own reference, every loss is ln 2).
pub fn evaluate_dpo<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    pairs: &[DpoSample],
    beta: f64,
) -> Result<DpoEvalResult> {
    check_beta(beta)?;
    let reference = pair_logps(model, None, pairs)?;
    let policy = match lora {
        Some(l) => pair_logps(model, Some(l), pairs)?,
        None => reference.clone(),
    };
    score_dpo(pairs, &policy, &reference, beta)
}
