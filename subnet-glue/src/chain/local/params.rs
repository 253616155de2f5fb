//! [`ChainParams`]: the subnet's hyperparameters (subtensor's names), their defaults (Yuma's
//! where it has them), the consensus part handed to chain/yuma.rs, and the checks a chain
//! runs before accepting them. Neighbours: mod.rs (the store that keeps them as JSON in
//! `chain_meta`).

use serde::{Deserialize, Serialize};

use crate::chain::yuma::YumaParams;
use crate::chain::{ChainError, Result};

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

    /// Refuse parameters no chain can run with, naming the field.
    pub(super) fn validate(&self) -> Result<()> {
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
