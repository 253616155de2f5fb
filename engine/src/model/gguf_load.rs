//! A llama GGUF as the engine's model: `llama.*` metadata → [`ModelConfig`], the GGUF tensor
//! names → [`ModelWeights`] in HF layout, with llama.cpp's Q/K row permutation undone.
//!
//! The file is parsed by gguf.rs and dequantised by gguf_quant.rs; every tensor is
//! dequantised in parallel (rayon, one task per tensor, each splitting into block ranges).
//! The result is the same pair the safetensors loader gives, so the model never knows the
//! source. Each tensor's shape is checked against the config, naming the file and tensor.

use std::path::Path;

use rayon::prelude::*;

use super::gguf::{GgufFile, GgufMeta};
use super::{Arch, LayerWeights, ModelConfig, ModelWeights};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Load a llama-architecture GGUF: its config, its weights (f32, HF layout) and its header.
pub fn load_gguf(path: &Path) -> Result<(ModelConfig, ModelWeights, GgufMeta)> {
    let file = GgufFile::open(path)?;
    let config = config_from_meta(file.meta())?;
    let weights = load_weights(&file, &config)?;
    Ok((config, weights, file.into_meta()))
}

/// The [`ModelConfig`] described by a llama GGUF's metadata.
pub fn config_from_meta(meta: &GgufMeta) -> Result<ModelConfig> {
    let path = &meta.path;
    let src = path.display().to_string();
    let arch = meta
        .get_str("general.architecture")?
        .ok_or_else(|| Error::config(&src, "general.architecture", "missing"))?;
    if arch != "llama" {
        return Err(Error::unsupported(format!(
            "{}: gguf architecture `{arch}` (only `llama` is supported)",
            path.display()
        )));
    }
    if meta.tensor("rope_freqs.weight").is_some() {
        return Err(Error::unsupported(format!(
            "{}: llama3-style rope scaling (`rope_freqs.weight`)",
            path.display()
        )));
    }
    let need = |key: &str| -> Result<usize> {
        let v = meta
            .get_u64(key)?
            .ok_or_else(|| Error::config(&src, key, "missing"))?;
        usize::try_from(v).map_err(|_| Error::config(&src, key, "too large"))
    };
    let num_layers = need("llama.block_count")?;
    let hidden_size = need("llama.embedding_length")?;
    let intermediate_size = need("llama.feed_forward_length")?;
    let num_heads = need("llama.attention.head_count")?;
    let num_kv_heads = match meta.get_u64("llama.attention.head_count_kv")? {
        Some(n) => n as usize,
        None => num_heads,
    };
    if num_heads == 0 {
        return Err(Error::config(&src, "llama.attention.head_count", "is zero"));
    }
    let head_dim = match meta.get_u64("llama.attention.key_length")? {
        Some(n) => n as usize,
        None => hidden_size / num_heads,
    };
    let rms_norm_eps = meta
        .get_f64("llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| Error::config(&src, "llama.attention.layer_norm_rms_epsilon", "missing"))?
        as f32;
    if meta.get_u64("llama.expert_count")?.unwrap_or(0) > 0 {
        return Err(Error::unsupported(format!(
            "{}: mixture-of-experts llama (`llama.expert_count`)",
            path.display()
        )));
    }
    if let Some(rot) = meta.get_u64("llama.rope.dimension_count")? {
        if rot as usize != head_dim {
            return Err(Error::unsupported(format!(
                "{}: partial rotary embeddings (llama.rope.dimension_count {rot}, head_dim \
                 {head_dim})",
                path.display()
            )));
        }
    }
    let rope_theta = meta.get_f64("llama.rope.freq_base")?.unwrap_or(10_000.0) as f32;
    if let Some(kind) = meta.get_str("llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(Error::unsupported(format!(
                "{}: rope scaling type `{kind}`",
                path.display()
            )));
        }
    }
    let vocab_size = match meta.get_str_array("tokenizer.ggml.tokens")? {
        Some(tokens) => tokens.len(),
        None => match meta.get_u64("llama.vocab_size")? {
            Some(n) => n as usize,
            None => meta
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).map(|&d| d as usize))
                .ok_or_else(|| Error::config(&src, "tokenizer.ggml.tokens", "missing"))?,
        },
    };
    let max_position_embeddings = need("llama.context_length")?;
    let id = |key: &str| -> Result<Option<u32>> {
        match meta.get_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| Error::config(&src, key, "too large")),
        }
    };
    let config = ModelConfig {
        arch: Arch::Llama,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling: None,
        tie_word_embeddings: meta.tensor("output.weight").is_none(),
        attention_bias: meta.tensor("blk.0.attn_q.bias").is_some(),
        max_position_embeddings,
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
    };
    // A corrupt count must not size allocations: every block has tensors of its own.
    if config.num_layers > meta.tensors.len() {
        return Err(Error::config(
            &src,
            "llama.block_count",
            format!(
                "{} blocks but the file has {} tensors",
                config.num_layers,
                meta.tensors.len()
            ),
        ));
    }
    config.validate(&src)?;
    Ok(config)
}

