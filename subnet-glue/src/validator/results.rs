//! The validator's persistent state (used by validator/mod.rs): the `methods` table (every
//! method evaluated, by content hash, in canonical form) and the `results` table, one row per
//! (task, method hash) with the losses, per-sample test losses (f64 bytes, bit exact), the
//! adapter hash, the failure, tokens, time, the seed and budget used, the search's candidates
//! and the attempt count; for grpo tasks (schema step 2) the raw per-prompt rewards and KL
//! and the per-function means of both sets, as JSON holding each f64's bits (u64) so they
//! read back bit exact. `seq` orders submissions (earliest first) for duplicate detection.

use std::path::PathBuf;

use gradients_engine::{Error, Result};
use rusqlite::{params, OptionalExtension};

use serde::{Deserialize, Serialize};

use super::{GrpoDetail, GrpoSet, MethodResult, ValidatorOptions};
use crate::method::Method;
use crate::store::{unix_now, Store};

/// Schema steps of the `results` component.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE methods (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        recipe TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE results (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        method_hash TEXT NOT NULL REFERENCES methods(hash),
        test_loss REAL,
        synth_loss REAL,
        rank_loss REAL,
        per_sample_test BLOB NOT NULL,
        test_rows BLOB NOT NULL,
        adapter_sha256 TEXT,
        adapter_dir TEXT,
        failed TEXT,
        tokens INTEGER NOT NULL,
        wall_s REAL NOT NULL,
        seed INTEGER NOT NULL,
        token_budget INTEGER NOT NULL,
        search TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (task_id, method_hash)
    );",
    "ALTER TABLE results ADD COLUMN grpo TEXT;",
];

