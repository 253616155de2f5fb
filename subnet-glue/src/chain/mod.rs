//! The chain the subnet sets weights on: the [`Chain`] trait (metagraph, block clock,
//! set_weights, commit-reveal v2, epochs) and its embedded implementation [`LocalChain`],
//! a single-subnet chain kept in SQLite that applies subtensor's checks and runs Yuma
//! (SPEC §6–§7).
//!
//! Rooms: scale.rs (AccountId, SS58, SCALE bytes and the commit hash), yuma.rs (one epoch
//! in I32F32, pure), local/ (the SQLite store and the extrinsic checks: params, neurons, weights, epochs), commit.rs (the
//! validator's side of commit-reveal: saved reveals, salts, set-or-commit). The weights
//! module ([`crate::weights`]) turns tournament results into the u16 vectors set here.

pub mod commit; // PendingReveal (saved reveals), random salts, submit_weights: set or commit
pub mod local; // LocalChain: SQLite tables chain_*; params, neurons, weights (commit-reveal), epochs
pub mod scale; // AccountId (hex, SS58), SCALE encoding, blake2_256 commit hash
pub mod yuma; // run_epoch: Yuma 3 / original Yuma in I32F32, ported from subtensor

use std::fmt;
use std::path::PathBuf;

pub use commit::{submit_weights, weights_into_epoch, PendingReveal, Submitted};
pub use local::{ChainParams, LocalChain, PendingCommit};
pub use scale::{commit_hash, AccountId};

/// Why the chain refused an extrinsic: subtensor's error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// `uids` and `values` differ in length.
    WeightVecNotEqualSize,
    /// More uids than neurons on the subnet.
    UidsLengthExceedUidsInSubNet,
    /// The hotkey is not registered.
    HotKeyNotRegisteredInSubNet,
    /// The hotkey is already registered.
    HotKeyAlreadyRegisteredInSubNet,
    /// No free uid (max_allowed_uids reached).
    SubnetFull,
    /// `version_key` below the subnet's weights version key.
    IncorrectWeightVersionKey,
    /// Weights set again before the rate limit elapsed.
    SettingWeightsTooFast,
    /// Commit again before the rate limit elapsed.
    CommittingWeightsTooFast,
    /// Non-self weights without a validator permit.
    NeuronNoValidatorPermit,
    /// A uid appears twice.
    DuplicateUids,
    /// A uid that does not exist.
    UidVecContainInvalidOne,
    /// Fewer weights than min_allowed_weights.
    WeightVecLengthIsLow,
    /// Plain set_weights while commit-reveal is on.
    CommitRevealEnabled,
    /// commit/reveal while commit-reveal is off.
    CommitRevealDisabled,
    /// 10 unrevealed commits already.
    TooManyUnrevealedCommits,
    /// Nothing committed to reveal.
    NoWeightsCommitFound,
    /// The matching commit's reveal epoch has passed.
    ExpiredWeightCommit,
    /// The matching commit's reveal epoch has not come yet.
    RevealTooEarly,
    /// No pending commit has this hash.
    InvalidRevealCommitHashNotMatch,
}

/// What went wrong in a chain call.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChainError {
    /// A bad argument, naming it.
    Input {
        /// The argument or field at fault.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The chain refused the call (the state is unchanged).
    Rejected {
        /// The extrinsic (`set_weights`, `commit_weights`, ...).
        call: &'static str,
        /// Subtensor's error name.
        reason: Reject,
        /// Details (uids, blocks, epochs).
        msg: String,
    },
    /// The SQLite store failed or holds something unexpected.
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        msg: String,
    },
}

