//! Tournaments (SPEC §5): miners' methods meet in seeded knockout brackets (with a group
//! round above 14 entries), the last winner meets the defending champion in the boss round,
//! and the winner's method is archived in the method library (library.rs).
//!
//! This module holds the pure rules, each testable without a model:
//! - here: [`Entry`], [`TaskKind`] and [`select_entries`] (one method per miner, duplicate
//!   hashes collapse to the earliest, at least two entries);
//! - bracket.rs: the seeded knockout pairs, the group round, the per-match task type draw;
//! - boss.rs: the boss round's margin rule, failure rules and majority;
//! - bootstrap.rs: the paired-bootstrap significance gate applied on top of the margin;
//! - grpo.rs: GRPO matches: the score normalised over the compared sides, as a regret
//!   (lower is better) so the rules above apply unchanged;
//! - store.rs: the `tournament_*` SQLite tables that make a run resumable;
//! - run/: the runner that trains and evaluates every method through the validator and
//!   records each result as it finishes;
//! - settle.rs: the weights of a finished tournament on the local chain, and an epoch.
//!
//! Determinism: every random choice is drawn from numpy's PCG64 (`gradients_engine::data::rng`)
//! seeded with `counter_hash(seed, purpose, round, …)`, so a bracket is a pure function of
//! the tournament seed and the entries, and a resumed run redraws exactly the same bracket.

pub mod bootstrap; // significance_gate: paired bootstrap over per-sample losses
pub mod boss; // margin, decide_task, boss_outcome: the boss round's rules
pub mod bracket; // knockout_pairs, groups, draw_task_kind
pub mod grpo; // grpo_standings: GRPO scores normalised over a match, as regrets (lower is better)
pub mod run; // TournamentConfig, Submission, run_tournament, Outcome: the resumable runner
pub mod settle; // pool_input, register_neurons, settle: weights on the local chain, epoch
pub mod store; // tournament_* tables: runs, matches, champion

use std::collections::{HashMap, HashSet};
use std::fmt;

pub use gradients_engine::{Error, Result};

/// A config error of the tournament layer: `terr!(field, "format", args…)` names the field
/// (or input) at fault, like every engine error.
macro_rules! terr {
    ($field:expr, $($arg:tt)*) => {
        gradients_engine::Error::config("tournament", $field, format!($($arg)*))
    };
}
pub(crate) use terr;

/// The fewest entries a local tournament runs with (the live network asks for 8).
pub const MIN_ENTRIES: usize = 2;

/// One miner's submission to a tournament.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The miner's uid on the subnet.
    pub uid: u16,
    /// The miner's hotkey (SS58 or any stable name locally).
    pub hotkey: String,
    /// The content hash of the submitted method (`Method::hash`).
    pub method_hash: String,
    /// When it was submitted (any monotone clock: block, unix seconds, file order).
    pub submitted_at: i64,
}

/// The task types a tournament match can be drawn on. Chat tasks are SFT like instruct and
/// are not drawn separately (the live tournament draws only these three).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// SFT on instruction/input/output (SPEC §1).
    Instruct,
    /// Preference pairs (DPO loss).
    Dpo,
    /// Prompts + reward functions (needs generation).
    Grpo,
}

impl TaskKind {
    /// Every kind, in draw order.
    pub const ALL: [TaskKind; 3] = [TaskKind::Instruct, TaskKind::Dpo, TaskKind::Grpo];

    /// The knockout draw weight (SPEC §5): 0.4 instruct, 0.15 dpo, 0.25 grpo.
    pub fn weight(self) -> f64 {
        match self {
            TaskKind::Instruct => 0.4,
            TaskKind::Dpo => 0.15,
            TaskKind::Grpo => 0.25,
        }
    }

