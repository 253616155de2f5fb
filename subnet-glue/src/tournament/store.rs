//! The tournament's SQLite tables (component `tournament` of the shared store, store.rs),
//! which make a run resumable and its end counted exactly once:
//! - `tournament_runs`: one row per tournament (its id, seed, settings, the entries and the
//!   champion it started against, `running` → `finished`, the final outcome as JSON, and
//!   whether the weights reached the chain);
//! - `tournament_matches`: one row per finished match, group or boss-round task, written in
//!   one statement as it finishes (primary key: tournament, stage, round, index), so a rerun
//!   reads it back instead of playing it again;
//! - `tournament_champion`: the single defending champion (method, miner, defences).
//!
//! Method results themselves live in the validator's `results` table (validator.rs), keyed
//! by (task, method), so an evaluation finished before a kill is never trained again.
//! Neighbours: run.rs (the only writer), library.rs (the method library tables).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::bootstrap::GateResult;
use super::Result;
use crate::store::Store;

/// Schema steps of the `tournament` component (applied by [`migrate`]).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tournament_runs (
        tournament_id TEXT PRIMARY KEY,
        seed INTEGER NOT NULL,
        settings TEXT NOT NULL,
        entries TEXT NOT NULL,
        champion TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
        outcome TEXT,
        chain_done INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE TABLE tournament_matches (
        tournament_id TEXT NOT NULL REFERENCES tournament_runs(tournament_id),
        stage TEXT NOT NULL CHECK (stage IN ('group', 'knockout', 'boss')),
        round INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        record TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tournament_id, stage, round, idx)
    );
    CREATE TABLE tournament_champion (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        method_hash TEXT NOT NULL,
        uid INTEGER NOT NULL,
        hotkey TEXT NOT NULL,
        defences INTEGER NOT NULL,
        since_tournament TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // v2: the chain block at which settling began, so a rerun after a kill between the
    // weights reaching the chain and `chain_done` can tell that they did (settle.rs)
    "ALTER TABLE tournament_runs ADD COLUMN settle_from_block INTEGER;",
];

/// Apply the tournament and library migrations to `store`.
pub fn migrate(store: &Store) -> Result<()> {
    store.migrate("tournament", MIGRATIONS)?;
    store.migrate("library", crate::library::MIGRATIONS)?;
    Ok(())
}

/// The stage a match belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The group round (above 14 entries).
    Group,
    /// A knockout round.
    Knockout,
    /// A boss-round task.
    Boss,
}

impl Stage {
    /// The lowercase name stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Group => "group",
            Stage::Knockout => "knockout",
            Stage::Boss => "boss",
        }
    }
}

/// One player's showing in a match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Showing {
    /// The method's hash.
    pub method_hash: String,
    /// The miner's uid.
    pub uid: u16,
    /// Playing as the defending champion.
    pub champion: bool,
    /// Ranking loss max(test, synth); `None` when it failed.
    pub loss: Option<f64>,
    /// Hidden-test loss; `None` when it failed.
    pub test_loss: Option<f64>,
    /// Why it failed.
    pub failed: Option<String>,
}

/// A finished match, group or boss-round task, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchRecord {
    /// Its stage.
    pub stage: Stage,
    /// Knockout round (0-based; 0 for the group round and the boss round).
    pub round: u32,
    /// Index within the round (the pairing, group or boss task).
    pub idx: u32,
    /// The task played (`None` for a bye).
    pub task_id: Option<String>,
    /// The task's type.
    pub kind: String,
    /// The players, in bracket order (a knockout's odd player first, the champion second).
    pub players: Vec<Showing>,
    /// Hashes of the players that advance (boss round: the task's winner).
    pub winners: Vec<String>,
    /// The deciding rule, in words.
    pub rule: String,
    /// The margin `t` (boss round).
    pub margin: Option<f64>,
    /// The significance gate's numbers (boss round, when it ran).
    pub gate: Option<GateResult>,
}

/// The stored champion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Champion {
    /// Its method's hash.
    pub method_hash: String,
    /// The miner's uid.
    pub uid: u16,
    /// The miner's hotkey.
    pub hotkey: String,
    /// Consecutive successful defences.
    pub defences: u32,
    /// The tournament that crowned it (or its latest defence).
    pub since_tournament: String,
}

fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| super::terr!("record", "cannot serialise: {e}"))
}

fn parse<T: for<'de> Deserialize<'de>>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| super::terr!(what, "corrupt stored json: {e}"))
}

/// The recorded match `(stage, round, idx)` of `tournament`, if finished.
pub fn load_match(
    store: &Store,
    tournament: &str,
    stage: Stage,
    round: u32,
    idx: u32,
) -> Result<Option<MatchRecord>> {
    let rec: Option<String> = store
        .conn()
        .query_row(
            "SELECT record FROM tournament_matches
             WHERE tournament_id = ?1 AND stage = ?2 AND round = ?3 AND idx = ?4",
            params![tournament, stage.as_str(), round, idx],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store.err(e))?;
    rec.map(|s| parse(&s, "tournament_matches.record"))
        .transpose()
}

