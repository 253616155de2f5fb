//! Shared pieces of the tests that drive the built `gradients` binary (eval_dpo.rs,
//! eval_grpo.rs, chain_cli.rs, chain_local.rs, tasks_method.rs): running it with arguments,
//! and the fixed non-trivial adapter the `gradients eval` tests score against the engine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use gradients_engine::lora::{LoraConfig, LoraWeights, Target};
use gradients_engine::model::ModelConfig;

/// Run `gradients ARGS`: (success, stdout, stderr).
pub fn gradients(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gradients"))
        .args(args)
        .output()
        .expect("gradients runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A rank-2 q/v adapter for `config` whose B matrices are a fixed non-zero pattern (so it
/// moves the model off the base), saved as `dir/adapter` for `base_model`; returns the
/// weights and the directory.
pub fn save_patterned_adapter(
    config: &ModelConfig,
    dir: &Path,
    base_model: &str,
) -> (LoraWeights, PathBuf) {
    let lcfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V],
        use_rslora: false,
    };
    let mut lw = LoraWeights::init(config, &lcfg, 1).unwrap();
    for p in lw.pairs_mut() {
        for (i, b) in p.b.data.iter_mut().enumerate() {
            *b = 0.02 * ((i % 7) as f32 - 3.0);
        }
    }
    let adapter = dir.join("adapter");
    lw.save(&adapter, base_model).unwrap();
    (lw, adapter)
}
