//! The resumable tournament runner: plays the bracket of bracket.rs and the boss round of
//! boss.rs with real training, through the validator (validator.rs `evaluate_method`: every
//! method with the same data, seed and token budget on the validator's engine).
//!
//! Tasks: every match (and every boss-round task) gets its own task over the dataset of its
//! kind's source (the CLI's defaults: the alpaca demo for instruct, dpo_en_demo for dpo,
//! examples/grpo-prompts.json for grpo, whose source also fixes the generation settings)
//! with its own split seed `counter_hash(seed, stage, round, index)`: a different hidden test
//! split and train split each time, with the task id `<tournament>-k<round>-<index>`,
//! `-g<group>` or `-boss<j>`. A knockout match's kind is drawn with SPEC §5's weights
//! renormalised over the configured sources' kinds, the boss round spreads its tasks over
//! them, and the group round plays instruct (when configured). The sources (kinds, files,
//! mappings) are part of the stored settings, so a resumed run must use the same ones.
//!
//! Resume: each evaluation is stored by the validator as it finishes, each match as soon as
//! it is decided (tournament_matches), and the end (champion, defences, library) in one
//! transaction guarded by the run's `running` status. A rerun with the same database and
//! settings redraws the same bracket (everything is seeded), reads finished matches back,
//! evaluates only what is missing and finishes with the same outcome; a finished tournament
//! just returns its stored outcome.
//!
//! Files: this one holds the settings, the outcome and the resume logic
//! ([`run_tournament`]); runner.rs makes each match's task from the sources and evaluates
//! methods on it; play.rs plays the group round, the knockout and the boss round;
//! finish.rs ranks the players, crowns the champion and archives the winner in one
//! transaction; submissions.rs reads method files into submissions. Neighbours: store.rs
//! (tables), settle.rs (weights and the chain after the end), cli_tournament.rs (the
//! command line).

mod finish; // conclude, finish: the ranking, the champion and the library, in one transaction
mod play; // Progress, group_round, knockout, boss_round: the matches
mod runner; // Runner: tasks from the sources, evaluations through the validator
mod submissions; // submissions_from_paths: method files into submissions

use std::collections::HashMap;
use std::path::PathBuf;

use gradients_engine::data::Mapping;
use gradients_engine::train::grpo::GrpoSection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bootstrap::GateConfig;
use super::boss::Side;
use super::bracket::needs_group_round;
use super::store::{self, Champion, MatchRecord};
use super::{select_entries, terr, Entry, Result, TaskKind};
use crate::method::Method;
use crate::store::Store;
use crate::validator::{store_method, BaseModel, ValidatorOptions};
use play::Progress;
use runner::Runner;

pub use submissions::submissions_from_paths;

/// Where tasks of one kind come from.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSource {
    /// The kind of task it makes.
    pub kind: TaskKind,
    /// The dataset file (resolved path).
    pub dataset: PathBuf,
    /// Its column mapping.
    pub mapping: Mapping,
    /// grpo sources: the generation settings of their tasks (absent from the settings hash
    /// otherwise, so earlier tournaments' stored settings still match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoSection>,
}

/// A miner's submission: its entry, its method and the parent method it names.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Uid, hotkey, hash, submission time.
    pub entry: Entry,
    /// The recipe.
    pub method: Method,
    /// The method it declares it derives from (a hash), for the library's lineage.
    pub parent: Option<String>,
}

/// A tournament's settings. Everything that changes a result is part of the settings a
/// resumed run must match.
#[derive(Clone, Debug)]
pub struct TournamentConfig {
    /// The tournament id (default: derived from the settings and the entries).
    pub tournament_id: Option<String>,
    /// The bracket's seed (pairs, task types, split seeds).
    pub seed: u64,
    /// The base model every task uses (resolved path).
    pub base_model: PathBuf,
    /// One source per supported task kind.
    pub sources: Vec<TaskSource>,
    /// Boss-round tasks (6 on the live network).
    pub boss_tasks: usize,
    /// The significance gate's parameters.
    pub gate: GateConfig,
    /// The validator's side: training seed, token budget, threads, eval sizes, work dir.
    pub validator: ValidatorOptions,
    /// Each task's `hours_to_complete` (the default training wall-clock cap).
    pub hours_to_complete: f64,
}

/// The settings as stored: a resumed run must match them exactly.
#[derive(Serialize)]
struct Settings<'a> {
    seed: u64,
    base_model: &'a PathBuf,
    sources: &'a [TaskSource],
    boss_tasks: usize,
    gate_resamples: usize,
    gate_seed: u64,
    train_seed: u64,
    token_budget: u64,
    max_eval_samples: Option<usize>,
    eval_seq_len: Option<usize>,
    hours_to_complete: f64,
}

/// The boss round's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BossSummary {
    /// Tasks the challenger took.
    pub challenger_tasks: usize,
    /// Tasks the champion kept.
    pub champion_tasks: usize,
    /// `challenger` or `champion`.
    pub winner: Side,
}

