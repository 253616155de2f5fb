//! Per-task scores (SPEC §3 duplicates, SPEC §4 scores) from the validator's results
//! (validator.rs), given in submission order (earliest first).
//!
//! - Duplicates: a non-failed result whose adapter sha256 equals, or whose test loss is
//!   bit-equal to (finite values only), that of an earlier non-failed result joins its group;
//!   only the group's earliest keeps its place, the others score −1.
//! - The valid results (neither failed nor duplicate) are ranked by `rank_loss` =
//!   max(test, synth) ascending, NaN last, ties by submission order. First place +3; with
//!   more than 8 valid results the bottom max(1, int(0.25·n)) get −1; the rest 0.
//! - Failed (or non-fine-tune) results: −1 when at least one valid result exists, else 0.
//! - Every score 0 (no valid result) → the task should be re-evaluated, at most
//!   [`MAX_EVAL_ATTEMPTS`] times in all (validator.rs `evaluate_task`).

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
    // NaN last; ties keep submission order (stable sort)
    valid.sort_by(|&a, &b| {
        let (x, y) = (results[a].rank_loss, results[b].rank_loss);
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
        .map(|((r, o), mut s)| {
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