impl ChainError {
    /// A bad argument.
    pub fn input(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ChainError::Input {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// A refused extrinsic.
    pub fn rejected(call: &'static str, reason: Reject, msg: impl Into<String>) -> Self {
        ChainError::Rejected {
            call,
            reason,
            msg: msg.into(),
        }
    }

    /// The refusal reason, if this is a refusal.
    pub fn reason(&self) -> Option<Reject> {
        match self {
            ChainError::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Input { field, msg } => write!(f, "chain: `{field}`: {msg}"),
            ChainError::Rejected { call, reason, msg } => {
                write!(f, "chain: {call} rejected ({reason:?}): {msg}")
            }
            ChainError::Store { path, msg } => write!(f, "{}: chain store: {msg}", path.display()),
        }
    }
}

impl std::error::Error for ChainError {}

/// Result alias of the chain.
pub type Result<T, E = ChainError> = std::result::Result<T, E>;

/// One neuron of the metagraph, with its results from the last epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Neuron {
    /// Its uid.
    pub uid: u16,
    /// Its hotkey.
    pub hotkey: AccountId,
    /// Stake (rao).
    pub stake: u64,
    /// May set non-self weights (from the last epoch).
    pub validator_permit: bool,
    /// Block it registered at.
    pub registered_at: u64,
    /// Block of its last weights (0: never).
    pub last_update: u64,
    /// Incentive of the last epoch, u16 proportion.
    pub incentive: u16,
    /// Dividends of the last epoch, u16 proportion.
    pub dividends: u16,
    /// Consensus of the last epoch, u16 proportion.
    pub consensus: u16,
    /// Validator trust of the last epoch, u16 proportion.
    pub validator_trust: u16,
    /// Emission of the last epoch (server + validator), rao.
    pub emission: u64,
}

/// The subnet as seen at one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Metagraph {
    /// The subnet id.
    pub netuid: u16,
    /// Current block.
    pub block: u64,
    /// Epochs run so far.
    pub epoch: u64,
    /// Neurons by ascending uid.
    pub neurons: Vec<Neuron>,
}

/// One uid's results in one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochNeuron {
    /// The uid.
    pub uid: u16,
    /// Its hotkey.
    pub hotkey: AccountId,
    /// Incentive, u16 proportion.
    pub incentive: u16,
    /// Dividends, u16 proportion.
    pub dividends: u16,
    /// Consensus, u16 proportion.
    pub consensus: u16,
    /// Validator trust, u16 proportion.
    pub validator_trust: u16,
    /// Miner emission, rao.
    pub server_emission: u64,
    /// Validator emission, rao.
    pub validator_emission: u64,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// Epoch number (1 for the first epoch run).
    pub epoch: u64,
    /// Block it ran at.
    pub block: u64,
    /// Emission of the epoch before the owner's cut, rao.
    pub total_emission: u64,
    /// The subnet owner's cut, rao.
    pub owner_cut: u64,
    /// Per-uid results, ascending uid.
    pub neurons: Vec<EpochNeuron>,
}

/// A u16 proportion as a fraction in [0, 1].
pub fn u16_fraction(x: u16) -> f64 {
    f64::from(x) / f64::from(u16::MAX)
}

/// A chain with one subnet: what a validator needs from it.
pub trait Chain {
    /// The subnet id.
    fn netuid(&self) -> u16;
    /// The current block.
    fn current_block(&self) -> Result<u64>;
    /// Neurons with stake, permits, registration and last-epoch results.
    fn metagraph(&self) -> Result<Metagraph>;
    /// Set weights directly (commit-reveal off) with the chain's checks.
    fn set_weights(
        &mut self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<()>;
    /// Commit a weights hash (commit-reveal v2).
    fn commit_weights(&mut self, hotkey: &AccountId, hash: [u8; 32]) -> Result<()>;
    /// Reveal committed weights (exactly in epoch commit_epoch + reveal_period).
    fn reveal_weights(
        &mut self,
        hotkey: &AccountId,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<()>;
    /// Move the clock `n` blocks, running every epoch that falls due; returns them.
    fn advance_blocks(&mut self, n: u64) -> Result<Vec<EpochRecord>>;
    /// Advance to the next epoch block and run that epoch.
    fn run_next_epoch(&mut self) -> Result<EpochRecord>;
}
