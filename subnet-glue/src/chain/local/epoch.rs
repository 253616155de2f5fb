//! Epochs of [`LocalChain`]: moving the block clock, running every epoch that falls due
//! (Yuma over the stored stakes, weights and bonds, chain/yuma.rs) in one transaction that
//! records the per-uid results and rewrites the bonds, and reading the recorded epochs back.
//! Neighbours: neurons.rs (the rows an epoch reads and updates), mod.rs (the meta keys
//! `block`, `epoch`, `last_epoch_block`).

use rusqlite::params;

use super::{hotkey_from_blob, set_meta, to_i64, LocalChain};
use crate::chain::yuma::{self, EpochInput};
use crate::chain::{Chain, EpochNeuron, EpochRecord, Result};

impl LocalChain {
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

    /// `Chain::advance_blocks`.
    pub(super) fn advance_clock(&mut self, n: u64) -> Result<Vec<EpochRecord>> {
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

    /// `Chain::run_next_epoch`.
    pub(super) fn run_due_epoch(&mut self) -> Result<EpochRecord> {
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
