//! [`LocalChain`]: one subnet of a Bittensor-like chain in an SQLite file, with subtensor's
//! extrinsic checks (registration, set_weights, commit-reveal v2), a block clock and Yuma
//! epochs (chain/yuma.rs) whose results are recorded per uid and epoch.
//!
//! Storage: the file may be shared with other components (tasks, tournaments), so this
//! module opens its own connection and only touches tables prefixed `chain_`, created with
//! `CREATE TABLE IF NOT EXISTS`; `chain_meta` holds the schema version, the parameters
//! (JSON), the block, the last epoch block and the epoch counter. WAL mode; every change of
//! more than one row runs in one transaction, so a crash leaves either the old or the new
//! state.
//!
//! Clock: the chain starts at block 1 (block 0 means "never" for `last_update`, as on
//! subtensor). Calls do not move the clock; [`Chain::advance_blocks`](super::Chain::advance_blocks) does, running an epoch
//! whenever `block − last_epoch_block ≥ tempo` (subtensor's stateful scheduler). An epoch
//! distributes `emission_per_block × blocks since the last epoch`, less the owner's cut
//! (`owner_cut`/65535, subtensor's 11796 ≈ 18%), which is recorded but paid to no uid.
//! The epoch counter tags commits: a commit made in epoch e is revealed only while the
//! counter equals `e + reveal_period`, and expires after. Uids are never pruned:
//! registration fails with `SubnetFull` at `max_allowed_uids`. `chain_saved_reveals` is the
//! validator's side, not the chain's: what a commit's reveal needs, kept until revealed.
//!
//! Rooms: params.rs ([`ChainParams`]), neurons.rs (registration, neuron rows, metagraph),
//! weights.rs (set_weights, commit-reveal v2, pending commits), epoch.rs (the clock and Yuma
//! epochs, and the [`Chain`](super::Chain) impl); this file holds the store: schema, open, meta keys,
//! transactions.

mod epoch; // epochs: the clock, epoch_at (Yuma in one transaction), recorded epochs
mod neurons; // register, stake, permits, uid lookups, metagraph, weight/bond rows
mod params; // ChainParams: defaults, the Yuma part, validation
mod weights; // impl Chain: set_weights, commit_weights, reveal_weights; pending commits

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

pub use params::ChainParams;
pub use weights::PendingCommit;

use super::scale::AccountId;
use super::{ChainError, Result};

/// Version of the `chain_*` tables.
pub const SCHEMA_VERSION: i64 = 1;
/// Most unrevealed commits a hotkey may hold.
pub const MAX_PENDING_COMMITS: usize = 10;

