//! Shared helpers for the loaders' integration tests (tests/loaders_*.rs): a tiny seeded RNG,
//! tiny model configs of each architecture, random weights and raw safetensors bytes.
#![allow(dead_code)]

use gradients_engine::model::{Arch, LayerWeights, ModelConfig, ModelWeights, RopeScaling};
use gradients_engine::Tensor;

/// A splitmix64 stream of floats in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.next_f32()).collect();
        Tensor::new(shape.to_vec(), data).unwrap()
    }
}

/// A tiny model of `arch`: GQA (4 heads, 2 kv heads), 2 layers.
pub fn tiny_cfg(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 40,
        hidden_size: 16,
        intermediate_size: 24,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: false,
        attention_bias: arch == Arch::Qwen2,
        max_position_embeddings: 128,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// A tiny llama with llama3 rope scaling and tied embeddings.
pub fn tiny_llama3_tied() -> ModelConfig {
    ModelConfig {
        rope_scaling: Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        }),
        rope_theta: 500000.0,
        tie_word_embeddings: true,
        ..tiny_cfg(Arch::Llama)
    }
}

/// Random weights with the shapes `cfg` implies.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    let mut r = Rng::new(seed);
    let (h, v, i) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
    let layers = (0..cfg.num_layers)
        .map(|_| {
            let bias = cfg.attention_bias;
            LayerWeights {
                attn_norm: r.tensor(&[h]),
                wq: r.tensor(&[q, h]).into(),
                wk: r.tensor(&[kv, h]).into(),
                wv: r.tensor(&[kv, h]).into(),
                wo: r.tensor(&[h, q]).into(),
                bq: bias.then(|| r.tensor(&[q])),
                bk: bias.then(|| r.tensor(&[kv])),
                bv: bias.then(|| r.tensor(&[kv])),
                mlp_norm: r.tensor(&[h]),
                w_gate: r.tensor(&[i, h]).into(),
                w_up: r.tensor(&[i, h]).into(),
                w_down: r.tensor(&[h, i]).into(),
            }
        })
        .collect();
    ModelWeights {
        embed: r.tensor(&[v, h]),
        layers,
        final_norm: r.tensor(&[h]),
        lm_head: (!cfg.tie_word_embeddings).then(|| r.tensor(&[v, h])),
    }
}

/// Raw safetensors bytes: the 8-byte length, `header` verbatim, then `data`.
pub fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Assert that `err`'s message contains every one of `parts`.
pub fn assert_mentions(err: &gradients_engine::Error, parts: &[&str]) {
    let msg = err.to_string();
    for p in parts {
        assert!(msg.contains(p), "error `{msg}` does not mention `{p}`");
    }
}
