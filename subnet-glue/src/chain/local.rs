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
//! subtensor). Calls do not move the clock; [`Chain::advance_blocks`] does, running an epoch
//! whenever `block − last_epoch_block ≥ tempo` (subtensor's stateful scheduler). An epoch
//! distributes `emission_per_block × blocks since the last epoch`, less the owner's cut
//! (`owner_cut`/65535, subtensor's 11796 ≈ 18%), which is recorded but paid to no uid.
//! The epoch counter tags commits: a commit made in epoch e is revealed only while the
//! counter equals `e + reveal_period`, and expires after. Uids are never pruned:
//! registration fails with `SubnetFull` at `max_allowed_uids`. `chain_saved_reveals` is the
//! validator's side, not the chain's: what a commit's reveal needs, kept until revealed.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

use super::scale::{commit_hash, AccountId};
use super::yuma::{self, EpochInput, YumaParams};
use super::{Chain, ChainError, EpochNeuron, EpochRecord, Metagraph, Neuron, Reject, Result};

/// Version of the `chain_*` tables.
pub const SCHEMA_VERSION: i64 = 1;
/// Most unrevealed commits a hotkey may hold.
pub const MAX_PENDING_COMMITS: usize = 10;

/// Subnet parameters (subtensor's hyperparameters of the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainParams {
    /// Subnet id (goes into the commit hash).
    pub netuid: u16,
    /// Blocks between epochs.
    pub tempo: u64,
    /// Blocks after which a validator's weights no longer count.
    pub activity_cutoff: u64,
    /// Blocks between two set_weights (or commits) of one uid.
    pub weights_rate_limit: u64,
    /// Fewest weights a non-self set_weights must carry (capped at the subnet size).
    pub min_allowed_weights: u16,
    /// Most uids on the subnet.
    pub max_allowed_uids: u16,
    /// Validator permits go to the top this-many stakes.
    pub max_allowed_validators: u16,
    /// Weights must carry a version key ≥ this (0: any).
    pub weights_version_key: u64,
    /// Weights only through commit-reveal v2.
    pub commit_reveal: bool,
    /// Epochs between a commit and its reveal.
    pub reveal_period: u64,
    /// Rao emitted per block.
    pub emission_per_block: u64,
    /// Subnet owner's cut as u16 proportion (11796 ≈ 18%).
    pub owner_cut: u16,
    /// Consensus majority, u16 proportion.
    pub kappa: u16,
    /// Bonds penalty, u16 proportion.
    pub bonds_penalty: u16,
    /// Bonds EMA memory in millionths (α = 1 − x/10⁶).
    pub bonds_moving_average: u64,
    /// Liquid alpha on.
    pub liquid_alpha: bool,
    /// Liquid alpha bounds, u16 proportions.
    pub alpha_low: u16,
    /// Liquid alpha high bound.
    pub alpha_high: u16,
    /// Liquid alpha sigmoid steepness.
    pub alpha_sigmoid_steepness: i16,
    /// Yuma 3 bonds (else the original Yuma).
    pub yuma3: bool,
}

impl Default for ChainParams {
    fn default() -> Self {
        let y = YumaParams::default();
        ChainParams {
            netuid: 56,
            tempo: y.tempo,
            activity_cutoff: y.activity_cutoff,
            weights_rate_limit: 100,
            min_allowed_weights: 1,
            max_allowed_uids: 256,
            max_allowed_validators: y.max_allowed_validators,
            weights_version_key: 0,
            commit_reveal: false,
            reveal_period: 1,
            emission_per_block: 1_000_000_000,
            owner_cut: 11_796,
            kappa: y.kappa,
            bonds_penalty: y.bonds_penalty,
            bonds_moving_average: y.bonds_moving_average,
            liquid_alpha: y.liquid_alpha,
            alpha_low: y.alpha_low,
            alpha_high: y.alpha_high,
            alpha_sigmoid_steepness: y.alpha_sigmoid_steepness,
            yuma3: y.yuma3,
        }
    }
}

