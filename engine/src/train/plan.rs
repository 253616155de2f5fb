//! The deterministic data side of a run: the SPEC §2 split of the tokenised dataset
//! ([`prepare_data`]), each epoch's rows (packed or one sample per row, ordered by
//! `counter_hash([seed, epoch])`), and the plan of every optimiser step up to the epoch,
//! `max_steps` and token-budget limits ([`plan_steps`]). trainer.rs runs the plan.

use super::config::{resolve_asset, TrainConfig};
use super::trainer::StopReason;
use crate::data::rng::Pcg64;
use crate::data::{pack::pack_rows, read_records, split_indices, tokenize_sft};
use crate::data::{TextTokenizer, TokenizeOptions, TokenizedSample, Truncation};
use crate::error::{Error, Result};
use crate::lora::counter_hash;
use crate::model::{Batch, Sample};

/// One planned optimiser step.
pub struct StepPlan {
    /// Epoch (0-based).
    pub epoch: u32,
    /// Index within the epoch.
    pub position: u64,
    /// Micro-batches → rows → sample indices.
    pub micro: Vec<Vec<Vec<usize>>>,
    /// Sample tokens (padding excluded).
    pub tokens: u64,
}

/// The rows of epoch `epoch`: sample indices per row.
pub fn epoch_rows(
    train: &[TokenizedSample],
    cfg: &TrainConfig,
    epoch: u32,
) -> Result<Vec<Vec<usize>>> {
    if cfg.packing {
        return pack_rows(train, cfg.seq_len, Some(epoch_seed(cfg, epoch)));
    }
    Ok(shuffled_rows(train.len(), cfg, epoch))
}

/// The seed of epoch `epoch`'s order: `counter_hash([seed, epoch])`.
fn epoch_seed(cfg: &TrainConfig, epoch: u32) -> u64 {
    counter_hash(&[cfg.seed, u64::from(epoch)])
}

/// Rows `0..n` shuffled with the epoch's seed, one sample per row (no packing).
pub(crate) fn shuffled_rows(n: usize, cfg: &TrainConfig, epoch: u32) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    Pcg64::new(epoch_seed(cfg, epoch)).shuffle(&mut order);
    order.into_iter().map(|i| vec![i]).collect()
}

/// Plan every step of the run and say what limits it.
pub fn plan_steps(
    train: &[TokenizedSample],
    cfg: &TrainConfig,
) -> Result<(Vec<StepPlan>, StopReason)> {
    plan_epochs(
        cfg,
        |epoch| epoch_rows(train, cfg, epoch),
        |i| train[i].len() as u64,
    )
}

/// The step plan over epochs whose rows `rows_of(epoch)` gives, a sample of `tokens_of(i)`
/// tokens: micro-batches of `micro_batch` rows, `grad_accum` of them per step, stopping at
/// `max_steps`, before the step that would pass `token_budget`, or after the last epoch.
/// Shared by SFT ([`plan_steps`]) and DPO (one pair per row).
pub(crate) fn plan_epochs(
    cfg: &TrainConfig,
    mut rows_of: impl FnMut(u32) -> Result<Vec<Vec<usize>>>,
    tokens_of: impl Fn(usize) -> u64,
) -> Result<(Vec<StepPlan>, StopReason)> {
    let mut plan = Vec::new();
    let mut tokens = 0u64;
    for epoch in 0..cfg.epoch_limit() {
        let rows = rows_of(epoch)?;
        let micro: Vec<Vec<Vec<usize>>> =
            rows.chunks(cfg.micro_batch).map(|c| c.to_vec()).collect();
        for (position, group) in micro.chunks(cfg.grad_accum).enumerate() {
            if cfg.max_steps.is_some_and(|m| plan.len() as u64 >= m) {
                return Ok((plan, StopReason::MaxSteps));
            }
            let t: u64 = group
                .iter()
                .flatten()
                .flatten()
                .map(|&i| tokens_of(i))
                .sum();
            if cfg.token_budget.is_some_and(|b| tokens + t > b) {
                return Ok((plan, StopReason::TokenBudget));
            }
            tokens += t;
            plan.push(StepPlan {
                epoch,
                position: position as u64,
                micro: group.to_vec(),
                tokens: t,
            });
        }
    }
    let reason = if cfg.max_steps.is_some_and(|m| plan.len() as u64 >= m) {
        StopReason::MaxSteps
    } else {
        StopReason::Completed
    };
    Ok((plan, reason))
}

