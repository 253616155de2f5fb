//! Training checkpoints: the adapter (a PEFT directory, lora/adapter.rs), the AdamW moments
//! (`optimizer.safetensors`, tensors `m.{i}` / `v.{i}`, step in the metadata) and the
//! trainer's position ([`TrainerState`], `trainer_state.json`), in
//! `<output>/checkpoints/step-NNNNNNNN/`.
//!
//! Writes are atomic: everything goes into a `.tmp-…` directory that is renamed into place
//! once complete, then `checkpoints/latest` (written with io.rs's `write_atomic`) names it.
//! A crash mid-save leaves the previous checkpoint intact. trainer.rs saves and resumes.
//!
//! With `keep_best`, `<output>/best/` holds the adapter of the lowest test loss so far (a
//! PEFT directory) and `best.json` ([`BestRecord`]); it is replaced by a directory rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::lora::LoraWeights;
use crate::model::st::{write_safetensors, TensorStore};
use crate::model::ModelConfig;
use crate::optim::adamw::AdamWState;
use crate::tensor::Tensor;

/// Where the trainer stands after a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: u64,
    /// Epoch of the next step.
    pub epoch: u32,
    /// Index of the next step within its epoch.
    pub position: u64,
    /// The run's seed (dropout masks are `counter_hash(seed, step, ...)`; no other RNG state).
    pub seed: u64,
    /// Trained tokens so far (sample tokens, padding excluded).
    pub tokens: u64,
    /// The run's config (checked on resume).
    pub config: serde_json::Value,
}

/// The directory of the checkpoint after `step`.
pub fn checkpoint_dir(output: &Path, step: u64) -> PathBuf {
    output.join("checkpoints").join(format!("step-{step:08}"))
}

/// Save a checkpoint for `state.step` atomically; returns its directory.
pub fn save_checkpoint(
    output: &Path,
    lora: &LoraWeights,
    opt: &AdamWState,
    state: &TrainerState,
    base_model: &str,
) -> Result<PathBuf> {
    let root = output.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let dir = checkpoint_dir(output, state.step);
    let tmp = root.join(format!(".tmp-step-{:08}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    lora.save(&tmp.join("adapter"), base_model)?;
    let tensors: Vec<(String, Tensor)> = opt
        .m
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("m.{i}"), Tensor::new(vec![m.len()], m.clone())))
        .chain(
            opt.v
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("v.{i}"), Tensor::new(vec![v.len()], v.clone()))),
        )
        .map(|(n, t)| t.map(|t| (n, t)))
        .collect::<Result<_>>()?;
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let meta = HashMap::from([
        ("step".to_string(), opt.step.to_string()),
        ("params".to_string(), opt.m.len().to_string()),
    ]);
    write_safetensors(&tmp.join("optimizer.safetensors"), &refs, Some(&meta))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::format(&tmp.join("trainer_state.json"), e.to_string()))?;
    write_atomic(&tmp.join("trainer_state.json"), &json)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    let name = format!("step-{:08}\n", state.step);
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, state.step)?;
    Ok(dir)
}

/// Keep the two newest checkpoints.
fn prune(root: &Path, newest: u64) -> Result<()> {
    let mut steps = list_steps(root)?;
    steps.retain(|&s| s <= newest);
    steps.sort_unstable();
    let n = steps.len();
    for &s in steps.iter().take(n.saturating_sub(2)) {
        let d = root.join(format!("step-{s:08}"));
        std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    Ok(())
}

fn list_steps(root: &Path) -> Result<Vec<u64>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        if let Some(s) = name.to_str().and_then(|n| n.strip_prefix("step-")) {
            if let Ok(step) = s.parse::<u64>() {
                out.push(step);
            }
        }
    }
    Ok(out)
}

/// The newest complete checkpoint under `output`, if any (`latest`, else the highest step).
pub fn latest_checkpoint(output: &Path) -> Result<Option<PathBuf>> {
    let root = output.join("checkpoints");
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if dir.join("trainer_state.json").is_file() {
            return Ok(Some(dir));
        }
    }
    let mut steps = list_steps(&root)?;
    steps.sort_unstable();
    Ok(steps
        .last()
        .map(|&s| root.join(format!("step-{s:08}")))
        .filter(|d| d.join("trainer_state.json").is_file()))
}

/// What `best/best.json` says about the kept adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    /// Steps done when the adapter was evaluated.
    pub step: u64,
    /// Its mean test loss.
    pub test_loss: f64,
}

/// The directory of the kept best adapter.
pub fn best_dir(output: &Path) -> PathBuf {
    output.join("best")
}

/// Replace `<output>/best/` with `lora` and `record` (written aside, then renamed).
pub fn save_best(
    output: &Path,
    lora: &LoraWeights,
    record: &BestRecord,
    base_model: &str,
) -> Result<PathBuf> {
    let dir = best_dir(output);
    let tmp = output.join(".tmp-best");
    let old = output.join(".old-best");
    for d in [&tmp, &old] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
    }
    lora.save(&tmp, base_model)?;
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::format(&tmp.join("best.json"), e.to_string()))?;
    write_atomic(&tmp.join("best.json"), &json)?;
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(dir)
}

/// The record of the kept best adapter, if `<output>/best/best.json` exists.
pub fn read_best(output: &Path) -> Result<Option<BestRecord>> {
    let p = best_dir(output).join("best.json");
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::format(&p, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// The adapter.
    pub lora: LoraWeights,
    /// The optimiser moments.
    pub opt: AdamWState,
    /// The trainer's position.
    pub state: TrainerState,
}

/// Load the checkpoint in `dir` for a model with config `cfg`.
pub fn load_checkpoint(dir: &Path, cfg: &ModelConfig) -> Result<Checkpoint> {
    let lora = LoraWeights::load(&dir.join("adapter"), cfg)?;
    let sp = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| Error::format(&sp, e.to_string()))?;
    let op = dir.join("optimizer.safetensors");
    let store = TensorStore::from_file(&op)?;
    let meta_num = |key: &str| -> Result<u64> {
        let f = crate::model::st::SafetensorsFile::open(&op)?;
        f.metadata()
            .and_then(|m| m.get(key))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::format(&op, format!("metadata `{key}` missing or not a number")))
    };
    let step = u32::try_from(meta_num("step")?)
        .map_err(|_| Error::format(&op, "metadata `step` out of range"))?;
    let n = meta_num("params")? as usize;
    let mut m = Vec::with_capacity(n);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        m.push(store.tensor(&format!("m.{i}"))?.data);
        v.push(store.tensor(&format!("v.{i}"))?.data);
    }
    Ok(Checkpoint {
        lora,
        opt: AdamWState { step, m, v },
        state,
    })
}