impl ChainParams {
    /// The consensus part.
    pub fn yuma(&self) -> YumaParams {
        YumaParams {
            tempo: self.tempo,
            activity_cutoff: self.activity_cutoff,
            kappa: self.kappa,
            bonds_penalty: self.bonds_penalty,
            bonds_moving_average: self.bonds_moving_average,
            liquid_alpha: self.liquid_alpha,
            alpha_low: self.alpha_low,
            alpha_high: self.alpha_high,
            alpha_sigmoid_steepness: self.alpha_sigmoid_steepness,
            yuma3: self.yuma3,
            max_allowed_validators: self.max_allowed_validators,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |f: &str, m: &str| Err(ChainError::input(format!("params.{f}"), m));
        if self.tempo == 0 {
            return bad("tempo", "must be at least 1 block");
        }
        if self.reveal_period == 0 {
            return bad("reveal_period", "must be at least 1 epoch");
        }
        if self.bonds_moving_average > 1_000_000 {
            return bad("bonds_moving_average", "must be at most 1000000");
        }
        if self.alpha_low > self.alpha_high {
            return bad("alpha_low", "must not exceed alpha_high");
        }
        if self.emission_per_block > i64::MAX as u64 / 1_000_000 {
            return bad("emission_per_block", "too large");
        }
        Ok(())
    }
}

/// One unrevealed commit as the chain holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommit {
    /// The committing hotkey.
    pub hotkey: AccountId,
    /// The commit hash.
    pub hash: [u8; 32],
    /// The epoch counter when committed.
    pub commit_epoch: u64,
    /// The block of the commit.
    pub commit_block: u64,
}

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

    /// Number of registered uids.
    pub fn n(&self) -> Result<u16> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM chain_neurons", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        Ok(n as u16)
    }

    /// The uid of `hotkey`, if registered.
    pub fn uid_of(&self, hotkey: &AccountId) -> Result<Option<u16>> {
        self.conn
            .query_row(
                "SELECT uid FROM chain_neurons WHERE hotkey = ?1",
                params![&hotkey.0[..]],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(|u| u as u16))
            .map_err(|e| self.sql(e))
    }

    fn require_uid(&self, call: &'static str, hotkey: &AccountId) -> Result<u16> {
        self.uid_of(hotkey)?.ok_or_else(|| {
            ChainError::rejected(
                call,
                Reject::HotKeyNotRegisteredInSubNet,
                format!(
                    "hotkey {hotkey} is not registered on netuid {}",
                    self.params.netuid
                ),
            )
        })
    }

    /// Register `hotkey` with `stake` at the current block; returns its uid.
    pub fn register(&mut self, hotkey: &AccountId, stake: u64) -> Result<u16> {
        if let Some(uid) = self.uid_of(hotkey)? {
            return Err(ChainError::rejected(
                "register",
                Reject::HotKeyAlreadyRegisteredInSubNet,
                format!("hotkey {hotkey} already has uid {uid}"),
            ));
        }
        let n = self.n()?;
        if n >= self.params.max_allowed_uids {
            return Err(ChainError::rejected(
                "register",
                Reject::SubnetFull,
                format!("all {} uids are taken", self.params.max_allowed_uids),
            ));
        }
        let block = self.current_block()?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO chain_neurons (uid, hotkey, stake, validator_permit, registered_at,
                 last_update) VALUES (?1, ?2, ?3, 0, ?4, 0)",
                params![n, &hotkey.0[..], to_i64(stake), to_i64(block)],
            )
            .map(|_| ())
        })?;
        Ok(n)
    }

    /// Set the stake of a registered hotkey.
    pub fn set_stake(&mut self, hotkey: &AccountId, stake: u64) -> Result<()> {
        let uid = self.require_uid("add_stake", hotkey)?;
        self.write(|tx| {
            tx.execute(
                "UPDATE chain_neurons SET stake = ?1 WHERE uid = ?2",
                params![to_i64(stake), uid],
            )
            .map(|_| ())
        })
    }

    /// Grant or revoke a validator permit by hand (epochs recompute permits from stake).
    pub fn set_validator_permit(&mut self, uid: u16, permit: bool) -> Result<()> {
        let changed = self.write(|tx| {
            tx.execute(
                "UPDATE chain_neurons SET validator_permit = ?1 WHERE uid = ?2",
                params![permit, uid],
            )
        })?;
        if changed == 0 {
            return Err(ChainError::input("uid", format!("no uid {uid}")));
        }
        Ok(())
    }

    /// The weight row of `uid` as stored (max-upscaled u16), ascending target.
    pub fn weights_of(&self, uid: u16) -> Result<Vec<(u16, u16)>> {
        self.pairs(
            "SELECT target, value FROM chain_weights WHERE uid = ?1 ORDER BY target",
            uid,
        )
    }

    /// The bond row of `uid` as stored (u16), ascending target.
    pub fn bonds_of(&self, uid: u16) -> Result<Vec<(u16, u16)>> {
        self.pairs(
            "SELECT target, value FROM chain_bonds WHERE uid = ?1 ORDER BY target",
            uid,
        )
    }

    fn pairs(&self, sql: &str, uid: u16) -> Result<Vec<(u16, u16)>> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![uid], |r| {
                Ok((r.get::<_, i64>(0)? as u16, r.get::<_, i64>(1)? as u16))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    /// Unrevealed commits of `hotkey`: `(hash, commit_epoch, commit_block)`, oldest first.
    pub fn pending_commits(&self, hotkey: &AccountId) -> Result<Vec<([u8; 32], u64, u64)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT hash, commit_epoch, commit_block FROM chain_commits WHERE hotkey = ?1
                 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![&hotkey.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (h, e, b) = row.map_err(|e| self.sql(e))?;
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| self.store_err("commit hash of the wrong length"))?;
            out.push((h, e, b));
        }
        Ok(out)
    }

    /// Unrevealed commits of every hotkey, in commit order (expired ones included until the hotkey's next commit or reveal drops
    /// them; compare `commit_epoch + reveal_period` with [`LocalChain::epoch_index`]).
    pub fn all_pending_commits(&self) -> Result<Vec<PendingCommit>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT hotkey, hash, commit_epoch, commit_block FROM chain_commits ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (k, h, e, b) = row.map_err(|e| self.sql(e))?;
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| self.store_err("commit hash of the wrong length"))?;
            out.push(PendingCommit {
                hotkey: hotkey_from_blob(&self.path, k)?,
                hash: h,
                commit_epoch: e,
                commit_block: b,
            });
        }
        Ok(out)
    }

    /// Every recorded epoch, oldest first.
    pub fn epochs(&self) -> Result<Vec<EpochRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT epoch FROM chain_epochs ORDER BY epoch")
            .map_err(|e| self.sql(e))?;
        let ids = st
            .query_map([], |r| r.get::<_, i64>(0))
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .map_err(|e| self.sql(e))?;
        ids.into_iter()
            .map(|e| self.epoch_record(e as u64))
            .collect()
    }

    /// The record of epoch `epoch`.
    pub fn epoch_record(&self, epoch: u64) -> Result<EpochRecord> {
        let (block, total, cut): (i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT block, total_emission, owner_cut FROM chain_epochs WHERE epoch = ?1",
                params![to_i64(epoch)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.sql(e))?;
        let mut st = self
            .conn
            .prepare(
                "SELECT uid, hotkey, incentive, dividends, consensus, validator_trust,
                 server_emission, validator_emission FROM chain_epoch_neurons WHERE epoch = ?1
                 ORDER BY uid",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![to_i64(epoch)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    [r.get::<_, i64>(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut neurons = Vec::new();
        for row in rows {
            let (uid, hk, f, se, ve) = row.map_err(|e| self.sql(e))?;
            neurons.push(EpochNeuron {
                uid: uid as u16,
                hotkey: hotkey_from_blob(&self.path, hk)?,
                incentive: f[0] as u16,
                dividends: f[1] as u16,
                consensus: f[2] as u16,
                validator_trust: f[3] as u16,
                server_emission: se as u64,
                validator_emission: ve as u64,
            });
        }
        Ok(EpochRecord {
            epoch,
            block: block as u64,
            total_emission: total as u64,
            owner_cut: cut as u64,
            neurons,
        })
    }

    /// The checks of subtensor's `internal_set_weights` that do not depend on commit-reveal,
    /// in its order; returns the caller's uid.
    fn check_weights(
        &self,
        call: &'static str,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
        rate_limited: bool,
    ) -> Result<u16> {
        let rej = |reason, msg: String| Err(ChainError::rejected(call, reason, msg));
        if uids.len() != values.len() {
            return rej(
                Reject::WeightVecNotEqualSize,
                format!("{} uids but {} values", uids.len(), values.len()),
            );
        }
        let n = self.n()?;
        if uids.len() > n as usize {
            return rej(
                Reject::UidsLengthExceedUidsInSubNet,
                format!("{} uids on a subnet of {n}", uids.len()),
            );
        }
        let uid = self.require_uid(call, hotkey)?;
        let key = self.params.weights_version_key;
        if !(key == 0 || version_key >= key) {
            return rej(
                Reject::IncorrectWeightVersionKey,
                format!("version_key {version_key} is below the subnet's {key}"),
            );
        }
        let me = self.neuron(uid)?;
        let block = self.current_block()?;
        if rate_limited
            && me.last_update != 0
            && block.saturating_sub(me.last_update) < self.params.weights_rate_limit
        {
            return rej(
                Reject::SettingWeightsTooFast,
                format!(
                    "uid {uid} set weights at block {}, the rate limit is {} blocks (now {block})",
                    me.last_update, self.params.weights_rate_limit
                ),
            );
        }
        let self_weight = uids.len() == 1 && uids[0] == uid;
        if !self_weight && !me.validator_permit {
            return rej(
                Reject::NeuronNoValidatorPermit,
                format!("uid {uid} has no validator permit"),
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(d) = uids.iter().find(|u| !seen.insert(**u)) {
            return rej(Reject::DuplicateUids, format!("uid {d} appears twice"));
        }
        if let Some(bad) = uids.iter().find(|&&u| u >= n) {
            return rej(
                Reject::UidVecContainInvalidOne,
                format!("uid {bad} does not exist (subnet has {n})"),
            );
        }
        let min_allowed = usize::from(self.params.min_allowed_weights.min(n));
        if !self_weight && values.len() < min_allowed {
            return rej(
                Reject::WeightVecLengthIsLow,
                format!("{} weights, at least {min_allowed} required", values.len()),
            );
        }
        Ok(uid)
    }

    fn neuron(&self, uid: u16) -> Result<Neuron> {
        self.conn
            .query_row(
                "SELECT uid, hotkey, stake, validator_permit, registered_at, last_update,
                 incentive, dividends, consensus, validator_trust, emission
                 FROM chain_neurons WHERE uid = ?1",
                params![uid],
                row_to_neuron_raw,
            )
            .map_err(|e| self.sql(e))
            .and_then(|raw| raw_to_neuron(&self.path, raw))
    }

    /// Store the weight row of `uid` (max-upscaled), optionally marking `last_update`.
    fn store_weights(&mut self, uid: u16, uids: &[u16], values: &[u16], touch: bool) -> Result<()> {
        let up = yuma::max_upscale_u16(values);
        let block = self.current_block()?;
        self.write(|tx| {
            tx.execute("DELETE FROM chain_weights WHERE uid = ?1", params![uid])?;
            for (t, v) in uids.iter().zip(&up) {
                tx.execute(
                    "INSERT INTO chain_weights (uid, target, value) VALUES (?1, ?2, ?3)",
                    params![uid, t, v],
                )?;
            }
            if touch {
                tx.execute(
                    "UPDATE chain_neurons SET last_update = ?1 WHERE uid = ?2",
                    params![to_i64(block), uid],
                )?;
            }
            Ok(())
        })
    }

    /// Move the clock to `block` and run the epoch due there, in one transaction.
    fn epoch_at(&mut self, block: u64) -> Result<EpochRecord> {
        let meta = self.metagraph()?;
        let n = meta.neurons.len();
        let last = self.last_epoch_block()?;
        let mut weights = Vec::with_capacity(n);
        let mut bonds = Vec::with_capacity(n);
        for nr in &meta.neurons {
            weights.push(self.weights_of(nr.uid)?);
            bonds.push(self.bonds_of(nr.uid)?);
        }
        let total = self
            .params
            .emission_per_block
            .saturating_mul(block.saturating_sub(last));
        let cut =
            (u128::from(total) * u128::from(self.params.owner_cut) / u128::from(u16::MAX)) as u64;
        let input = EpochInput {
            current_block: block,
            last_epoch_block: last,
            stake: meta.neurons.iter().map(|x| x.stake).collect(),
            validator_permit: meta.neurons.iter().map(|x| x.validator_permit).collect(),
            last_update: meta.neurons.iter().map(|x| x.last_update).collect(),
            block_at_registration: meta.neurons.iter().map(|x| x.registered_at).collect(),
            weights,
            bonds,
            emission: total - cut,
        };
        let out = yuma::run_epoch(&input, &self.params.yuma());
        let epoch = self.epoch_index()? + 1;
        let neurons: Vec<EpochNeuron> = meta
            .neurons
            .iter()
            .enumerate()
            .map(|(i, nr)| EpochNeuron {
                uid: nr.uid,
                hotkey: nr.hotkey,
                incentive: out.incentive[i],
                dividends: out.dividends[i],
                consensus: out.consensus[i],
                validator_trust: out.validator_trust[i],
                server_emission: out.server_emission[i],
                validator_emission: out.validator_emission[i],
            })
            .collect();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO chain_epochs (epoch, block, total_emission, owner_cut)
                 VALUES (?1, ?2, ?3, ?4)",
                params![to_i64(epoch), to_i64(block), to_i64(total), to_i64(cut)],
            )?;
            for (i, e) in neurons.iter().enumerate() {
                tx.execute(
                    "INSERT INTO chain_epoch_neurons (epoch, uid, hotkey, incentive, dividends,
                     consensus, validator_trust, server_emission, validator_emission)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        to_i64(epoch),
                        e.uid,
                        &e.hotkey.0[..],
                        e.incentive,
                        e.dividends,
                        e.consensus,
                        e.validator_trust,
                        to_i64(e.server_emission),
                        to_i64(e.validator_emission)
                    ],
                )?;
                tx.execute(
                    "UPDATE chain_neurons SET incentive = ?1, dividends = ?2, consensus = ?3,
                     validator_trust = ?4, emission = ?5, validator_permit = ?6 WHERE uid = ?7",
                    params![
                        e.incentive,
                        e.dividends,
                        e.consensus,
                        e.validator_trust,
                        to_i64(out.emission[i]),
                        out.new_validator_permit[i],
                        e.uid
                    ],
                )?;
                if let Some(row) = &out.bonds[i] {
                    tx.execute("DELETE FROM chain_bonds WHERE uid = ?1", params![e.uid])?;
                    for (t, v) in row {
                        tx.execute(
                            "INSERT INTO chain_bonds (uid, target, value) VALUES (?1, ?2, ?3)",
                            params![e.uid, t, v],
                        )?;
                    }
                }
            }
            set_meta(tx, "block", &block.to_string())?;
            set_meta(tx, "epoch", &epoch.to_string())?;
            set_meta(tx, "last_epoch_block", &block.to_string())?;
            Ok(())
        })?;
        Ok(EpochRecord {
            epoch,
            block,
            total_emission: total,
            owner_cut: cut,
            neurons,
        })
    }

    fn set_block(&mut self, block: u64) -> Result<()> {
        self.write(|tx| set_meta(tx, "block", &block.to_string()))
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

type NeuronRaw = (i64, Vec<u8>, i64, bool, i64, i64, [i64; 4], i64);

fn row_to_neuron_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<NeuronRaw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        [r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?],
        r.get(10)?,
    ))
}