/// Items made from dataset rows (`(row, item)`, at most one per row) divided by `split`: the
/// train items in row order, the test items in the split's order, at most `eval_samples` of
/// them. Rows without an item (dropped by tokenisation or length) are skipped. Shared by the
/// DPO and GRPO runs.
pub(crate) fn split_by_row<T>(
    items: impl IntoIterator<Item = (usize, T)>,
    n_rows: usize,
    split: &crate::data::Split,
    eval_samples: Option<usize>,
) -> (Vec<T>, Vec<T>) {
    let mut by_row: Vec<Option<T>> = (0..n_rows).map(|_| None).collect();
    for (r, item) in items {
        by_row[r] = Some(item);
    }
    let mut train_rows = split.train.clone();
    train_rows.sort_unstable();
    let train = train_rows
        .iter()
        .filter_map(|&r| by_row[r].take())
        .collect();
    let mut test: Vec<T> = split
        .test
        .iter()
        .filter_map(|&r| by_row[r].take())
        .collect();
    if let Some(n) = eval_samples {
        test.truncate(n);
    }
    (train, test)
}

/// Build the batch of one micro-batch.
pub fn micro_batch(
    train: &[TokenizedSample],
    rows: &[Vec<usize>],
    cfg: &TrainConfig,
    vocab: usize,
) -> Result<Batch> {
    if cfg.packing {
        let views: Vec<Vec<Sample<'_>>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| train[i].as_sample()).collect())
            .collect();
        Batch::packed(&views, cfg.seq_len, vocab)
    } else {
        let views: Vec<Sample<'_>> = rows
            .iter()
            .flatten()
            .map(|&i| train[i].as_sample())
            .collect();
        let longest = views
            .iter()
            .map(|s| s.input_ids.len())
            .max()
            .unwrap_or(1)
            .max(1);
        Batch::unpacked(&views, longest, vocab)
    }
}

/// The tokenised train and test samples of `cfg`'s dataset (SPEC §2 split, seed 42).
pub fn prepare_data(
    cfg: &TrainConfig,
    tok: &dyn TextTokenizer,
) -> Result<(Vec<TokenizedSample>, Vec<TokenizedSample>)> {
    let path = resolve_asset(&cfg.dataset)?;
    let records = read_records(&path)?;
    let split = split_indices(records.len(), 42)?;
    let opts = TokenizeOptions {
        seq_len: cfg.seq_len,
        truncation: Truncation::TruncateTail,
    };
    let (samples, _) = tokenize_sft(tok, &cfg.mapping, &records, &path, opts)?;
    let mut by_row: Vec<Option<TokenizedSample>> = vec![None; records.len()];
    for s in samples {
        let r = s.row;
        by_row[r] = Some(s);
    }
    let take =
        |rows: &[usize], by_row: &mut Vec<Option<TokenizedSample>>| -> Vec<TokenizedSample> {
            rows.iter().filter_map(|&r| by_row[r].take()).collect()
        };
    let mut train_rows = split.train.clone();
    train_rows.sort_unstable();
    let train = take(&train_rows, &mut by_row);
    let test = take(&split.test, &mut by_row);
    if train.is_empty() {
        return Err(Error::config(
            path.display().to_string(),
            "rows",
            "no train sample left after the split and tokenisation",
        ));
    }
    Ok((train, test))
}
