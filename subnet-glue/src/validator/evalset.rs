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
//! `max_eval_samples` keeps the first samples (or pairs) of each set; every entry carries
//! its dataset (or test file) row.

use std::path::Path;

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{
    tokenize_dpo, tokenize_sft, Mapping, Record, TokenizeOptions, TokenizedSample, Truncation,
};
use gradients_engine::eval::{
    dpo_samples, eval_seq_len, evaluate, evaluate_dpo, DpoSample, EvalResult, DEFAULT_BETA,
};
use gradients_engine::lora::LoraState;
use gradients_engine::model::Llama;
use gradients_engine::{Error, Result};

use super::{BaseModel, ValidatorOptions};
use crate::task::Task;

/// One evaluation set of a task.
pub(super) enum EvalSet {
    /// SFT samples (instruct, chat).
    Sft(Vec<TokenizedSample>),
    /// Preference pairs (dpo).
    Dpo(Vec<DpoSample>),
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
        if let Mapping::Dpo(m) = &task.mapping {
            let tokens = tokenize_dpo(tok, m, &picked, file)?;
            let (mut pairs, _dropped) = dpo_samples(&tokens, seq_len)?;
            pairs.truncate(keep);
            for p in &mut pairs {
                p.row = rows[p.row];
                p.chosen.row = p.row;
                p.rejected.row = p.row;
            }
            return Ok(EvalSet::Dpo(pairs));
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

    /// Score the set with `lora` on `model`: the mean loss, per-sample (per-pair) losses
    /// and rows.
    pub(super) fn score(
        &self,
        model: &mut Llama<CpuBackend<f32>>,
        lora: &LoraState<CpuBackend<f32>>,
        batch: usize,
    ) -> Result<EvalResult> {
        match self {
            EvalSet::Sft(s) => evaluate(model, Some(lora), s, batch),
            EvalSet::Dpo(p) => {
                Ok(evaluate_dpo(model, Some(lora), p, DEFAULT_BETA)?.as_eval_result())
            }
        }
    }
}