fn raw_to_neuron(path: &Path, raw: NeuronRaw) -> Result<Neuron> {
    let (uid, hk, stake, permit, reg, upd, f, em) = raw;
    Ok(Neuron {
        uid: uid as u16,
        hotkey: hotkey_from_blob(path, hk)?,
        stake: stake as u64,
        validator_permit: permit,
        registered_at: reg as u64,
        last_update: upd as u64,
        incentive: f[0] as u16,
        dividends: f[1] as u16,
        consensus: f[2] as u16,
        validator_trust: f[3] as u16,
        emission: em as u64,
    })
}

impl Chain for LocalChain {
    fn netuid(&self) -> u16 {
        self.params.netuid
    }

    fn current_block(&self) -> Result<u64> {
        self.meta_u64("block")
    }

    fn metagraph(&self) -> Result<Metagraph> {
        let mut st = self
            .conn
            .prepare(
                "SELECT uid, hotkey, stake, validator_permit, registered_at, last_update,
                 incentive, dividends, consensus, validator_trust, emission
                 FROM chain_neurons ORDER BY uid",
            )
            .map_err(|e| self.sql(e))?;
        let raws = st
            .query_map([], row_to_neuron_raw)
            .map_err(|e| self.sql(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))?;
        let neurons = raws
            .into_iter()
            .map(|r| raw_to_neuron(&self.path, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Metagraph {
            netuid: self.params.netuid,
            block: self.current_block()?,
            epoch: self.epoch_index()?,
            neurons,
        })
    }

    fn set_weights(
        &mut self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<()> {
        if self.params.commit_reveal {
            return Err(ChainError::rejected(
                "set_weights",
                Reject::CommitRevealEnabled,
                "this subnet takes weights through commit_weights/reveal_weights",
            ));
        }
        let uid = self.check_weights("set_weights", hotkey, uids, values, version_key, true)?;
        self.store_weights(uid, uids, values, true)
    }

    fn commit_weights(&mut self, hotkey: &AccountId, hash: [u8; 32]) -> Result<()> {
        const CALL: &str = "commit_weights";
        if !self.params.commit_reveal {
            return Err(ChainError::rejected(
                CALL,
                Reject::CommitRevealDisabled,
                "commit-reveal is off on this subnet: use set_weights",
            ));
        }
        let uid = self.require_uid(CALL, hotkey)?;
        let me = self.neuron(uid)?;
        let block = self.current_block()?;
        if me.last_update != 0
            && block.saturating_sub(me.last_update) < self.params.weights_rate_limit
        {
            return Err(ChainError::rejected(
                CALL,
                Reject::CommittingWeightsTooFast,
                format!(
                    "uid {uid} committed at block {}, the rate limit is {} blocks (now {block})",
                    me.last_update, self.params.weights_rate_limit
                ),
            ));
        }
        let epoch = self.epoch_index()?;
        let period = self.params.reveal_period;
        let live: Vec<_> = self
            .pending_commits(hotkey)?
            .into_iter()
            .filter(|(_, e, _)| epoch <= e + period)
            .collect();
        if live.len() >= MAX_PENDING_COMMITS {
            return Err(ChainError::rejected(
                CALL,
                Reject::TooManyUnrevealedCommits,
                format!("uid {uid} already has {MAX_PENDING_COMMITS} unrevealed commits"),
            ));
        }
        let key = hotkey.0;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM chain_commits WHERE hotkey = ?1 AND commit_epoch + ?2 < ?3",
                params![&key[..], to_i64(period), to_i64(epoch)],
            )?;
            tx.execute(
                "INSERT INTO chain_commits (hotkey, hash, commit_epoch, commit_block)
                 VALUES (?1, ?2, ?3, ?4)",
                params![&key[..], &hash[..], to_i64(epoch), to_i64(block)],
            )?;
            tx.execute(
                "UPDATE chain_neurons SET last_update = ?1 WHERE uid = ?2",
                params![to_i64(block), uid],
            )?;
            Ok(())
        })
    }

    fn reveal_weights(
        &mut self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<()> {
        const CALL: &str = "reveal_weights";
        if !self.params.commit_reveal {
            return Err(ChainError::rejected(
                CALL,
                Reject::CommitRevealDisabled,
                "commit-reveal is off on this subnet: use set_weights",
            ));
        }
        let epoch = self.epoch_index()?;
        let period = self.params.reveal_period;
        let all = self.pending_commits(hotkey)?;
        if all.is_empty() {
            return Err(ChainError::rejected(
                CALL,
                Reject::NoWeightsCommitFound,
                format!("hotkey {hotkey} has no pending commit"),
            ));
        }
        let hash = commit_hash(hotkey, self.params.netuid, uids, values, salt, version_key);
        let (expired, live): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(_, e, _)| epoch > e + period);
        let Some(pos) = live.iter().position(|(h, _, _)| *h == hash) else {
            let (reason, msg) = if expired.iter().any(|(h, _, _)| *h == hash) {
                (
                    Reject::ExpiredWeightCommit,
                    "the matching commit has expired",
                )
            } else if live.is_empty() {
                (
                    Reject::NoWeightsCommitFound,
                    "every pending commit has expired",
                )
            } else {
                (
                    Reject::InvalidRevealCommitHashNotMatch,
                    "no pending commit has this hash",
                )
            };
            // Expired commits are dropped, as the chain does on every reveal.
            let key = hotkey.0;
            self.write(|tx| {
                tx.execute(
                    "DELETE FROM chain_commits WHERE hotkey = ?1 AND commit_epoch + ?2 < ?3",
                    params![&key[..], to_i64(period), to_i64(epoch)],
                )
            })?;
            return Err(ChainError::rejected(CALL, reason, msg));
        };
        let commit_epoch = live[pos].1;
        if epoch != commit_epoch + period {
            return Err(ChainError::rejected(
                CALL,
                Reject::RevealTooEarly,
                format!(
                    "committed in epoch {commit_epoch}: reveal in epoch {} (now {epoch})",
                    commit_epoch + period
                ),
            ));
        }
        let uid = self.check_weights(CALL, hotkey, uids, values, version_key, false)?;
        // Drop the expired commits and every live one up to and including the revealed.
        let key = hotkey.0;
        let upto: Vec<[u8; 32]> = live[..=pos].iter().map(|(h, _, _)| *h).collect();
        let up = yuma::max_upscale_u16(values);
        self.write(|tx| {
            tx.execute(
                "DELETE FROM chain_commits WHERE hotkey = ?1 AND commit_epoch + ?2 < ?3",
                params![&key[..], to_i64(period), to_i64(epoch)],
            )?;
            for h in &upto {
                tx.execute(
                    "DELETE FROM chain_commits WHERE id = (SELECT id FROM chain_commits
                     WHERE hotkey = ?1 AND hash = ?2 ORDER BY id LIMIT 1)",
                    params![&key[..], &h[..]],
                )?;
            }
            tx.execute("DELETE FROM chain_weights WHERE uid = ?1", params![uid])?;
            for (t, v) in uids.iter().zip(&up) {
                tx.execute(
                    "INSERT INTO chain_weights (uid, target, value) VALUES (?1, ?2, ?3)",
                    params![uid, t, v],
                )?;
            }
            Ok(())
        })
    }

    fn advance_blocks(&mut self, n: u64) -> Result<Vec<EpochRecord>> {
        let target = self.current_block()?.saturating_add(n);
        let mut records = Vec::new();
        loop {
            let next = self.next_epoch_block()?;
            if next > target {
                break;
            }
            records.push(self.epoch_at(next)?);
        }
        self.set_block(target)?;
        Ok(records)
    }

    fn run_next_epoch(&mut self) -> Result<EpochRecord> {
        let block = self.current_block()?;
        let next = self.next_epoch_block()?.max(block);
        let mut recs = self.advance_blocks(next - block)?;
        match recs.pop() {
            Some(r) => Ok(r),
            // Unreachable in practice (advance_blocks runs every due epoch), kept total.
            None => self.epoch_at(block),
        }
    }
}
