//! A llama GGUF as the engine's model: `llama.*` metadata → [`ModelConfig`], the GGUF tensor
//! names → [`ModelWeights`] in HF layout, with llama.cpp's Q/K row permutation undone.
//!
//! The file is parsed by gguf.rs and dequantised by gguf_quant.rs in parallel (rayon, one
//! task per tensor, each splitting into block ranges), except the blocks' Linear weights,
//! which stay packed as [`Frozen`] matrices when their type allows (F16, BF16, Q8_0, Q4_0,
//! Q4_1): the CPU backend multiplies them that way, exactly (frozen.rs).
//! The result is the same pair the safetensors loader gives, so the model never knows the
//! source. Each tensor's shape is checked against the config, naming the file and tensor.

use std::path::Path;

use rayon::prelude::*;

use super::gguf::{GgufFile, GgufMeta};
use super::gguf_quant::GgmlType;
use super::{Arch, Frozen, LayerWeights, ModelConfig, ModelWeights};
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
#[derive(Clone, Copy, PartialEq)]
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

/// A loaded tensor: dense, or a Linear weight kept as its file stored it.
enum Loaded {
    Dense(Tensor),
    Linear(Frozen),
}

/// Whether GGUF tensor `name` is a block's Linear weight (kept packed when its type allows).
fn is_linear(name: &str) -> bool {
    const LINEAR: [&str; 7] = [
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    name.starts_with("blk.") && LINEAR.iter().any(|s| name.ends_with(s))
}

/// Tensor `name` of `file` as planned: a Linear weight of a packable type (F16, BF16, Q8_0,
/// Q4_0, Q4_1) stays packed, everything else is dequantised; the Q/K permutation is undone
/// on either.
fn load_one(file: &GgufFile, name: &str, shape: &[usize], fix: Fix) -> Result<Loaded> {
    let path = &file.meta().path;
    let info = file
        .meta()
        .tensor(name)
        .ok_or_else(|| Error::tensor(path, name, "not found in the file"))?;
    if info.shape() != shape {
        return Err(Error::tensor(
            path,
            name,
            format!(
                "shape {:?} does not match the config's {:?}",
                info.shape(),
                shape
            ),
        ));
    }
    let order = match fix {
        Fix::AsIs => None,
        Fix::Unpermute(n_head) => {
            Some(unpermute_order(shape[0], n_head).map_err(|msg| Error::tensor(path, name, msg))?)
        }
    };
    let packable = matches!(
        info.ty,
        GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
    );
    if is_linear(name) && packable && shape.len() == 2 {
        let (_, bytes) = file.tensor_bytes(name)?;
        let f = Frozen::packed(name, info.ty, shape[0], shape[1], bytes.to_vec())?;
        return Ok(Loaded::Linear(match order {
            Some(o) => f.permute_rows(&o),
            None => f,
        }));
    }
    let t = file.tensor(name)?;
    let t = match order {
        Some(o) => permute(&t, &o),
        None => t,
    };
    Ok(if is_linear(name) {
        Loaded::Linear(t.into())
    } else {
        Loaded::Dense(t)
    })
}

fn load_weights(file: &GgufFile, config: &ModelConfig) -> Result<ModelWeights> {
    let path = &file.meta().path;
    let plan = plan(config);
    let loaded: Vec<Loaded> = plan
        .par_iter()
        .map(|(name, shape, fix)| load_one(file, name, shape, *fix))
        .collect::<Result<_>>()?;
    // Hand the tensors out in plan order without copying them.
    let mut it = loaded.into_iter();
    let internal = || Error::format(path, "internal: tensors out of plan order");
    let dense = |it: &mut std::vec::IntoIter<Loaded>| match it.next() {
        Some(Loaded::Dense(t)) => Ok(t),
        _ => Err(internal()),
    };
    let linear = |it: &mut std::vec::IntoIter<Loaded>| match it.next() {
        Some(Loaded::Linear(f)) => Ok(f),
        _ => Err(internal()),
    };
    let embed = dense(&mut it)?;
    let final_norm = dense(&mut it)?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(dense(&mut it)?)
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for _ in 0..config.num_layers {
        let attn_norm = dense(&mut it)?;
        let (wq, wk, wv, wo) = (
            linear(&mut it)?,
            linear(&mut it)?,
            linear(&mut it)?,
            linear(&mut it)?,
        );
        let mlp_norm = dense(&mut it)?;
        let (w_gate, w_up, w_down) = (linear(&mut it)?, linear(&mut it)?, linear(&mut it)?);
        let (bq, bk, bv) = if config.attention_bias {
            (
                Some(dense(&mut it)?),
                Some(dense(&mut it)?),
                Some(dense(&mut it)?),
            )
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

/// The row order that undoes llama.cpp's Q/K row permutation of a `[n_head·head_dim, …]`
/// tensor: view the rows as `[n_head, head_dim/2, 2]` and swap the last two axes, so that HF
/// row `h·hd + i·hd/2 + j` is GGUF row `h·hd + 2j + i`. Entry `r` is the GGUF row of HF row `r`.
pub fn unpermute_order(rows: usize, n_head: usize) -> std::result::Result<Vec<usize>, String> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {n_head} heads of even width"
        ));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut order = vec![0; rows];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                order[h * hd + i * half + j] = h * hd + 2 * j + i;
            }
        }
    }
    Ok(order)
}

/// `t` (a `[rows, …]` tensor, or a `[rows]` bias) with row `r` taken from row `order[r]`.
fn permute(t: &Tensor, order: &[usize]) -> Tensor {
    let cols = t.len() / order.len().max(1);
    let mut out = Vec::with_capacity(t.len());
    for &r in order {
        out.extend_from_slice(&t.data[r * cols..(r + 1) * cols]);
    }
    Tensor {
        shape: t.shape.clone(),
        data: out,
    }
}

/// Undo llama.cpp's Q/K row permutation of a `[n_head·head_dim, in]` weight (or a
/// `[n_head·head_dim]` bias): see [`unpermute_order`].
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> std::result::Result<Tensor, String> {
    let rows = t.shape.first().copied().unwrap_or(0);
    Ok(permute(t, &unpermute_order(rows, n_head)?))
}
