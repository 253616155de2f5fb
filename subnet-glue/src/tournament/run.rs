//! The resumable tournament runner: plays the bracket of bracket.rs and the boss round of
//! boss.rs with real training, through the validator (validator.rs `evaluate_method`: every
//! method with the same data, seed and token budget on the validator's engine).
//!
//! Tasks: every match (and every boss-round task) gets its own task over the same dataset
//! with its own split seed `counter_hash(seed, stage, round, index)`: a different hidden test
//! split and train split each time, from one file (the alpaca demo by default), with the
//! task id `<tournament>-k<round>-<index>`, `-g<group>` or `-boss<j>`.
//!
//! Resume: each evaluation is stored by the validator as it finishes, each match as soon as
//! it is decided (tournament_matches), and the end (champion, defences, library) in one
//! transaction guarded by the run's `running` status. A rerun with the same database and
//! settings redraws the same bracket (everything is seeded), reads finished matches back,
//! evaluates only what is missing and finishes with the same outcome; a finished tournament
//! just returns its stored outcome. Neighbours: store.rs (tables), settle.rs (weights and
//! the chain after the end), cli_tournament.rs (the command line).

use std::collections::HashMap;
use std::path::PathBuf;

use gradients_engine::data::Mapping;
use gradients_engine::lora::counter_hash;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bootstrap::GateConfig;
use super::boss::{boss_outcome, decide_task, knockout_winner, Side, SideResult};
use super::bracket::{
    boss_task_kinds, draw_task_kind, group_advancers, groups, knockout_pairs, needs_group_round,
    Opponent,
};
use super::store::{self, Champion, MatchRecord, Showing, Stage};
use super::{select_entries, terr, Entry, Result, TaskKind};
use crate::library::{archive, Archive, TaskWin};
use crate::method::Method;
use crate::store::Store;
use crate::task::{create_task, get_task, Task, TaskSpec, TaskType};
use crate::validator::{
    evaluate_method, get_method, store_method, BaseModel, MethodResult, ValidatorOptions,
};

/// Where tasks of one kind come from.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSource {
    /// The kind of task it makes.
    pub kind: TaskKind,
    /// The dataset file (resolved path).
    pub dataset: PathBuf,
    /// Its column mapping.
    pub mapping: Mapping,
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

fn stage_tag(stage: Stage) -> u64 {
    match stage {
        Stage::Group => 1,
        Stage::Knockout => 2,
        Stage::Boss => 3,
    }
}

