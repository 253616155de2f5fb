//! The hidden test split and the synthetic set of a task, tokenised for scoring (used by
//! validator/mod.rs), and their scoring with a submitted adapter (SPEC §3):
//! - instruct / chat: one SFT sample per row at the evaluation length, scored by the
//!   engine's `eval::evaluate` (mean completion-token cross-entropy, per-sample means);
//! - dpo: one preference pair per row (prompt + chosen, prompt + rejected, each at most the
//!   evaluation length, head kept; pairs left without a completion token are dropped, as in
//!   training), scored by `eval::evaluate_dpo` with SPEC §3's β = 0.1 and the base model
//!   (adapter disabled) as the reference: the mean DPO loss, and each pair's loss as its
//!   per-sample loss, so ranking, duplicates and the tournament's bootstrap gate treat DPO
//!   like SFT (lower is better).
//!
//! - grpo: one prompt per row (the task's mapping; prompts of `seq_len` tokens or more,
//!   which leave no room to generate, are dropped), scored by the engine's `evaluate_grpo`
//!   (greedy, the task's `max_new_tokens`, exact per-position KL(base‖tuned)): the raw
//!   per-prompt rewards and KL are kept ([`GrpoSet`]), and the SFT-shaped view used by the
//!   rest of the validator is the negated unnormalised score `0.5·KL − Σ w·reward` (mean and
//!   per prompt; lower is better). The normalised SPEC §3 score needs every compared
//!   submission, so scoring.rs computes it.
//!
//! `max_eval_samples` keeps the first samples (or pairs) of each set; every entry carries
//! its dataset (or test file) row.
//!
//! The DPO reference log-probs of a set are the same for every method of a task, so the
//! first evaluation writes them (f64 bits, little-endian) to
//! `work_dir/<task>/dpo-reference-<set>-<key>.bin`, `key` a sha256 over the base model's
//! name and every pair's rows, ids and labels, and later methods read them back. Evaluation
//! is deterministic, so the cached values are the bits a recomputation would give: results
//! do not depend on whether the file was there.

use std::path::{Path, PathBuf};

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{
    grpo_prompts, tokenize_dpo, tokenize_sft, GrpoMapping, GrpoPrompt, Mapping, Record,
    TextTokenizer, TokenizeOptions, TokenizedSample, Truncation,
};
use gradients_engine::eval::dpo::{pair_logps, score_dpo};
use gradients_engine::eval::grpo::KL_COEF;
use gradients_engine::eval::{
    dpo_samples, eval_seq_len, evaluate, evaluate_grpo, DpoSample, EvalResult, GrpoEvalOptions,
    GrpoRaw, DEFAULT_BETA,
};
use gradients_engine::lora::LoraState;
use gradients_engine::model::{Llama, Sampling};
use gradients_engine::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BaseModel, ValidatorOptions};
use crate::task::Task;

/// One evaluation set of a task.
pub(super) enum EvalSet {
    /// SFT samples (instruct, chat).
    Sft(Vec<TokenizedSample>),
    /// Preference pairs (dpo) and the file caching their reference log-probs.
    Dpo(Vec<DpoSample>, PathBuf),
    /// GRPO prompts with their mapping and generation options.
    Grpo(Vec<GrpoPrompt>, Box<GrpoMapping>, GrpoEvalOptions),
}

/// What a GRPO set's scoring keeps of one submission (raw values, prompt order).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrpoSet {
    /// Mean raw value of each reward function.
    pub mean_rewards: Vec<f64>,
    /// Mean KL(base‖tuned) over prompts.
    pub kl: f64,
    /// Per prompt: each reward function's raw value.
    pub rewards: Vec<Vec<f64>>,
    /// Per prompt: its KL.
    pub kls: Vec<f64>,
}

/// A GRPO result's raw values on both sets (validator/mod.rs `MethodResult::grpo`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrpoDetail {
    /// The task's reward weights (mapping order).
    pub weights: Vec<f64>,
    /// The reward functions' kinds (mapping order).
    pub reward_kinds: Vec<String>,
    /// On the hidden test prompts.
    pub test: GrpoSet,
    /// On the synthetic set.
    pub synth: GrpoSet,
}

impl GrpoSet {
    /// The raw means `grpo_scores` compares.
    pub fn raw(&self) -> GrpoRaw {
        GrpoRaw {
            mean_rewards: self.mean_rewards.clone(),
            kl: self.kl,
        }
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        self.kl.is_finite()
            && self.mean_rewards.iter().all(|v| v.is_finite())
            && self.kls.iter().all(|v| v.is_finite())
            && self.rewards.iter().flatten().all(|v| v.is_finite())
    }
}

/// The cache file of `pairs`' reference log-probs in `dir` (module docs).
fn reference_file(dir: &Path, set: &str, base: &str, pairs: &[DpoSample]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(base.as_bytes());
    for p in pairs {
        h.update((p.row as u64).to_le_bytes());
        for s in [&p.chosen, &p.rejected] {
            h.update((s.len() as u64).to_le_bytes());
            for (&id, &l) in s.input_ids.iter().zip(&s.labels) {
                h.update(id.to_le_bytes());
                h.update(l.to_le_bytes());
            }
        }
    }
    let key = hex::encode(h.finalize());
    dir.join(format!("dpo-reference-{set}-{}.bin", &key[..16]))
}

