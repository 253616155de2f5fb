//! After a tournament: its weights (SPEC §6) on the local chain and the epoch that turns
//! them into emission (SPEC §7).
//!
//! - [`pool_input`]: the outcome as weights.rs wants it: the ranking (champion first), the
//!   participants, the boss-round losses `(champion, challenger)` and the defences.
//! - [`register_neurons`]: the database's [`LocalChain`] gets the validator (uid 0, staked,
//!   with a permit), a burn hotkey and every miner hotkey, registered once; each submission's
//!   uid becomes its chain uid, so the tournament ranks the uids the chain knows; after new
//!   registrations the clock moves one block (Yuma ignores weights set in or before a
//!   target's registration block).
//! - [`settle`]: tournament_weights → quantize_u16 → set_weights (the validator's hotkey,
//!   the chain's version key; on a commit-reveal chain commit, epochs, reveal:
//!   chain::weights_into_epoch) → the next epoch; marked done on the tournament, so a rerun of
//!   a finished tournament never sets its weights twice. The chain and the tournament tables
//!   are written by two connections, so the block at which settling began is recorded first:
//!   a rerun after a kill between the weights reaching the chain and the done mark finds the
//!   validator's `last_update` at or after that block (and no commit left to reveal) and
//!   marks the tournament done without setting anything again.
//!
//! Neighbours: run.rs (the outcome), weights.rs (pools, u16), chain/ (LocalChain, Yuma).

use crate::chain::local::LocalChain;
use crate::chain::scale::AccountId;
use crate::chain::{weights_into_epoch, Chain, EpochRecord, Reject};
use crate::store::Store;
use crate::weights::{quantize_u16, tournament_pools, PoolInput, Pools};

use super::run::{Outcome, Submission};
use super::{store, terr, Result};

/// The validator's hotkey name on the local chain.
pub const VALIDATOR_HOTKEY: &str = "validator";
/// The hotkey whose uid receives the burned weight.
pub const BURN_HOTKEY: &str = "burn";
/// The validator's stake on a fresh local chain.
pub const VALIDATOR_STAKE: u64 = 1_000_000_000_000;

fn chain_err(e: impl std::fmt::Display) -> gradients_engine::Error {
    terr!("chain", "{e}")
}

/// The weight computation's input from a finished tournament.
pub fn pool_input(o: &Outcome, burn_uid: u16) -> PoolInput {
    PoolInput {
        ranked_uids: o.ranked_uids.clone(),
        participants: o.participants.clone(),
        boss_losses: o.boss_losses.clone(),
        champion_defences: o.champion_after.defences,
        burn_uid,
    }
}

/// Register the validator, the burn hotkey and each submission's hotkey on `chain` (those
/// not registered yet) and set each submission's uid to its chain uid. Returns the burn uid.
pub fn register_neurons(chain: &mut LocalChain, subs: &mut [Submission]) -> Result<u16> {
    fn uid(chain: &mut LocalChain, name: &str, stake: u64) -> Result<u16> {
        let hk = AccountId::from_name(name);
        match chain.uid_of(&hk).map_err(chain_err)? {
            Some(u) => Ok(u),
            None => chain.register(&hk, stake).map_err(chain_err),
        }
    }
    let before = chain.n().map_err(chain_err)?;
    let v = uid(chain, VALIDATOR_HOTKEY, VALIDATOR_STAKE)?;
    chain.set_validator_permit(v, true).map_err(chain_err)?;
    let burn = uid(chain, BURN_HOTKEY, 0)?;
    for s in subs.iter_mut() {
        s.entry.uid = uid(chain, &s.entry.hotkey, 0)?;
    }
    if chain.n().map_err(chain_err)? != before {
        // Yuma masks weights set in or before a target's registration block: move on one.
        chain.advance_blocks(1).map_err(chain_err)?;
    }
    Ok(burn)
}

/// What the chain got.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The pools and the float weights.
    pub pools: Pools,
    /// The uids set.
    pub uids: Vec<u16>,
    /// Their u16 values.
    pub values: Vec<u16>,
    /// The epoch run after setting them (`None`: the weights had been set before).
    pub epoch: Option<EpochRecord>,
}

/// Set the tournament's weights on `chain` from the validator's hotkey and run the next
/// epoch, once per tournament (see the module doc).
pub fn settle(
    store: &Store,
    chain: &mut LocalChain,
    o: &Outcome,
    burn_uid: u16,
) -> Result<Settlement> {
    let pools = tournament_pools(&pool_input(o, burn_uid)).map_err(chain_err)?;
    let (uids, values) = quantize_u16(&pools.weights).map_err(chain_err)?;
    let done = store::load_run(store, &o.tournament_id)?.is_some_and(|r| r.chain_done);
    if done {
        return Ok(Settlement {
            pools,
            uids,
            values,
            epoch: None,
        });
    }
    let hk = AccountId::from_name(VALIDATOR_HOTKEY);
    if already_on_chain(store, chain, &o.tournament_id, &hk)? {
        store::mark_chain_done(store, &o.tournament_id)?;
        return Ok(Settlement {
            pools,
            uids,
            values,
            epoch: None,
        });
    }
    let version = chain.params().weights_version_key;
    // Set, or commit → epochs → reveal when the chain runs commit-reveal; then the epoch.
    let epoch = match weights_into_epoch(chain, &hk, &uids, &values, version) {
        Ok(epoch) => epoch,
        Err(e)
            if matches!(
                e.reason(),
                Some(Reject::SettingWeightsTooFast | Reject::CommittingWeightsTooFast)
            ) =>
        {
            store::mark_chain_done(store, &o.tournament_id)?;
            return Ok(Settlement {
                pools,
                uids,
                values,
                epoch: None,
            });
        }
        Err(e) => return Err(chain_err(e)),
    };
    store::mark_chain_done(store, &o.tournament_id)?;
    Ok(Settlement {
        pools,
        uids,
        values,
        epoch: Some(epoch),
    })
}

/// Whether an earlier, interrupted settle of `tournament` already put the validator's
/// weights on `chain` (set, or committed and revealed); records the starting block when this
/// is the first attempt. A commit still waiting for its reveal is not "on chain": the caller's
/// `weights_into_epoch` finishes it.
fn already_on_chain(
    store: &Store,
    chain: &LocalChain,
    tournament: &str,
    hk: &AccountId,
) -> Result<bool> {
    let Some(from) = store::settle_started(store, tournament)? else {
        let block = chain.current_block().map_err(chain_err)?;
        store::mark_settle_started(store, tournament, block)?;
        return Ok(false);
    };
    if !chain.pending_commits(hk).map_err(chain_err)?.is_empty() {
        return Ok(false);
    }
    let meta = chain.metagraph().map_err(chain_err)?;
    Ok(meta
        .neurons
        .iter()
        .any(|n| &n.hotkey == hk && n.last_update != 0 && n.last_update >= from))
}