/// The runner's state while a tournament plays.
struct Runner<'a, 'e> {
    store: &'a Store,
    base: &'a BaseModel,
    cfg: &'a TournamentConfig,
    id: String,
    methods: HashMap<String, Method>,
    on_event: &'e mut dyn FnMut(Event<'_>),
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Runner<'_, '_> {
    fn source(&self, kind: TaskKind) -> Result<&TaskSource> {
        self.cfg
            .sources
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| terr!("sources", "no dataset for {kind} tasks"))
    }

    /// The task `(stage, round, idx)` of this tournament, created on first use.
    fn task(&self, stage: Stage, round: u32, idx: u32, kind: TaskKind) -> Result<Task> {
        let id = match stage {
            Stage::Group => format!("{}-g{idx}", self.id),
            Stage::Knockout => format!("{}-k{round}-{idx}", self.id),
            Stage::Boss => format!("{}-boss{idx}", self.id),
        };
        let exists: Option<i64> = self
            .store
            .conn()
            .query_row("SELECT 1 FROM tasks WHERE task_id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.store.err(e))?;
        if exists.is_some() {
            return get_task(self.store, &id);
        }
        let src = self.source(kind)?;
        let spec = TaskSpec {
            task_id: Some(id),
            task_type: match kind {
                TaskKind::Instruct => TaskType::Instruct,
                TaskKind::Dpo => TaskType::Dpo,
                TaskKind::Grpo => {
                    return Err(terr!(
                        "sources",
                        "grpo tasks are not supported by the validator"
                    ))
                }
            },
            base_model: self.cfg.base_model.clone(),
            dataset: src.dataset.clone(),
            test_data: None,
            mapping: src.mapping.clone(),
            hours_to_complete: self.cfg.hours_to_complete,
            split_seed: counter_hash(&[self.cfg.seed, stage_tag(stage), round as u64, idx as u64]),
        };
        Ok(create_task(self.store, &spec)?.task)
    }

    fn method(&self, hash: &str) -> Result<Method> {
        match self.methods.get(hash) {
            Some(m) => Ok(m.clone()),
            None => get_method(self.store, hash),
        }
    }

    fn evaluate(&mut self, task: &Task, hash: &str) -> Result<MethodResult> {
        (self.on_event)(Event::Evaluating {
            task_id: &task.task_id,
            method_hash: hash,
        });
        let m = self.method(hash)?;
        evaluate_method(self.store, task, &m, self.base, &self.cfg.validator)
    }

    fn emit(&mut self, record: &MatchRecord, replayed: bool) {
        (self.on_event)(Event::Match { record, replayed });
    }

    fn showing(entry: (&str, u16), champion: bool, r: &MethodResult) -> Showing {
        Showing {
            method_hash: entry.0.to_string(),
            uid: entry.1,
            champion,
            loss: if r.failed.is_some() {
                None
            } else {
                finite(r.rank_loss)
            },
            test_loss: if r.failed.is_some() {
                None
            } else {
                finite(r.test_loss)
            },
            failed: r.failed.clone(),
        }
    }
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
    let mut records = Vec::new();
    // (entry index, stage order, loss) of every eliminated player, for the ranking.
    let mut out_at: Vec<(usize, u32, Option<f64>)> = Vec::new();
    let by_hash: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.method_hash.as_str(), i))
        .collect();
    let mut players: Vec<usize> = (0..entries.len()).collect();

    if needs_group_round(players.len()) {
        let kind = if kinds.contains(&TaskKind::Instruct) {
            TaskKind::Instruct
        } else {
            *kinds
                .first()
                .ok_or_else(|| terr!("sources", "no task sources"))?
        };
        let mut next = Vec::new();
        for (g, members) in groups(&players, cfg.seed).into_iter().enumerate() {
            let g = g as u32;
            let rec = match store::load_match(store, &id, Stage::Group, 0, g)? {
                Some(rec) => {
                    r.emit(&rec, true);
                    rec
                }
                None => {
                    let task = r.task(Stage::Group, 0, g, kind)?;
                    let mut shows = Vec::new();
                    for &p in &members {
                        let e = &entries[p];
                        let res = r.evaluate(&task, &e.method_hash)?;
                        shows.push(Runner::showing(
                            (e.method_hash.as_str(), e.uid),
                            false,
                            &res,
                        ));
                    }
                    let ranked: Vec<(usize, f64)> = shows
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (i, s.loss.unwrap_or(f64::NAN)))
                        .collect();
                    let winners = group_advancers(&ranked)
                        .into_iter()
                        .map(|i| shows[i].method_hash.clone())
                        .collect();
                    let rec = MatchRecord {
                        stage: Stage::Group,
                        round: 0,
                        idx: g,
                        task_id: Some(task.task_id.clone()),
                        kind: kind.to_string(),
                        players: shows,
                        winners,
                        rule: "top 8 by loss advance".into(),
                        margin: None,
                        gate: None,
                    };
                    store::save_match(store, &id, &rec)?;
                    r.emit(&rec, false);
                    rec
                }
            };
            for s in &rec.players {
                let i = by_hash[s.method_hash.as_str()];
                if rec.winners.contains(&s.method_hash) {
                    next.push(i);
                } else {
                    out_at.push((i, 0, s.loss));
                }
            }
            records.push(rec);
        }
        next.sort();
        players = next;
    }

    let mut round = 0u32;
    while players.len() > 1 {
        let pairs = knockout_pairs(&players, cfg.seed, round, champion.is_some());
        let mut next = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            let i = i as u32;
            let rec = match store::load_match(store, &id, Stage::Knockout, round, i)? {
                Some(rec) => {
                    r.emit(&rec, true);
                    rec
                }
                None => {
                    let a = &entries[p.a];
                    let rec = if p.b == Opponent::Bye {
                        MatchRecord {
                            stage: Stage::Knockout,
                            round,
                            idx: i,
                            task_id: None,
                            kind: String::new(),
                            players: vec![Showing {
                                method_hash: a.method_hash.clone(),
                                uid: a.uid,
                                champion: false,
                                loss: None,
                                test_loss: None,
                                failed: None,
                            }],
                            winners: vec![a.method_hash.clone()],
                            rule: "bye (odd player out, no champion yet)".into(),
                            margin: None,
                            gate: None,
                        }
                    } else {
                        let kind = draw_task_kind(&kinds, cfg.seed, round, i)?;
                        let task = r.task(Stage::Knockout, round, i, kind)?;
                        let (b_hash, b_uid, b_champ) = match p.b {
                            Opponent::Player(b) => {
                                (entries[b].method_hash.clone(), entries[b].uid, false)
                            }
                            _ => {
                                let c = champion
                                    .as_ref()
                                    .ok_or_else(|| terr!("champion", "no champion to meet"))?;
                                (c.method_hash.clone(), c.uid, true)
                            }
                        };
                        let ra = r.evaluate(&task, &a.method_hash)?;
                        let rb = r.evaluate(&task, &b_hash)?;
                        let sa = Runner::showing((a.method_hash.as_str(), a.uid), false, &ra);
                        let sb = Runner::showing((b_hash.as_str(), b_uid), b_champ, &rb);
                        let a_wins = knockout_winner(sa.loss, sb.loss);
                        let winners = match (a_wins, b_champ) {
                            (true, _) => vec![a.method_hash.clone()],
                            (false, false) => vec![b_hash.clone()],
                            // The champion's method beat the odd player: nobody advances.
                            (false, true) => vec![],
                        };
                        MatchRecord {
                            stage: Stage::Knockout,
                            round,
                            idx: i,
                            task_id: Some(task.task_id.clone()),
                            kind: kind.to_string(),
                            players: vec![sa, sb],
                            winners,
                            rule: "lower loss".into(),
                            margin: None,
                            gate: None,
                        }
                    };
                    store::save_match(store, &id, &rec)?;
                    r.emit(&rec, false);
                    rec
                }
            };
            for s in rec.players.iter().filter(|s| !s.champion) {
                let e = by_hash[s.method_hash.as_str()];
                if rec.winners.contains(&s.method_hash) {
                    next.push(e);
                } else {
                    out_at.push((e, round + 1, s.loss));
                }
            }
            records.push(rec);
        }
        players = next;
        round += 1;
    }
    let winner_idx = *players
        .first()
        .ok_or_else(|| terr!("bracket", "the knockout ended without a winner"))?;
    let challenger = entries[winner_idx].clone();

    // The boss round.
    let mut boss = None;
    let mut boss_losses = Vec::new();
    let mut boss_records = Vec::new();
    if let Some(c) = &champion {
        let boss_kinds = boss_task_kinds(&kinds, cfg.boss_tasks)?;
        let mut sides: Vec<Side> = Vec::new();
        for (j, kind) in boss_kinds.into_iter().enumerate() {
            let j = j as u32;
            let rec = match store::load_match(store, &id, Stage::Boss, 0, j)? {
                Some(rec) => {
                    r.emit(&rec, true);
                    rec
                }
                None => {
                    let task = r.task(Stage::Boss, 0, j, kind)?;
                    let rc = r.evaluate(&task, &c.method_hash)?;
                    let rh = r.evaluate(&task, &challenger.method_hash)?;
                    let sc = Runner::showing((c.method_hash.as_str(), c.uid), true, &rc);
                    let sh = Runner::showing(
                        (challenger.method_hash.as_str(), challenger.uid),
                        false,
                        &rh,
                    );
                    let d = decide_task(
                        SideResult {
                            loss: sc.loss,
                            per_sample: &rc.per_sample_test,
                        },
                        SideResult {
                            loss: sh.loss,
                            per_sample: &rh.per_sample_test,
                        },
                        c.defences,
                        &cfg.gate,
                    )?;
                    let winner = match d.winner {
                        Side::Champion => c.method_hash.clone(),
                        Side::Challenger => challenger.method_hash.clone(),
                    };
                    let rec = MatchRecord {
                        stage: Stage::Boss,
                        round: 0,
                        idx: j,
                        task_id: Some(task.task_id.clone()),
                        kind: kind.to_string(),
                        players: vec![sc, sh],
                        winners: vec![winner],
                        rule: d.rule.as_str().to_string(),
                        margin: Some(d.margin),
                        gate: d.gate.clone(),
                    };
                    store::save_match(store, &id, &rec)?;
                    r.emit(&rec, false);
                    rec
                }
            };
            let side = if rec.winners.first() == Some(&challenger.method_hash) {
                Side::Challenger
            } else {
                Side::Champion
            };
            sides.push(side);
            if let (Some(b), Some(h)) = (rec.players[0].loss, rec.players[1].loss) {
                boss_losses.push((b, h));
            }
            boss_records.push(rec);
        }
        let o = boss_outcome(&sides);
        boss = Some(BossSummary {
            challenger_tasks: o.challenger_tasks,
            champion_tasks: o.champion_tasks,
            winner: o.winner,
        });
    }
    records.extend(boss_records);

    // The new champion and the ranking.
    let crowned = Champion {
        method_hash: challenger.method_hash.clone(),
        uid: challenger.uid,
        hotkey: challenger.hotkey.clone(),
        defences: 0,
        since_tournament: id.clone(),
    };
    let (after, defended, runner_up) = match (&champion, &boss) {
        (Some(c), Some(b)) if b.winner == Side::Champion => {
            let mut kept = c.clone();
            kept.defences += 1;
            kept.since_tournament = id.clone();
            (kept, true, Some(challenger.uid))
        }
        (Some(c), _) => (crowned, false, Some(c.uid)),
        (None, _) => (crowned, false, None),
    };
    out_at.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(
                a.2.unwrap_or(f64::INFINITY)
                    .total_cmp(&b.2.unwrap_or(f64::INFINITY)),
            )
            .then(entries[a.0].uid.cmp(&entries[b.0].uid))
    });
    let mut ranked_uids = vec![after.uid];
    ranked_uids.extend(runner_up);
    ranked_uids.extend(out_at.iter().map(|(i, _, _)| entries[*i].uid));
    let mut seen = std::collections::HashSet::new();
    ranked_uids.retain(|u| seen.insert(*u));
    let mut participants: Vec<u16> = entries.iter().map(|e| e.uid).collect();
    participants.extend(champion.as_ref().map(|c| c.uid));
    participants.sort();
    participants.dedup();

    let outcome = Outcome {
        tournament_id: id.clone(),
        entries: entries.clone(),
        matches: records,
        bracket_winner: challenger.method_hash.clone(),
        champion_before: champion.clone(),
        boss,
        champion_after: after.clone(),
        ranked_uids,
        participants,
        boss_losses,
    };
    finish(
        r.store,
        &r,
        &outcome,
        defended,
        parents.get(&after.method_hash),
    )?;
    Ok(outcome)
}

