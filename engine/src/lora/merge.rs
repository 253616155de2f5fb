//! Merging a LoRA adapter into its base model: every adapted Linear weight becomes
//! `W + s·B·A` (PEFT's `merge_and_unload`), and [`merge_model`] writes the result as an HF
//! model directory that transformers loads: `model.safetensors` (f32, HF key names),
//! `config.json` and the tokenizer files.
//!
//! The base may be an HF directory or a GGUF file. Both loaders already give the weights in
//! HF layout (model/gguf_load.rs dequantises and undoes llama.cpp's Q/K row permutation
//! once), so the merge and the writer (model/hf_model.rs `save_hf_model`) never see GGUF
//! layouts and nothing is undone twice. Tokenizer files: an HF base's are copied as they are;
//! for a GGUF base, `tokenizer.json` is the tokenizer the engine built from the GGUF
//! (tokenizer.rs) and `tokenizer_config.json` names its special tokens and chat template.
//! The adapter comes from lora/adapter.rs (`LoraWeights::load`, shapes checked there).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::json;

use super::{LoraWeights, Target};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::hf_model::save_hf_model;
use crate::model::load::{load_model, ModelFormat};
use crate::model::{LayerWeights, ModelWeights};
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;

/// Tokenizer and generation files copied from an HF base directory when present.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// What [`merge_model`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSummary {
    /// The output directory.
    pub out: PathBuf,
    /// Linear weights changed (layers × targets).
    pub merged: usize,
    /// Tokenizer files written or copied.
    pub tokenizer_files: Vec<String>,
}

/// The Linear weight `target` adapts in `layer`, dense (a packed one is widened to f32).
fn target_weight(layer: &mut LayerWeights, target: Target) -> &mut Tensor {
    match target {
        Target::Q => &mut layer.wq,
        Target::K => &mut layer.wk,
        Target::V => &mut layer.wv,
        Target::O => &mut layer.wo,
        Target::Gate => &mut layer.w_gate,
        Target::Up => &mut layer.w_up,
        Target::Down => &mut layer.w_down,
    }
    .dense_mut()
}

/// `w += s · b · a` for `w [out, in]`, `b [out, r]`, `a [r, in]`; each element's delta is
/// summed over the rank in f64 and rounded once, rows in parallel (no order dependence).
pub fn add_scaled_product(w: &mut Tensor, b: &Tensor, a: &Tensor, s: f32) -> Result<()> {
    let (out, inp) = w.dims2()?;
    let (bo, r) = b.dims2()?;
    let (ar, ai) = a.dims2()?;
    if bo != out || ar != r || ai != inp {
        return Err(Error::shape(
            "lora merge",
            format!(
                "W {:?} += B {:?} · A {:?}: shapes do not chain",
                w.shape, b.shape, a.shape
            ),
        ));
    }
    let s = s as f64;
    w.data
        .par_chunks_mut(inp)
        .zip(b.data.par_chunks(r))
        .for_each(|(wrow, brow)| {
            for (j, wv) in wrow.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for (k, &bk) in brow.iter().enumerate() {
                    acc += bk as f64 * a.data[k * inp + j] as f64;
                }
                *wv = (*wv as f64 + s * acc) as f32;
            }
        });
    Ok(())
}

/// Merge `lora` into `weights` in place; returns the number of weights changed. The adapter
/// must have been made for this model (one pair per layer and target, shapes matching).
pub fn merge_into(weights: &mut ModelWeights, lora: &LoraWeights) -> Result<usize> {
    if lora.num_layers != weights.layers.len() {
        return Err(Error::shape(
            "lora merge",
            format!(
                "adapter has {} layers, model {}",
                lora.num_layers,
                weights.layers.len()
            ),
        ));
    }
    let s = lora.config.scaling();
    let mut n = 0;
    for (layer, target, a, b) in lora.iter() {
        let w = target_weight(&mut weights.layers[layer], target);
        add_scaled_product(w, b, a, s).map_err(|e| {
            Error::shape(
                "lora merge",
                format!("layers.{layer}.{}: {e}", target.module_path()),
            )
        })?;
        n += 1;
    }
    Ok(n)
}

/// Load the base `model` (HF dir or GGUF file) and the PEFT adapter in `adapter`, merge, and
/// write an HF model directory at `out` (created if missing; files replaced atomically).
pub fn merge_model(model: &Path, adapter: &Path, out: &Path) -> Result<MergeSummary> {
    let mut loaded = load_model(model)?;
    let lora = LoraWeights::load(adapter, &loaded.config)?;
    let merged = merge_into(&mut loaded.weights, &lora)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    save_hf_model(out, &loaded.config, &loaded.weights)?;
    let tokenizer_files = match loaded.format {
        ModelFormat::HfDir => copy_tokenizer_files(model, out)?,
        ModelFormat::Gguf => match &loaded.tokenizer {
            Some(tok) => write_gguf_tokenizer(tok, loaded.config.max_position_embeddings, out)?,
            None => Vec::new(),
        },
    };
    Ok(MergeSummary {
        out: out.to_path_buf(),
        merged,
        tokenizer_files,
    })
}

/// Copy the [`TOKENIZER_FILES`] that exist in `from` into `to`.
fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            write_atomic(&to.join(name), &bytes)?;
            done.push(name.to_string());
        }
    }
    Ok(done)
}

/// `tokenizer.json` (the engine's tokenizer, serialised by `tokenizers`) and a
/// `tokenizer_config.json` for a GGUF base.
fn write_gguf_tokenizer(tok: &Tokenizer, max_len: usize, to: &Path) -> Result<Vec<String>> {
    let tj = to.join("tokenizer.json");
    let text = tok
        .inner()
        .to_string(true)
        .map_err(|e| Error::format(&tj, format!("cannot serialise the tokenizer: {e}")))?;
    write_atomic(&tj, text.as_bytes())?;
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": false,
        "add_eos_token": false,
    });
    if let Some(b) = name(tok.bos_id()) {
        cfg["bos_token"] = json!(b);
    }
    if let Some(e) = name(tok.eos_id()) {
        cfg["eos_token"] = json!(e);
    }
    if let Some(t) = tok.chat_template() {
        cfg["chat_template"] = json!(t);
    }
    let tc = to.join("tokenizer_config.json");
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::format(&tc, format!("cannot encode: {e}")))?;
    write_atomic(&tc, text.as_bytes())?;
    Ok(vec![
        "tokenizer.json".into(),
        "tokenizer_config.json".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_product_matches_a_plain_triple_loop() {
        let (out, r, inp) = (5, 3, 7);
        let f = |n: usize, k: f32| (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * k).collect();
        let w0 = Tensor::new(vec![out, inp], f(out * inp, 0.1)).unwrap();
        let b = Tensor::new(vec![out, r], f(out * r, 0.3)).unwrap();
        let a = Tensor::new(vec![r, inp], f(r * inp, 0.2)).unwrap();
        let mut w = w0.clone();
        add_scaled_product(&mut w, &b, &a, 1.5).unwrap();
        for i in 0..out {
            for j in 0..inp {
                let d: f64 = (0..r)
                    .map(|k| b.data[i * r + k] as f64 * a.data[k * inp + j] as f64)
                    .sum();
                let want = (w0.data[i * inp + j] as f64 + 1.5 * d) as f32;
                assert_eq!(w.data[i * inp + j], want, "({i}, {j})");
            }
        }
        let bad = Tensor::zeros(vec![r, inp + 1]);
        let err = add_scaled_product(&mut w, &b, &bad, 1.0).unwrap_err();
        assert!(err.to_string().contains("lora merge"), "{err}");
    }
}