/// How one GGUF tensor becomes an HF tensor.
#[derive(Clone, Copy)]
enum Fix {
    /// Take as is.
    AsIs,
    /// Undo llama.cpp's Q/K row permutation with this many heads.
    Unpermute(usize),
}

/// Every tensor the model needs: GGUF name, expected HF shape, fix-up.
fn plan(config: &ModelConfig) -> Vec<(String, Vec<usize>, Fix)> {
    let (h, q, kv, ff) = (
        config.hidden_size,
        config.q_dim(),
        config.kv_dim(),
        config.intermediate_size,
    );
    let mut p = vec![
        (
            "token_embd.weight".to_string(),
            vec![config.vocab_size, h],
            Fix::AsIs,
        ),
        ("output_norm.weight".to_string(), vec![h], Fix::AsIs),
    ];
    if !config.tie_word_embeddings {
        p.push((
            "output.weight".into(),
            vec![config.vocab_size, h],
            Fix::AsIs,
        ));
    }
    for l in 0..config.num_layers {
        let b = |s: &str| format!("blk.{l}.{s}");
        p.push((b("attn_norm.weight"), vec![h], Fix::AsIs));
        p.push((
            b("attn_q.weight"),
            vec![q, h],
            Fix::Unpermute(config.num_heads),
        ));
        p.push((
            b("attn_k.weight"),
            vec![kv, h],
            Fix::Unpermute(config.num_kv_heads),
        ));
        p.push((b("attn_v.weight"), vec![kv, h], Fix::AsIs));
        p.push((b("attn_output.weight"), vec![h, q], Fix::AsIs));
        p.push((b("ffn_norm.weight"), vec![h], Fix::AsIs));
        p.push((b("ffn_gate.weight"), vec![ff, h], Fix::AsIs));
        p.push((b("ffn_up.weight"), vec![ff, h], Fix::AsIs));
        p.push((b("ffn_down.weight"), vec![h, ff], Fix::AsIs));
        if config.attention_bias {
            p.push((b("attn_q.bias"), vec![q], Fix::Unpermute(config.num_heads)));
            p.push((
                b("attn_k.bias"),
                vec![kv],
                Fix::Unpermute(config.num_kv_heads),
            ));
            p.push((b("attn_v.bias"), vec![kv], Fix::AsIs));
        }
    }
    p
}

fn load_weights(file: &GgufFile, config: &ModelConfig) -> Result<ModelWeights> {
    let path = &file.meta().path;
    let plan = plan(config);
    let loaded: Vec<Tensor> = plan
        .par_iter()
        .map(|(name, shape, fix)| {
            let t = file.tensor(name)?;
            if &t.shape != shape {
                return Err(Error::tensor(
                    path,
                    name,
                    format!(
                        "shape {:?} does not match the config's {:?}",
                        t.shape, shape
                    ),
                ));
            }
            match *fix {
                Fix::AsIs => Ok(t),
                Fix::Unpermute(n_head) => {
                    unpermute_rows(&t, n_head).map_err(|msg| Error::tensor(path, name, msg))
                }
            }
        })
        .collect::<Result<_>>()?;
    // Hand the tensors out in plan order without copying them.
    let mut it = loaded.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| Error::format(path, "internal: plan exhausted"))
    };
    let embed = next()?;
    let final_norm = next()?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(next()?)
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        let (attn_norm, wq, wk, wv, wo) = (next()?, next()?, next()?, next()?, next()?);
        let (mlp_norm, w_gate, w_up, w_down) = (next()?, next()?, next()?, next()?);
        let (bq, bk, bv) = if config.attention_bias {
            (Some(next()?), Some(next()?), Some(next()?))
        } else {
            (None, None, None)
        };
        layers.push(LayerWeights {
            attn_norm,
            wq,
            wk,
            wv,
            wo,
            bq,
            bk,
            bv,
            mlp_norm,
            w_gate,
            w_up,
            w_down,
        });
    }
    Ok(ModelWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    })
}

/// Undo llama.cpp's Q/K row permutation of a `[n_head·head_dim, in]` weight (or a
/// `[n_head·head_dim]` bias): view the rows as `[n_head, head_dim/2, 2]`, swap the last two
/// axes, so that GGUF row `h·hd + 2j + i` becomes HF row `h·hd + i·hd/2 + j`.
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> std::result::Result<Tensor, String> {
    let rows = t.shape.first().copied().unwrap_or(0);
    let cols = if t.shape.len() > 1 {
        t.len() / rows.max(1)
    } else {
        1
    };
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {n_head} heads of even width"
        ));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; t.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let dst = (h * hd + i * half + j) * cols;
                let src = (h * hd + 2 * j + i) * cols;
                out[dst..dst + cols].copy_from_slice(&t.data[src..src + cols]);
            }
        }
    }
    Ok(Tensor {
        shape: t.shape.clone(),
        data: out,
    })
}