/// The cached reference log-probs of `n` pairs, when the file holds exactly that many.
fn read_reference(path: &Path, n: usize) -> Option<Vec<[f64; 2]>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != 16 * n {
        return None;
    }
    let f = |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    Some(
        bytes
            .chunks_exact(16)
            .map(|c| [f(&c[..8]), f(&c[8..])])
            .collect(),
    )
}

impl EvalSet {
    /// Tokenise `rows` of `records` (`file` names them) with the task's mapping; each
    /// entry's `row` is mapped back to its dataset row.
    pub(super) fn build(
        task: &Task,
        base: &BaseModel,
        records: &[Record],
        rows: &[usize],
        file: &Path,
        opts: &ValidatorOptions,
        cache: (&Path, &str),
    ) -> Result<EvalSet> {
        let picked: Vec<Record> = rows
            .iter()
            .map(|&r| {
                records.get(r).cloned().ok_or_else(|| {
                    Error::format(
                        file,
                        format!("split row {r} is beyond the file's {} rows", records.len()),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let seq_len = opts
            .eval_seq_len
            .unwrap_or_else(|| eval_seq_len(&base.config))
            .min(base.config.max_position_embeddings.max(2));
        let keep = opts.max_eval_samples.unwrap_or(usize::MAX);
        let tok = base.tokenizer.as_ref();
        if let Mapping::Grpo(m) = &task.mapping {
            let g = task.grpo.clone().unwrap_or_default();
            let opts = GrpoEvalOptions {
                max_new_tokens: g.max_new_tokens,
                sampling: Sampling::greedy(),
            };
            let mut prompts: Vec<GrpoPrompt> = grpo_prompts(tok, m, &picked, file)?
                .into_iter()
                .filter(|p| p.ids.len() < seq_len)
                .collect();
            prompts.truncate(keep);
            for p in &mut prompts {
                p.row = rows[p.row];
            }
            return Ok(EvalSet::Grpo(prompts, Box::new(m.clone()), opts));
        }
        if let Mapping::Dpo(m) = &task.mapping {
            let tokens = tokenize_dpo(tok, m, &picked, file)?;
            let (mut pairs, _dropped) = dpo_samples(&tokens, seq_len)?;
            pairs.truncate(keep);
            for p in &mut pairs {
                p.row = rows[p.row];
                p.chosen.row = p.row;
                p.rejected.row = p.row;
            }
            let path = reference_file(cache.0, cache.1, &base.name, &pairs);
            return Ok(EvalSet::Dpo(pairs, path));
        }
        let topts = TokenizeOptions {
            seq_len,
            truncation: Truncation::TruncateTail,
        };
        let (mut samples, _) = tokenize_sft(tok, &task.mapping, &picked, file, topts)?;
        samples.truncate(keep);
        for s in &mut samples {
            s.row = rows[s.row];
        }
        Ok(EvalSet::Sft(samples))
    }

    /// Score the set with `lora` on `model`: the mean loss, per-sample (per-pair, per-prompt)
    /// losses and rows, and for GRPO the raw values.
    pub(super) fn score(
        &self,
        model: &mut Llama<CpuBackend<f32>>,
        lora: &LoraState<CpuBackend<f32>>,
        tok: &dyn TextTokenizer,
        batch: usize,
    ) -> Result<(EvalResult, Option<GrpoSet>)> {
        match self {
            EvalSet::Sft(s) => Ok((evaluate(model, Some(lora), s, batch)?, None)),
            EvalSet::Grpo(prompts, mapping, opts) => {
                let r = evaluate_grpo(model, Some(lora), tok, mapping, prompts, opts)?;
                let weighted =
                    |rw: &[f64]| -> f64 { r.weights.iter().zip(rw).map(|(w, v)| w * v).sum() };
                let eval = EvalResult {
                    mean_loss: KL_COEF * r.mean_kl - r.weighted_reward,
                    tokens: r.kl_positions,
                    samples: r.prompts,
                    per_sample_loss: r
                        .per_prompt
                        .iter()
                        .map(|p| KL_COEF * p.kl - weighted(&p.rewards))
                        .collect(),
                    rows: r.per_prompt.iter().map(|p| p.row).collect(),
                };
                let set = GrpoSet {
                    mean_rewards: r.mean_rewards.clone(),
                    kl: r.mean_kl,
                    rewards: r.per_prompt.iter().map(|p| p.rewards.clone()).collect(),
                    kls: r.per_prompt.iter().map(|p| p.kl).collect(),
                };
                Ok((eval, Some(set)))
            }
            EvalSet::Dpo(pairs, cache) => {
                let reference = match read_reference(cache, pairs.len()) {
                    Some(r) => r,
                    None => {
                        let r = pair_logps(model, None, pairs)?;
                        let bytes: Vec<u8> =
                            r.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
                        gradients_engine::io::write_atomic(cache, &bytes)?;
                        r
                    }
                };
                let policy = pair_logps(model, Some(lora), pairs)?;
                Ok((
                    score_dpo(pairs, &policy, &reference, DEFAULT_BETA)?.as_eval_result(),
                    None,
                ))
            }
        }
    }
}
