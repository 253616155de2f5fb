//! Per-task scores (SPEC §3 duplicates, SPEC §4 scores) from the validator's results
//! (validator.rs), given in submission order (earliest first).
//!
//! - Duplicates: a non-failed result whose adapter sha256 equals, or whose test loss is
//!   bit-equal to (finite values only), that of an earlier non-failed result joins its group;
//!   only the group's earliest keeps its place, the others score −1.
//! - The valid results (neither failed nor duplicate) are ranked by `rank_loss` =
//!   max(test, synth) ascending, NaN last, ties by submission order. First place +3; with
//!   more than 8 valid results the bottom max(1, int(0.25·n)) get −1; the rest 0.
//! - GRPO tasks (results carrying `grpo` detail): the valid results are ranked by SPEC §3's
//!   score, DESCENDING (NaN last, ties by submission order). The score is the engine's
//!   `grpo_scores` (each reward's means shifted so the minimum is 0 and divided by the
//!   maximum, over the valid results, weighted, minus 0.5·KL), computed once over the test
//!   means and once over the synthetic-set means. SPEC §2's "max(test, synth)" means "the
//!   worse of the two"; for a score where higher is better that is the MINIMUM:
//!   `score = min(test score, synth score)` (NaN when either is NaN), see [`grpo_task_scores`].
//!   Duplicates and failures are handled as for losses, before normalising.
//! - Failed (or non-fine-tune) results: −1 when at least one valid result exists, else 0.
//! - Every score 0 (no valid result) → the task should be re-evaluated, at most
//!   [`MAX_EVAL_ATTEMPTS`] times in all (validator.rs `evaluate_task`).

use gradients_engine::eval::{grpo_scores, GrpoRaw};
use serde::Serialize;

use crate::validator::MethodResult;

/// Most evaluation attempts of one task (the live network's 4).
pub const MAX_EVAL_ATTEMPTS: u32 = 4;
/// Score of first place.
pub const FIRST_PLACE: f64 = 3.0;
/// Score of the bottom quarter, failures and duplicates.
pub const PENALTY: f64 = -1.0;
/// Above this many valid results the bottom quarter is penalised.
pub const PENALISE_ABOVE: usize = 8;

/// What became of one submission.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Ranked among the valid results (`place` 1 is the best).
    Ranked {
        /// 1-based place.
        place: usize,
    },
    /// The evaluation failed or the adapter is not a fine-tune of the base model.
    Failed {
        /// Why.
        reason: String,
    },
    /// Same adapter or bit-equal test loss as an earlier submission.
    Duplicate {
        /// Index (in the input order) of the earliest submission of the group.
        of: usize,
    },
}

/// One submission's score.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScore {
    /// The method's hash.
    pub method_hash: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// +3, 0 or −1.
    pub score: f64,
    /// GRPO tasks: the SPEC §3 score normalised over the task's valid results (min of test
    /// and synthetic; higher is better); None for other tasks and non-valid results.
    pub grpo_score: Option<f64>,
}

/// The scores of one task, in the input order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScores {
    /// One per input result.
    pub scores: Vec<TaskScore>,
    /// Number of valid results.
    pub valid: usize,
    /// Every score is 0: evaluate again (SPEC §4).
    pub reevaluate: bool,
}

impl TaskScores {
    /// Indices of the valid results from first place down.
    pub fn ranking(&self) -> Vec<usize> {
        let mut r: Vec<(usize, usize)> = self
            .scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.outcome {
                Outcome::Ranked { place } => Some((place, i)),
                _ => None,
            })
            .collect();
        r.sort_unstable();
        r.into_iter().map(|(_, i)| i).collect()
    }
}

/// Whether `a` and `b` are duplicates (same adapter, or bit-equal finite test losses).
fn same(a: &MethodResult, b: &MethodResult) -> bool {
    let adapters = matches!((&a.adapter_sha256, &b.adapter_sha256), (Some(x), Some(y)) if x == y);
    let losses = a.test_loss.is_finite() && a.test_loss.to_bits() == b.test_loss.to_bits();
    adapters || losses
}