/// A finished tournament.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Its id.
    pub tournament_id: String,
    /// The entries that played (after one-per-miner and duplicate removal).
    pub entries: Vec<Entry>,
    /// Every match, group and boss-round task in order.
    pub matches: Vec<MatchRecord>,
    /// The bracket's last winner (the challenger, when there was a champion).
    pub bracket_winner: String,
    /// The champion defending at the start, if any.
    pub champion_before: Option<Champion>,
    /// The boss round, when there was a champion.
    pub boss: Option<BossSummary>,
    /// The champion after this tournament.
    pub champion_after: Champion,
    /// Final ranking, rank 1 first (unique uids).
    pub ranked_uids: Vec<u16>,
    /// Every uid that took part (entries and the champion).
    pub participants: Vec<u16>,
    /// Boss-round ranking losses `(champion, challenger)` of tasks both completed.
    pub boss_losses: Vec<(f64, f64)>,
}

/// Progress reported while a tournament runs.
pub enum Event<'a> {
    /// The tournament starts (or resumes).
    Start {
        /// Its id.
        tournament_id: &'a str,
        /// The entries that play.
        entries: &'a [Entry],
        /// The defending champion.
        champion: Option<&'a Champion>,
        /// Whether it resumes an interrupted run.
        resumed: bool,
    },
    /// A method is about to be evaluated (or read back) on a task.
    Evaluating {
        /// The task.
        task_id: &'a str,
        /// The method.
        method_hash: &'a str,
    },
    /// A match was decided (`replayed`: read back from the database).
    Match {
        /// The record.
        record: &'a MatchRecord,
        /// Read back rather than played now.
        replayed: bool,
    },
}

/// A settled tournament's derived id: sha256 over the settings and the entries.
fn derive_id(settings: &str, entries: &str) -> String {
    let h = Sha256::digest(format!("{settings}\n{entries}").as_bytes());
    format!("tour-{}", &hex::encode(h)[..12])
}

/// Run (or resume, or read back) a tournament among `subs` on `store`.
pub fn run_tournament(
    store: &Store,
    base: &BaseModel,
    cfg: &TournamentConfig,
    subs: &[Submission],
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome> {
    store::migrate(store)?;
    let mut methods = HashMap::new();
    let mut parents = HashMap::new();
    for s in subs {
        let h = store_method(store, &s.method)?;
        if h != s.entry.method_hash {
            return Err(terr!(
                "entries",
                "uid {}: entry hash {} is not its method's hash {h}",
                s.entry.uid,
                s.entry.method_hash
            ));
        }
        methods.insert(h.clone(), s.method.clone());
        if let Some(p) = &s.parent {
            parents.insert(h, p.clone());
        }
    }
    let settings = serde_json::to_string(&Settings {
        seed: cfg.seed,
        base_model: &cfg.base_model,
        sources: &cfg.sources,
        boss_tasks: cfg.boss_tasks,
        gate_resamples: cfg.gate.resamples,
        gate_seed: cfg.gate.seed,
        train_seed: cfg.validator.seed,
        token_budget: cfg.validator.token_budget,
        max_eval_samples: cfg.validator.max_eval_samples,
        eval_seq_len: cfg.validator.eval_seq_len,
        hours_to_complete: cfg.hours_to_complete,
    })
    .map_err(|e| terr!("settings", "{e}"))?;
    let mut submitted: Vec<Entry> = subs.iter().map(|s| s.entry.clone()).collect();
    submitted.sort_by_key(|e| (e.uid, e.submitted_at));
    let entries_json = serde_json::to_string(
        &submitted
            .iter()
            .map(|e| (e.uid, &e.hotkey, &e.method_hash, e.submitted_at))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| terr!("entries", "{e}"))?;
    let id = cfg
        .tournament_id
        .clone()
        .unwrap_or_else(|| derive_id(&settings, &entries_json));
    let (champion, resumed) = match store::load_run(store, &id)? {
        Some(row) if row.finished => {
            let out = row.outcome.unwrap_or_default();
            return serde_json::from_str(&out)
                .map_err(|e| terr!("tournament_runs.outcome", "corrupt stored outcome: {e}"));
        }
        Some(row) => {
            if row.settings != settings {
                return Err(terr!(
                    "settings",
                    "tournament {id} was started with other settings ({}); use the same \
                     flags to resume it or another --id",
                    row.settings
                ));
            }
            (row.champion, true)
        }
        None => {
            let c = store::champion(store)?;
            store::create_run(store, &id, cfg.seed, &settings, &entries_json, c.as_ref())?;
            (c, false)
        }
    };
    let entries = select_entries(
        &submitted,
        champion.as_ref().map(|c| c.method_hash.as_str()),
    )?;
    on_event(Event::Start {
        tournament_id: &id,
        entries: &entries,
        champion: champion.as_ref(),
        resumed,
    });
    let mut r = Runner {
        store,
        base,
        cfg,
        id: id.clone(),
        methods,
        on_event,
    };
    let kinds: Vec<TaskKind> = cfg.sources.iter().map(|s| s.kind).collect();
    let by_hash: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.method_hash.as_str(), i))
        .collect();
    let mut prog = Progress {
        entries: &entries,
        by_hash,
        records: Vec::new(),
        out_at: Vec::new(),
    };
    let mut players: Vec<usize> = (0..entries.len()).collect();
    if needs_group_round(players.len()) {
        players = play::group_round(&mut r, &mut prog, &players, &kinds)?;
    }
    let challenger = play::knockout(&mut r, &mut prog, players, &kinds, champion.as_ref())?;
    let boss = match &champion {
        Some(c) => Some(play::boss_round(&mut r, &challenger, c, &kinds)?),
        None => None,
    };
    finish::conclude(&r, prog, challenger, champion, boss, &parents)
}