/// Record a finished match (one statement: atomic). Recording the same match twice is an
/// error, never a second row.
pub fn save_match(store: &Store, tournament: &str, m: &MatchRecord) -> Result<()> {
    store
        .conn()
        .execute(
            "INSERT INTO tournament_matches (tournament_id, stage, round, idx, record, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                tournament,
                m.stage.as_str(),
                m.round,
                m.idx,
                json(m)?,
                crate::store::unix_now()
            ],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Every recorded match of `tournament`, in (stage, round, index) order.
pub fn matches(store: &Store, tournament: &str) -> Result<Vec<MatchRecord>> {
    let mut st = store
        .conn()
        .prepare(
            "SELECT record FROM tournament_matches WHERE tournament_id = ?1
             ORDER BY CASE stage WHEN 'group' THEN 0 WHEN 'knockout' THEN 1 ELSE 2 END, round, idx",
        )
        .map_err(|e| store.err(e))?;
    let rows = st
        .query_map(params![tournament], |r| r.get::<_, String>(0))
        .map_err(|e| store.err(e))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(parse(
            &r.map_err(|e| store.err(e))?,
            "tournament_matches.record",
        )?);
    }
    Ok(out)
}

/// The defending champion, if any.
pub fn champion(store: &Store) -> Result<Option<Champion>> {
    store
        .conn()
        .query_row(
            "SELECT method_hash, uid, hotkey, defences, since_tournament
             FROM tournament_champion WHERE id = 1",
            [],
            |r| {
                Ok(Champion {
                    method_hash: r.get(0)?,
                    uid: r.get(1)?,
                    hotkey: r.get(2)?,
                    defences: r.get(3)?,
                    since_tournament: r.get(4)?,
                })
            },
        )
        .optional()
        .map_err(|e| store.err(e))
}

/// Replace the champion (inside the caller's transaction).
pub fn set_champion(tx: &rusqlite::Transaction<'_>, c: &Champion) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO tournament_champion (id, method_hash, uid, hotkey, defences, since_tournament, updated_at)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET method_hash = ?1, uid = ?2, hotkey = ?3, defences = ?4,
             since_tournament = ?5, updated_at = ?6",
        params![
            c.method_hash,
            c.uid,
            c.hotkey,
            c.defences,
            c.since_tournament,
            crate::store::unix_now()
        ],
    )?;
    Ok(())
}

/// A tournament's stored header.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    /// The settings JSON it was started with.
    pub settings: String,
    /// The champion it started against.
    pub champion: Option<Champion>,
    /// `running` or `finished`.
    pub finished: bool,
    /// The outcome JSON once finished.
    pub outcome: Option<String>,
    /// Whether the weights were set on the chain.
    pub chain_done: bool,
}

/// The header of `tournament`, if it exists.
pub fn load_run(store: &Store, tournament: &str) -> Result<Option<RunRow>> {
    type Raw = (String, Option<String>, String, Option<String>, bool);
    let raw: Option<Raw> = store
        .conn()
        .query_row(
            "SELECT settings, champion, status, outcome, chain_done
             FROM tournament_runs WHERE tournament_id = ?1",
            params![tournament],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(|e| store.err(e))?;
    let Some((settings, champion, status, outcome, chain_done)) = raw else {
        return Ok(None);
    };
    Ok(Some(RunRow {
        settings,
        champion: champion
            .map(|c| parse(&c, "tournament_runs.champion"))
            .transpose()?,
        finished: status == "finished",
        outcome,
        chain_done,
    }))
}

/// Create the header of a new tournament.
pub fn create_run(
    store: &Store,
    tournament: &str,
    seed: u64,
    settings: &str,
    entries: &str,
    champion: Option<&Champion>,
) -> Result<()> {
    store
        .conn()
        .execute(
            "INSERT INTO tournament_runs (tournament_id, seed, settings, entries, champion,
                 status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
            params![
                tournament,
                seed as i64,
                settings,
                entries,
                champion.map(json).transpose()?,
                crate::store::unix_now()
            ],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Finish `tournament` inside the caller's transaction: store its outcome and mark it
/// finished. Returns false (and changes nothing) when it was already finished.
pub fn finish_run(
    tx: &rusqlite::Transaction<'_>,
    tournament: &str,
    outcome: &str,
) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE tournament_runs SET status = 'finished', outcome = ?2, finished_at = ?3
         WHERE tournament_id = ?1 AND status = 'running'",
        params![tournament, outcome, crate::store::unix_now()],
    )?;
    Ok(n == 1)
}

/// Mark the weights of `tournament` as set on the chain.
pub fn mark_chain_done(store: &Store, tournament: &str) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE tournament_runs SET chain_done = 1 WHERE tournament_id = ?1",
            params![tournament],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Record that settling `tournament` began at chain block `block` (kept if already set).
pub fn mark_settle_started(store: &Store, tournament: &str, block: u64) -> Result<()> {
    store
        .conn()
        .execute(
            "UPDATE tournament_runs SET settle_from_block = ?2
             WHERE tournament_id = ?1 AND settle_from_block IS NULL",
            params![tournament, block as i64],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// The chain block at which settling `tournament` began, if it has.
pub fn settle_started(store: &Store, tournament: &str) -> Result<Option<u64>> {
    let b: Option<Option<i64>> = store
        .conn()
        .query_row(
            "SELECT settle_from_block FROM tournament_runs WHERE tournament_id = ?1",
            params![tournament],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store.err(e))?;
    Ok(b.flatten().map(|b| b as u64))
}