/// Score the results of one task, given in submission order.
pub fn score_task(results: &[MethodResult]) -> TaskScores {
    let n = results.len();
    let mut outcome: Vec<Option<Outcome>> = vec![None; n];
    for (i, r) in results.iter().enumerate() {
        if let Some(why) = &r.failed {
            outcome[i] = Some(Outcome::Failed {
                reason: why.clone(),
            });
            continue;
        }
        let earlier = (0..i).find(|&j| results[j].failed.is_none() && same(&results[j], r));
        if let Some(j) = earlier {
            let leader = match &outcome[j] {
                Some(Outcome::Duplicate { of }) => *of,
                _ => j,
            };
            outcome[i] = Some(Outcome::Duplicate { of: leader });
        }
    }
    let mut valid: Vec<usize> = (0..n).filter(|&i| outcome[i].is_none()).collect();
    let grpo = results.iter().any(|r| r.grpo.is_some());
    let mut grpo_score: Vec<Option<f64>> = vec![None; n];
    if grpo {
        let picked: Vec<&MethodResult> = valid.iter().map(|&i| &results[i]).collect();
        for (&i, s) in valid.iter().zip(grpo_task_scores(&picked)) {
            grpo_score[i] = Some(s);
        }
    }
    // lower is better: the loss, or the negated GRPO score
    let key = |i: usize| match grpo_score[i] {
        Some(s) => -s,
        None if grpo => f64::NAN,
        None => results[i].rank_loss,
    };
    // NaN last; ties keep submission order (stable sort)
    valid.sort_by(|&a, &b| {
        let (x, y) = (key(a), key(b));
        match (x.is_nan(), y.is_nan()) {
            (false, false) => x.total_cmp(&y),
            (a_nan, b_nan) => a_nan.cmp(&b_nan),
        }
    });
    let nv = valid.len();
    let bottom = if nv > PENALISE_ABOVE {
        (nv / 4).max(1)
    } else {
        0
    };
    let mut score = vec![0.0f64; n];
    for (place, &i) in valid.iter().enumerate() {
        outcome[i] = Some(Outcome::Ranked { place: place + 1 });
        if place == 0 {
            score[i] = FIRST_PLACE;
        } else if place >= nv - bottom {
            score[i] = PENALTY;
        }
    }
    let scores: Vec<TaskScore> = results
        .iter()
        .zip(outcome)
        .zip(score)
        .zip(grpo_score)
        .map(|(((r, o), mut s), g)| {
            let o = o.unwrap_or(Outcome::Failed {
                reason: "unscored".into(),
            });
            match &o {
                Outcome::Failed { .. } if nv > 0 => s = PENALTY,
                Outcome::Duplicate { .. } => s = PENALTY,
                _ => {}
            }
            TaskScore {
                method_hash: r.method_hash.clone(),
                outcome: o,
                score: s,
                grpo_score: g,
            }
        })
        .collect();
    let reevaluate = n > 0 && scores.iter().all(|s| s.score == 0.0);
    TaskScores {
        scores,
        valid: nv,
        reevaluate,
    }
}

/// SPEC §3's GRPO score of each of `results` (the compared valid submissions of one task),
/// higher is better: `grpo_scores` over the test means and over the synthetic means, and
/// the worse (minimum) of the two; NaN when either is NaN or the result has no GRPO detail
/// (or its reward count differs from the first's).
pub fn grpo_task_scores(results: &[&MethodResult]) -> Vec<f64> {
    let n = results.len();
    let Some(weights) = results
        .iter()
        .find_map(|r| r.grpo.as_ref().map(|g| g.weights.clone()))
    else {
        return vec![f64::NAN; n];
    };
    let k = weights.len();
    let nan_raw = || GrpoRaw {
        mean_rewards: vec![f64::NAN; k],
        kl: f64::NAN,
    };
    let raws = |test: bool| -> Vec<GrpoRaw> {
        results
            .iter()
            .map(|r| match &r.grpo {
                Some(g) if g.weights.len() == k && r.failed.is_none() => {
                    if test {
                        g.test.raw()
                    } else {
                        g.synth.raw()
                    }
                }
                _ => nan_raw(),
            })
            .collect()
    };
    let t = grpo_scores(&raws(true), &weights).unwrap_or_else(|_| vec![f64::NAN; n]);
    let s = grpo_scores(&raws(false), &weights).unwrap_or_else(|_| vec![f64::NAN; n]);
    t.iter()
        .zip(&s)
        .map(|(&a, &b)| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        })
        .collect()
}
