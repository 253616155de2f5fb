//! Models: configs, weight loading (safetensors, GGUF) and the Llama family's explicit
//! forward and backward.
//!
//! Every loader produces the same pair, a [`ModelConfig`] and [`ModelWeights`] in HF layout
//! (a Linear weight is `[out, in]`, Q/K rows in HF's half-split RoPE order), so the model code
//! never knows which file a weight came from.

pub mod batch; // Batch, Sample: a step's tokens, labels, positions, sample starts
pub mod config; // ModelConfig, Arch, RopeScaling
mod decode; // KvCache, Llama::prefill/decode_step (KV-cached decoding), logits_last/_from
pub mod frozen; // Frozen: a frozen weight matrix, dense f32 or packed as its file stored it
pub mod generate; // Sampling, pick, uniform, Completion, Llama::generate(_many), greedy
pub mod gguf; // GgufFile, GgufMeta, GgufValue, GgufTensorInfo: GGUF v2/v3 parsing
pub mod gguf_load; // load_gguf: llama GGUF -> ModelConfig + ModelWeights (Q/K unpermuted)
pub mod gguf_quant; // GgmlType, dequantize (F32/F16/BF16/Q8_0/Q4_0/Q4_1)
#[cfg(test)]
mod gguf_tests; // unit tests of the GGUF parser, dequantisers and llama loader
#[cfg(test)]
pub(crate) mod gguf_writer; // GgufWriter: tiny GGUF files written in tests
pub mod hf_config; // load_hf_config, parse_hf_config, hf_config_json (HF config.json)
pub mod hf_model; // load_hf_model, save_hf_model, load_weights (HF names -> ModelWeights)
pub mod llama; // Llama: frozen weights, forward(_rows), forward_backward, forward_loss
mod llama_backward; // layer_backward, linear_backward (LoRA through the rank)
mod llama_forward; // Ctx: linear_forward, layer_forward; DeviceLayer
pub mod load; // load_model: GGUF file or HF dir -> LoadedModel (config, weights, tokenizer)
mod plan; // Plan, LayerActs, GradScratch: the activation buffers of a step
pub mod st; // SafetensorsFile, TensorStore (mmap, shards), write_safetensors

pub use batch::{Batch, Sample};
pub use config::{Arch, ModelConfig, RopeScaling};
pub use frozen::Frozen;
pub use generate::{Completion, Sampling};
pub use gguf_load::load_gguf;
pub use llama::{Llama, StepOptions, StepStats};

use crate::tensor::Tensor;

/// The frozen weights of one decoder block, HF layout. The seven Linear weights are
/// [`Frozen`] (packed as the file stored them, or dense); norms and biases are dense.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `[hidden]` input RMSNorm weight.
    pub attn_norm: Tensor,
    /// `[num_heads*head_dim, hidden]`.
    pub wq: Frozen,
    /// `[num_kv_heads*head_dim, hidden]`.
    pub wk: Frozen,
    /// `[num_kv_heads*head_dim, hidden]`.
    pub wv: Frozen,
    /// `[hidden, num_heads*head_dim]`.
    pub wo: Frozen,
    /// `[num_heads*head_dim]` (Qwen2 only).
    pub bq: Option<Tensor>,
    /// `[num_kv_heads*head_dim]` (Qwen2 only).
    pub bk: Option<Tensor>,
    /// `[num_kv_heads*head_dim]` (Qwen2 only).
    pub bv: Option<Tensor>,
    /// `[hidden]` post-attention RMSNorm weight.
    pub mlp_norm: Tensor,
    /// `[intermediate, hidden]`.
    pub w_gate: Frozen,
    /// `[intermediate, hidden]`.
    pub w_up: Frozen,
    /// `[hidden, intermediate]`.
    pub w_down: Frozen,
}

/// All frozen weights of a Llama-family model, HF layout.
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// `[vocab, hidden]` token embedding.
    pub embed: Tensor,
    /// One entry per decoder block.
    pub layers: Vec<LayerWeights>,
    /// `[hidden]` final RMSNorm weight.
    pub final_norm: Tensor,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
}

impl LayerWeights {
    /// The seven Linear weights, in `lora::Target` order (q, k, v, o, gate, up, down).
    pub fn linears(&self) -> [&Frozen; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    /// [`LayerWeights::linears`], mutable.
    pub fn linears_mut(&mut self) -> [&mut Frozen; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.w_gate,
            &mut self.w_up,
            &mut self.w_down,
        ]
    }

    /// Number of values of every tensor of the block (biases included when present).
    pub fn num_params(&self) -> usize {
        let dense = [&self.attn_norm, &self.mlp_norm]
            .into_iter()
            .chain([&self.bq, &self.bk, &self.bv].into_iter().flatten())
            .map(Tensor::len);
        dense.sum::<usize>() + self.linears().into_iter().map(Frozen::len).sum::<usize>()
    }
}

impl ModelWeights {
    /// Number of parameters (a tied lm_head counted once).
    pub fn num_params(&self) -> usize {
        self.embed.len()
            + self.final_norm.len()
            + self.lm_head.as_ref().map_or(0, Tensor::len)
            + self
                .layers
                .iter()
                .map(LayerWeights::num_params)
                .sum::<usize>()
    }
}