    /// The lowercase name used in tables and output.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Instruct => "instruct",
            TaskKind::Dpo => "dpo",
            TaskKind::Grpo => "grpo",
        }
    }

    /// Parse [`TaskKind::as_str`]'s names.
    pub fn parse(s: &str) -> Result<TaskKind> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                terr!(
                    "task_kind",
                    "unknown task kind {s:?} (expected instruct, dpo or grpo)"
                )
            })
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The entries that play, in submission order (earliest first, then uid):
/// - a miner (uid, or hotkey) submitting several methods keeps only its latest one;
/// - methods with identical hashes are one entry: the earliest submission keeps it;
/// - a method identical to the defending champion's (`champion_hash`) is dropped: the
///   champion's method defends in the boss round and cannot also enter the bracket.
///
/// Fewer than [`MIN_ENTRIES`] left is an error naming the count.
pub fn select_entries(submitted: &[Entry], champion_hash: Option<&str>) -> Result<Vec<Entry>> {
    // Latest submission per miner: later (submitted_at, position) wins.
    let mut latest: HashMap<&str, usize> = HashMap::new();
    let mut latest_uid: HashMap<u16, usize> = HashMap::new();
    for (i, e) in submitted.iter().enumerate() {
        if e.method_hash.is_empty() {
            return Err(terr!(
                "entries",
                "entry {i} (uid {}): empty method hash",
                e.uid
            ));
        }
        for slot in [
            latest.entry(e.hotkey.as_str()).or_insert(i),
            latest_uid.entry(e.uid).or_insert(i),
        ] {
            if submitted[*slot].submitted_at <= e.submitted_at {
                *slot = i;
            }
        }
    }
    let mut keep: Vec<&Entry> = submitted
        .iter()
        .enumerate()
        .filter(|(i, e)| latest[e.hotkey.as_str()] == *i && latest_uid[&e.uid] == *i)
        .map(|(_, e)| e)
        .collect();
    keep.sort_by_key(|e| (e.submitted_at, e.uid));
    let mut seen: HashSet<&str> = HashSet::new();
    if let Some(h) = champion_hash {
        seen.insert(h);
    }
    let out: Vec<Entry> = keep
        .into_iter()
        .filter(|e| seen.insert(e.method_hash.as_str()))
        .cloned()
        .collect();
    if out.len() < MIN_ENTRIES {
        return Err(terr!(
            "entries",
            "a tournament needs at least {MIN_ENTRIES} distinct methods from distinct miners; \
             {} submitted, {} left after one-per-miner and duplicate-hash removal",
            submitted.len(),
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(uid: u16, hash: &str, at: i64) -> Entry {
        Entry {
            uid,
            hotkey: format!("hk{uid}"),
            method_hash: hash.to_string(),
            submitted_at: at,
        }
    }

    #[test]
    fn duplicate_hashes_keep_the_earliest() {
        let got = select_entries(&[e(3, "x", 5), e(1, "y", 2), e(2, "x", 1)], None).unwrap();
        let uids: Vec<u16> = got.iter().map(|e| e.uid).collect();
        assert_eq!(uids, vec![2, 1]);
    }

    #[test]
    fn one_method_per_miner_the_latest() {
        let got = select_entries(&[e(1, "a", 1), e(1, "b", 3), e(2, "c", 2)], None).unwrap();
        let hashes: Vec<&str> = got.iter().map(|e| e.method_hash.as_str()).collect();
        assert_eq!(hashes, vec!["c", "b"]);
    }

    #[test]
    fn champion_copies_are_dropped_and_two_entries_needed() {
        let err = select_entries(&[e(1, "champ", 1), e(2, "b", 2)], Some("champ")).unwrap_err();
        assert!(err.to_string().contains("at least 2"), "{err}");
        let err = select_entries(&[e(1, "a", 1), e(2, "a", 2)], None).unwrap_err();
        assert!(err.to_string().contains("1 left"), "{err}");
        assert!(select_entries(&[e(1, "a", 1), e(2, "", 2)], None).is_err());
    }

    #[test]
    fn task_kind_names_round_trip() {
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(k.as_str()).unwrap(), k);
        }
        assert!(TaskKind::parse("chat").is_err());
    }
}