/// The end, in one transaction: the outcome, the champion and the library entry.
fn finish(
    store: &Store,
    r: &Runner<'_, '_>,
    o: &Outcome,
    defended: bool,
    parent: Option<&String>,
) -> Result<()> {
    let json = serde_json::to_string(o).map_err(|e| terr!("outcome", "{e}"))?;
    let winner = &o.champion_after;
    let m = r.method(&winner.method_hash)?;
    let wins: Vec<TaskWin> = o
        .matches
        .iter()
        .filter(|rec| rec.task_id.is_some())
        .filter(|rec| match rec.stage {
            Stage::Group => {
                rec.players
                    .iter()
                    .filter_map(|s| s.loss.map(|l| (l, &s.method_hash)))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, h)| h)
                    == Some(&winner.method_hash)
            }
            _ => rec.winners.first() == Some(&winner.method_hash),
        })
        .map(|rec| {
            let me = rec
                .players
                .iter()
                .find(|s| s.method_hash == winner.method_hash);
            let other = (rec.stage != Stage::Group)
                .then(|| {
                    rec.players
                        .iter()
                        .find(|s| s.method_hash != winner.method_hash)
                })
                .flatten();
            TaskWin {
                tournament_id: o.tournament_id.clone(),
                task_id: rec.task_id.clone().unwrap_or_default(),
                stage: rec.stage.as_str().to_string(),
                kind: rec.kind.clone(),
                loss: me.and_then(|s| s.loss),
                opponent_hash: other.map(|s| s.method_hash.clone()),
                opponent_loss: other.and_then(|s| s.loss),
            }
        })
        .collect();
    let tx = store.transaction()?;
    let sql = |e| store.err(e);
    if !store::finish_run(&tx, &o.tournament_id, &json).map_err(sql)? {
        return Err(terr!(
            "tournament_runs",
            "tournament {} was finished by another process meanwhile",
            o.tournament_id
        ));
    }
    store::set_champion(&tx, winner).map_err(sql)?;
    archive(
        &tx,
        &Archive {
            tournament_id: &o.tournament_id,
            method_hash: &winner.method_hash,
            name: &m.name,
            recipe: &m.canonical_json(),
            parent_hash: parent.map(|s| s.as_str()),
            uid: winner.uid,
            hotkey: &winner.hotkey,
            defended,
            wins: &wins,
        },
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(())
}

