//! LoRA adapters: which projections they target, their hyper-parameters, and (in submodules)
//! their parameters, initialisation, PEFT-format files and merging into the base model.
//!
//! A LoRA adapter on a Linear weight `W [out, in]` adds `s · B·A` with `A [r, in]`,
//! `B [out, r]` and `s = alpha / r` (or `alpha / sqrt(r)` with rsLoRA), exactly as PEFT does.

pub mod params; // LoraWeights (host A/B), init, counter_hash, target_dims
pub mod state; // LoraState, LoraGrads: device copies of A/B and their gradients

pub use params::{counter_hash, target_dims, LoraPair, LoraWeights};
pub use state::{LoraGrads, LoraPairBufs, LoraState};

use crate::error::{Error, Result};

pub mod adapter; // LoraWeights::{load, save, from_peft, to_peft}: PEFT dirs <-> LoraWeights
pub mod merge; // merge_into, merge_model: W + s·B·A written as an HF model directory
pub mod peft; // PeftAdapter, read_peft_adapter, write_peft_adapter (PEFT adapter dirs)

/// A projection of the Llama block that LoRA can adapt; names are PEFT's module names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl Target {
    /// Every target, in block order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// PEFT's short module name (`"q_proj"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module path inside a decoder layer (`"self_attn.q_proj"`, `"mlp.down_proj"`).
    pub fn module_path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
        }
    }

    /// Parse a PEFT module name (`"q_proj"`; `"q"` is accepted too).
    pub fn parse(s: &str) -> Option<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s || t.name().trim_end_matches("_proj") == s)
    }
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` (≥ 1).
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// Dropout probability on the LoRA path's input, in `[0, 1)`.
    pub dropout: f32,
    /// Adapted projections (sorted, no duplicates).
    pub targets: Vec<Target>,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The factor `s` multiplying `B·A`.
    pub fn scaling(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// Check ranges; `source` names where the config came from.
    pub fn validate(&self, source: &str) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::config(source, "r", "must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config(
                source,
                "lora_alpha",
                "must be a positive number",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(source, "lora_dropout", "must be in [0, 1)"));
        }
        if self.targets.is_empty() {
            return Err(Error::config(
                source,
                "target_modules",
                "must name at least one module",
            ));
        }
        Ok(())
    }
}

impl Default for LoraConfig {
    /// r = 8, alpha = 16, no dropout, all seven projections.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            use_rslora: false,
        }
    }
}
