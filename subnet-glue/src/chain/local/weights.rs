//! The weight extrinsics of [`LocalChain`] with subtensor's checks in its order: plain
//! `set_weights`, and commit-reveal v2 (`commit_weights` with its rate limit and the
//! 10-pending cap, `reveal_weights` matching the hash in its reveal epoch, dropping expired
//! commits as the chain does), plus the pending commits as stored; and the [`Chain`] impl
//! that holds them (its other calls route to mod.rs, neurons.rs and epoch.rs). Neighbours:
//! neurons.rs (the rows checked against), chain/commit.rs (the validator's side).

use rusqlite::{params, Transaction};

use super::{hotkey_from_blob, to_i64, LocalChain, MAX_PENDING_COMMITS};
use crate::chain::scale::{commit_hash, AccountId};
use crate::chain::yuma;
use crate::chain::{Chain, ChainError, EpochRecord, Metagraph, Reject, Result};

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

impl LocalChain {
    /// Unrevealed commits of `hotkey`: `(hash, commit_epoch, commit_block)`, oldest first.
    pub fn pending_commits(&self, hotkey: &AccountId) -> Result<Vec<([u8; 32], u64, u64)>> {
        let rows = self.commit_rows(Some(hotkey))?;
        Ok(rows
            .into_iter()
            .map(|c| (c.hash, c.commit_epoch, c.commit_block))
            .collect())
    }

    /// Unrevealed commits of every hotkey, in commit order (expired ones included until the
    /// hotkey's next commit or reveal drops them; compare `commit_epoch + reveal_period` with
    /// [`LocalChain::epoch_index`]).
    pub fn all_pending_commits(&self) -> Result<Vec<PendingCommit>> {
        self.commit_rows(None)
    }

    /// The stored commits of `hotkey` (of every hotkey for `None`), in commit order.
    fn commit_rows(&self, hotkey: Option<&AccountId>) -> Result<Vec<PendingCommit>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT hotkey, hash, commit_epoch, commit_block FROM chain_commits
                 WHERE ?1 IS NULL OR hotkey = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![hotkey.map(|k| &k.0[..])], |r| {
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
}

/// The chain's calls: the weight extrinsics here, the clock and the reads routed to
/// mod.rs, neurons.rs and epoch.rs.
impl Chain for LocalChain {
    fn netuid(&self) -> u16 {
        self.params.netuid
    }

    fn current_block(&self) -> Result<u64> {
        self.meta_u64("block")
    }

    fn metagraph(&self) -> Result<Metagraph> {
        self.load_metagraph()
    }

    fn advance_blocks(&mut self, n: u64) -> Result<Vec<EpochRecord>> {
        self.advance_clock(n)
    }

    fn run_next_epoch(&mut self) -> Result<EpochRecord> {
        self.run_due_epoch()
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
        let up = yuma::max_upscale_u16(values);
        let block = self.current_block()?;
        self.write(|tx| {
            replace_weight_row(tx, uid, uids, &up)?;
            tx.execute(
                "UPDATE chain_neurons SET last_update = ?1 WHERE uid = ?2",
                params![to_i64(block), uid],
            )
            .map(|_| ())
        })
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
            drop_expired(tx, &key, period, epoch)?;
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
            self.write(|tx| drop_expired(tx, &key, period, epoch))?;
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
            drop_expired(tx, &key, period, epoch)?;
            for h in &upto {
                tx.execute(
                    "DELETE FROM chain_commits WHERE id = (SELECT id FROM chain_commits
                     WHERE hotkey = ?1 AND hash = ?2 ORDER BY id LIMIT 1)",
                    params![&key[..], &h[..]],
                )?;
            }
            replace_weight_row(tx, uid, uids, &up)
        })
    }
}

/// Replace the weight row of `uid` by `values` (already max-upscaled) on `uids`.
fn replace_weight_row(
    tx: &Transaction<'_>,
    uid: u16,
    uids: &[u16],
    values: &[u16],
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM chain_weights WHERE uid = ?1", params![uid])?;
    for (t, v) in uids.iter().zip(values) {
        tx.execute(
            "INSERT INTO chain_weights (uid, target, value) VALUES (?1, ?2, ?3)",
            params![uid, t, v],
        )?;
    }
    Ok(())
}

/// Drop the commits of hotkey `key` whose reveal epoch (`commit_epoch + period`) is before
/// `epoch`.
fn drop_expired(
    tx: &Transaction<'_>,
    key: &[u8; 32],
    period: u64,
    epoch: u64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM chain_commits WHERE hotkey = ?1 AND commit_epoch + ?2 < ?3",
        params![&key[..], to_i64(period), to_i64(epoch)],
    )
}