/// Read method files (`.toml`, or `.json`) and directories of them (their `.toml`/`.json`
/// files, sorted by name) into submissions: the i-th file (in the order given, directories
/// expanded in name order) is miner uid `first_uid + i` with hotkey `miner-<file stem>`,
/// submitted at time i. A method file may name its parent method with a top-level
/// `parent = "<64 hex digits>"` (read here, not part of the method or its hash).
pub fn submissions_from_paths(paths: &[PathBuf], first_uid: u16) -> Result<Vec<Submission>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| gradients_engine::Error::io(p, e))?;
            let mut found: Vec<PathBuf> = Vec::new();
            for f in rd {
                let f = f.map_err(|e| gradients_engine::Error::io(p, e))?.path();
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
                if f.is_file() && (ext == "toml" || ext == "json") {
                    found.push(f);
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| gradients_engine::Error::io(f, e))?;
        let json = f.extension().and_then(|e| e.to_str()) == Some("json");
        let source = f.display().to_string();
        let (text, parent) = split_parent(&text, &source, json)?;
        let method = Method::parse(&text, &source, json)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("method");
        let uid = u16::try_from(first_uid as usize + i)
            .map_err(|_| terr!("methods", "too many method files for u16 uids"))?;
        out.push(Submission {
            entry: Entry {
                uid,
                hotkey: format!("miner-{stem}"),
                method_hash: method.hash(),
                submitted_at: i as i64,
            },
            method,
            parent,
        });
    }
    Ok(out)
}