/// The embedded chain (see the module doc).
pub struct LocalChain {
    conn: Connection,
    path: PathBuf,
    params: ChainParams,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chain_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chain_neurons (
    uid INTEGER PRIMARY KEY, hotkey BLOB NOT NULL UNIQUE, stake INTEGER NOT NULL,
    validator_permit INTEGER NOT NULL, registered_at INTEGER NOT NULL,
    last_update INTEGER NOT NULL, incentive INTEGER NOT NULL DEFAULT 0,
    dividends INTEGER NOT NULL DEFAULT 0, consensus INTEGER NOT NULL DEFAULT 0,
    validator_trust INTEGER NOT NULL DEFAULT 0, emission INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chain_weights (
    uid INTEGER NOT NULL, target INTEGER NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (uid, target));
CREATE TABLE IF NOT EXISTS chain_bonds (
    uid INTEGER NOT NULL, target INTEGER NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (uid, target));
CREATE TABLE IF NOT EXISTS chain_commits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hotkey BLOB NOT NULL, hash BLOB NOT NULL,
    commit_epoch INTEGER NOT NULL, commit_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chain_saved_reveals (
    hash BLOB PRIMARY KEY, hotkey BLOB NOT NULL, reveal TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chain_epochs (
    epoch INTEGER PRIMARY KEY, block INTEGER NOT NULL, total_emission INTEGER NOT NULL,
    owner_cut INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chain_epoch_neurons (
    epoch INTEGER NOT NULL, uid INTEGER NOT NULL, hotkey BLOB NOT NULL,
    incentive INTEGER NOT NULL, dividends INTEGER NOT NULL, consensus INTEGER NOT NULL,
    validator_trust INTEGER NOT NULL, server_emission INTEGER NOT NULL,
    validator_emission INTEGER NOT NULL, PRIMARY KEY (epoch, uid));
";

fn to_i64(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn hotkey_from_blob(path: &Path, b: Vec<u8>) -> Result<AccountId> {
    let arr: [u8; 32] = b.try_into().map_err(|b: Vec<u8>| ChainError::Store {
        path: path.to_path_buf(),
        msg: format!("hotkey of {} bytes in chain_neurons (expected 32)", b.len()),
    })?;
    Ok(AccountId(arr))
}

impl LocalChain {
    /// Open the chain in `path`, creating its tables with default parameters if new.
    pub fn open(path: &Path) -> Result<LocalChain> {
        Self::open_with(path, &ChainParams::default())
    }

    /// Open the chain in `path`; a new chain gets `params`, an existing one keeps its own.
    pub fn open_with(path: &Path, params: &ChainParams) -> Result<LocalChain> {
        params.validate()?;
        let store = |e: rusqlite::Error| ChainError::Store {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let conn = Connection::open(path).map_err(store)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(store)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(store)?;
        conn.execute_batch(SCHEMA).map_err(store)?;
        let mut chain = LocalChain {
            conn,
            path: path.to_path_buf(),
            params: params.clone(),
        };
        match chain.meta("schema_version")? {
            Some(v) if v == SCHEMA_VERSION.to_string() => {
                let json = chain.meta("params")?.unwrap_or_default();
                chain.params = serde_json::from_str(&json)
                    .map_err(|e| chain.store_err(format!("chain_meta params: {e}")))?;
            }
            Some(v) => {
                return Err(chain.store_err(format!(
                    "chain schema version {v}, this build reads {SCHEMA_VERSION}"
                )))
            }
            None => {
                let json = serde_json::to_string(params)
                    .map_err(|e| chain.store_err(format!("params: {e}")))?;
                let version = SCHEMA_VERSION.to_string();
                chain.write(|tx| {
                    for (k, v) in [
                        ("params", json.as_str()),
                        ("block", "1"),
                        ("last_epoch_block", "0"),
                        ("epoch", "0"),
                        ("schema_version", version.as_str()),
                    ] {
                        tx.execute(
                            "INSERT INTO chain_meta (key, value) VALUES (?1, ?2)",
                            params![k, v],
                        )?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(chain)
    }

    /// The subnet parameters in force.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// Replace the subnet parameters (the owner's/sudo hyperparameter calls).
    pub fn set_params(&mut self, params: ChainParams) -> Result<()> {
        params.validate()?;
        let json =
            serde_json::to_string(&params).map_err(|e| self.store_err(format!("params: {e}")))?;
        self.write(|tx| set_meta(tx, "params", &json))?;
        self.params = params;
        Ok(())
    }

    /// The connection (for the sibling modules' own `chain_*` tables).
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn store_err(&self, msg: impl Into<String>) -> ChainError {
        ChainError::Store {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    pub(super) fn sql(&self, e: rusqlite::Error) -> ChainError {
        self.store_err(e.to_string())
    }

    /// Run `f` in one immediate transaction, committing only if it succeeds.
    pub(super) fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| ChainError::Store {
            path: path.clone(),
            msg: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let out = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value FROM chain_meta WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .meta(key)?
            .ok_or_else(|| self.store_err(format!("chain_meta `{key}` missing")))?;
        v.parse()
            .map_err(|_| self.store_err(format!("chain_meta `{key}` = `{v}` is not a number")))
    }

    /// Epochs run so far (the counter commits are tagged with).
    pub fn epoch_index(&self) -> Result<u64> {
        self.meta_u64("epoch")
    }

    /// Block of the last epoch (0: none yet).
    pub fn last_epoch_block(&self) -> Result<u64> {
        self.meta_u64("last_epoch_block")
    }

    /// The block at which the next epoch runs.
    pub fn next_epoch_block(&self) -> Result<u64> {
        Ok(self.last_epoch_block()? + self.params.tempo)
    }
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO chain_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}