/// One GRPO set as stored: every f64 as its bits.
#[derive(Serialize, Deserialize)]
struct StoredSet {
    mean: Vec<u64>,
    kl: u64,
    rewards: Vec<Vec<u64>>,
    kls: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredGrpo {
    weights: Vec<u64>,
    kinds: Vec<String>,
    test: StoredSet,
    synth: StoredSet,
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn unbits(v: &[u64]) -> Vec<f64> {
    v.iter().map(|&x| f64::from_bits(x)).collect()
}

impl StoredSet {
    fn from(s: &GrpoSet) -> Self {
        StoredSet {
            mean: bits(&s.mean_rewards),
            kl: s.kl.to_bits(),
            rewards: s.rewards.iter().map(|r| bits(r)).collect(),
            kls: bits(&s.kls),
        }
    }

    fn into_set(self) -> GrpoSet {
        GrpoSet {
            mean_rewards: unbits(&self.mean),
            kl: f64::from_bits(self.kl),
            rewards: self.rewards.iter().map(|r| unbits(r)).collect(),
            kls: unbits(&self.kls),
        }
    }
}

fn grpo_json(g: &GrpoDetail) -> Result<String> {
    let s = StoredGrpo {
        weights: bits(&g.weights),
        kinds: g.reward_kinds.clone(),
        test: StoredSet::from(&g.test),
        synth: StoredSet::from(&g.synth),
    };
    serde_json::to_string(&s).map_err(|e| Error::config("results", "grpo", e.to_string()))
}

fn grpo_from_json(store: &Store, text: &str) -> Result<GrpoDetail> {
    let s: StoredGrpo = serde_json::from_str(text)
        .map_err(|e| Error::format(store.path(), format!("result grpo: {e}")))?;
    Ok(GrpoDetail {
        weights: unbits(&s.weights),
        reward_kinds: s.kinds,
        test: s.test.into_set(),
        synth: s.synth.into_set(),
    })
}

/// Record `method` in the `methods` table (first name kept).
pub fn store_method(store: &Store, method: &Method) -> Result<String> {
    let hash = method.hash();
    store
        .conn()
        .execute(
            "INSERT OR IGNORE INTO methods (hash, name, recipe, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, method.name, method.canonical_json(), unix_now()],
        )
        .map_err(|e| store.err(e))?;
    Ok(hash)
}

/// The method stored under `hash`.
pub fn get_method(store: &Store, hash: &str) -> Result<Method> {
    let (name, recipe): (String, String) = store
        .conn()
        .query_row(
            "SELECT name, recipe FROM methods WHERE hash = ?1",
            params![hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| store.err(e))?
        .ok_or_else(|| Error::config("methods", "hash", format!("no method `{hash}`")))?;
    let mut m = Method::from_stored(&recipe, &format!("stored method {hash}"))?;
    m.name = name;
    Ok(m)
}

fn f64s(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

const RESULT_COLUMNS: &str = "task_id, method_hash, test_loss, synth_loss, rank_loss,
    per_sample_test, test_rows, adapter_sha256, adapter_dir, failed, tokens, wall_s, search,
    seq, seed, token_budget, grpo";

pub(super) type StoredResult = (MethodResult, u64, u64);

type RawResult = (StoredResult, String, Option<String>);

fn result_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawResult> {
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let rows: Vec<u8> = r.get(6)?;
    let res = MethodResult {
        task_id: r.get(0)?,
        method_hash: r.get(1)?,
        test_loss: nan(r.get(2)?),
        synth_loss: nan(r.get(3)?),
        rank_loss: nan(r.get(4)?),
        per_sample_test: from_f64s(&r.get::<_, Vec<u8>>(5)?),
        test_rows: rows
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as usize)
            .collect(),
        adapter_sha256: r.get(7)?,
        adapter_dir: r.get::<_, Option<String>>(8)?.map(PathBuf::from),
        failed: r.get(9)?,
        tokens: r.get::<_, i64>(10)? as u64,
        wall_s: r.get(11)?,
        search: Vec::new(),
        seq: r.get(13)?,
        grpo: None,
    };
    let seed = r.get::<_, i64>(14)? as u64;
    let budget = r.get::<_, i64>(15)? as u64;
    Ok(((res, seed, budget), r.get(12)?, r.get(16)?))
}

fn finish_result(store: &Store, raw: RawResult) -> Result<StoredResult> {
    let ((mut res, seed, budget), search, grpo) = raw;
    res.grpo = grpo.map(|g| grpo_from_json(store, &g)).transpose()?;
    res.search = serde_json::from_str(&search)
        .map_err(|e| Error::format(store.path(), format!("result search: {e}")))?;
    Ok((res, seed, budget))
}

pub(super) fn stored(store: &Store, task_id: &str, hash: &str) -> Result<Option<StoredResult>> {
    let raw = store
        .conn()
        .query_row(
            &format!(
                "SELECT {RESULT_COLUMNS} FROM results WHERE task_id = ?1 AND method_hash = ?2"
            ),
            params![task_id, hash],
            result_from_row,
        )
        .optional()
        .map_err(|e| store.err(e))?;
    raw.map(|r| finish_result(store, r)).transpose()
}

/// The stored result of (`task_id`, method `hash`), if any.
pub fn load_result(store: &Store, task_id: &str, hash: &str) -> Result<Option<MethodResult>> {
    Ok(stored(store, task_id, hash)?.map(|(r, _, _)| r))
}

/// Every stored result of `task_id`, in submission order.
pub fn task_results(store: &Store, task_id: &str) -> Result<Vec<MethodResult>> {
    let mut st = store
        .conn()
        .prepare(&format!(
            "SELECT {RESULT_COLUMNS} FROM results WHERE task_id = ?1 ORDER BY seq"
        ))
        .map_err(|e| store.err(e))?;
    let raws = st
        .query_map(params![task_id], result_from_row)
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| store.err(e))?;
    raws.into_iter()
        .map(|r| finish_result(store, r).map(|(r, _, _)| r))
        .collect()
}

pub(super) fn save_result(
    store: &Store,
    r: &MethodResult,
    opts: &ValidatorOptions,
    attempts: u32,
) -> Result<i64> {
    let fin = |v: f64| (!v.is_nan()).then_some(v);
    let rows: Vec<u8> = r
        .test_rows
        .iter()
        .flat_map(|&x| (x as u64).to_le_bytes())
        .collect();
    let search =
        serde_json::to_string(&r.search).map_err(|e| Error::format(store.path(), e.to_string()))?;
    let grpo = r.grpo.as_ref().map(grpo_json).transpose()?;
    let tx = store.transaction()?;
    tx.execute(
        "DELETE FROM results WHERE task_id = ?1 AND method_hash = ?2",
        params![r.task_id, r.method_hash],
    )
    .map_err(|e| store.err(e))?;
    tx.execute(
        "INSERT INTO results (task_id, method_hash, test_loss, synth_loss, rank_loss,
            per_sample_test, test_rows, adapter_sha256, adapter_dir, failed, tokens, wall_s,
            seed, token_budget, search, attempts, created_at, grpo)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18)",
        params![
            r.task_id,
            r.method_hash,
            fin(r.test_loss),
            fin(r.synth_loss),
            fin(r.rank_loss),
            f64s(&r.per_sample_test),
            rows,
            r.adapter_sha256,
            r.adapter_dir
                .as_ref()
                .map(|p| p.to_string_lossy().to_string()),
            r.failed,
            r.tokens as i64,
            r.wall_s,
            opts.seed as i64,
            opts.token_budget as i64,
            search,
            attempts,
            unix_now(),
            grpo,
        ],
    )
    .map_err(|e| store.err(e))?;
    let seq = tx.last_insert_rowid();
    tx.commit().map_err(|e| store.err(e))?;
    Ok(seq)
}

pub(super) fn attempt_count(store: &Store, task_id: &str, hash: &str) -> Result<u32> {
    store
        .conn()
        .query_row(
            "SELECT attempts FROM results WHERE task_id = ?1 AND method_hash = ?2",
            params![task_id, hash],
            |r| r.get(0),
        )
        .map_err(|e| store.err(e))
}