/// Remove a top-level `parent` field from a method file's text, returning the rest (as the
/// same format) and the parent hash.
fn split_parent(text: &str, source: &str, json: bool) -> Result<(String, Option<String>)> {
    let bad = |msg: String| gradients_engine::Error::config(source, "parent", msg);
    let check = |v: Option<String>| -> Result<Option<String>> {
        match v {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(h.to_ascii_lowercase()))
            }
            Some(h) => Err(bad(format!(
                "must be a method hash (64 hex digits), got {h:?}"
            ))),
            None => Ok(None),
        }
    };
    if json {
        let mut v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| gradients_engine::Error::config(source, "", e.to_string()))?;
        let parent = match v.as_object_mut().and_then(|o| o.remove("parent")) {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => return Err(bad(format!("must be a string, got {other}"))),
        };
        Ok((v.to_string(), check(parent)?))
    } else {
        let mut t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            gradients_engine::Error::config(source, "", e.to_string())
        })?;
        let parent = match t.remove("parent") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => return Err(bad(format!("must be a string, got {other}"))),
        };
        if parent.is_none() {
            return Ok((text.to_string(), None));
        }
        let rest = toml::to_string(&t).map_err(|e| bad(e.to_string()))?;
        Ok((rest, check(parent)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_read_and_removed() {
        let h = "Ab".repeat(32);
        let (rest, p) = split_parent(
            &format!("parent = \"{h}\"\nname = \"x\"\n"),
            "m.toml",
            false,
        )
        .unwrap();
        assert_eq!(p, Some(h.to_ascii_lowercase()));
        assert!(!rest.contains("parent") && rest.contains("name"));
        let (rest, p) = split_parent(
            &format!("{{\"parent\": \"{h}\", \"name\": \"x\"}}"),
            "m.json",
            true,
        )
        .unwrap();
        assert!(p.is_some() && !rest.contains("parent"));
        let (rest, p) = split_parent("name = \"x\"\n", "m.toml", false).unwrap();
        assert_eq!((rest.as_str(), p), ("name = \"x\"\n", None));
        for bad in ["parent = \"abc\"", "parent = 3"] {
            let e = split_parent(bad, "m.toml", false).unwrap_err().to_string();
            assert!(e.contains("parent") && e.contains("m.toml"), "{e}");
        }
    }

    #[test]
    fn method_files_become_one_entry_per_miner() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "name = \"b\"\n[optimizer]\nlr = 1e-3\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.toml"), "name = \"a\"\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let subs = submissions_from_paths(&[dir.path().to_path_buf()], 1).unwrap();
        let got: Vec<(u16, &str)> = subs
            .iter()
            .map(|s| (s.entry.uid, s.entry.hotkey.as_str()))
            .collect();
        assert_eq!(got, [(1, "miner-a"), (2, "miner-b")]);
        assert_eq!(subs[0].entry.method_hash, subs[0].method.hash());
        assert_ne!(subs[0].entry.method_hash, subs[1].entry.method_hash);
        std::fs::write(dir.path().join("c.toml"), "[lora]\nr = 0\n").unwrap();
        let e = submissions_from_paths(&[dir.path().to_path_buf()], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("lora.r"), "{e}");
    }
}
