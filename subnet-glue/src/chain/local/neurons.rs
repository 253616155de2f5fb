//! The neuron rows of [`LocalChain`]: registration (uids in order, `SubnetFull` at the cap),
//! stake and validator permits set by hand, lookups (uid of a hotkey, one neuron, the
//! metagraph) and the stored weight and bond rows. Neighbours: weights.rs (the extrinsics
//! that write weight rows), epoch.rs (which rewrites the per-uid results and bonds).

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{hotkey_from_blob, to_i64, LocalChain};
use crate::chain::scale::AccountId;
use crate::chain::{Chain, ChainError, Metagraph, Neuron, Reject, Result};

impl LocalChain {
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

    /// The uid of `hotkey`, or `HotKeyNotRegisteredInSubNet` for `call`.
    pub(super) fn require_uid(&self, call: &'static str, hotkey: &AccountId) -> Result<u16> {
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

    /// The stored row of `uid`.
    pub(super) fn neuron(&self, uid: u16) -> Result<Neuron> {
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

    /// Every neuron by uid, with the clock and epoch counter (`Chain::metagraph`).
    pub(super) fn load_metagraph(&self) -> Result<Metagraph> {
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
