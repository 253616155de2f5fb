//! The model's hyper-parameters, independent of the file they came from.
//!
//! `ModelConfig` is filled by the loaders (HF `config.json` in `hf_config.rs`, GGUF metadata in
//! `gguf.rs`) and read by the model (`llama.rs`) and the backends. `validate` checks the fields
//! that the forward pass relies on.

use crate::error::{Error, Result};

/// Supported members of the Llama family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3 and SmolLM (HF `model_type` "llama").
    Llama,
    /// Mistral (same block as Llama; sliding window ignored for the lengths we train).
    Mistral,
    /// Qwen2: Llama block with biases on the q, k and v projections.
    Qwen2,
}

/// Llama-3 style RoPE frequency scaling (HF `rope_scaling` with `rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    /// `factor`.
    pub factor: f32,
    /// `low_freq_factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Which family member.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Per-head width (usually `hidden_size / num_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Optional llama3 RoPE scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of each of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Check the invariants the model relies on; `source` names where the config came from.
    pub fn validate(&self, source: &str) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(source, field, "must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                source,
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} kv heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(source, "head_dim", "must be even for RoPE"));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(Error::config(
                source,
                "rms_norm_eps",
                "must be a positive number",
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::config(
                source,
                "rope_theta",
                "must be a positive number",
            ));
        }
        Ok(())
    }
}
