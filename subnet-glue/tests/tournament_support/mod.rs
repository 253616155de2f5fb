//! Shared set-up of the tournament tests: the tournament config and the play-to-the-end call
//! every in-process tournament test uses (tournament_e2e.rs, tournament_group.rs,
//! tournament_grpo.rs), and for the real-asset ones (tournament_e2e.rs, tournament_resume.rs)
//! three CI-sized methods (a bold, a steady and a timid learning rate) written as method
//! files, and the real SmolLM2 + alpaca assets, or a printed reason to skip. The tiny model
//! and datasets live in tasks_support.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gradients_subnet::store::Store;
use gradients_subnet::tournament::bootstrap::GateConfig;
use gradients_subnet::tournament::run::{
    run_tournament, Event, Outcome, Submission, TaskSource, TournamentConfig,
};
use gradients_subnet::tournament::TaskKind;
use gradients_subnet::validator::{BaseModel, ValidatorOptions};

/// A tournament over `model` playing tasks of `sources`, scored by `validator`: two boss
/// tasks, the default gate, an hour per task, a fresh id.
pub fn tournament_config(
    model: &Path,
    sources: Vec<TaskSource>,
    validator: ValidatorOptions,
    seed: u64,
) -> TournamentConfig {
    TournamentConfig {
        tournament_id: None,
        seed,
        base_model: model.to_path_buf(),
        sources,
        boss_tasks: 2,
        gate: GateConfig::default(),
        validator,
        hours_to_complete: 1.0,
    }
}

/// Instruct tasks from the alpaca-style rows of `data` (instruction, input, output).
pub fn instruct_source(data: &Path) -> TaskSource {
    TaskSource {
        kind: TaskKind::Instruct,
        dataset: data.to_path_buf(),
        mapping: serde_json::from_str(
            r#"{"task_type": "instruct", "field_instruction": "instruction",
                "field_input": "input", "field_output": "output"}"#,
        )
        .unwrap(),
        grpo: None,
    }
}

/// Run the tournament to its end (every match record printed to stderr).
pub fn play(
    store: &Store,
    base: &BaseModel,
    cfg: &TournamentConfig,
    subs: &[Submission],
) -> Outcome {
    let mut log = |e: Event<'_>| {
        if let Event::Match { record, .. } = e {
            eprintln!("{record:?}");
        }
    };
    run_tournament(store, base, cfg, subs, &mut log).unwrap()
}

/// The cached SmolLM2 GGUF and alpaca demo, or why they are unavailable (never fetched: CI
/// without assets skips).
pub fn assets() -> Result<(PathBuf, PathBuf), String> {
    use gradients_engine::assets::{cache_dir, ALPACA_EN_DEMO, SMOLLM2_GGUF};
    let dir = cache_dir()?;
    let (m, d) = (dir.join(SMOLLM2_GGUF), dir.join(ALPACA_EN_DEMO));
    for p in [&m, &d] {
        if !p.is_file() {
            return Err(format!("{} is missing", p.display()));
        }
    }
    Ok((m, d))
}

/// Tokens each method may train on per task.
pub const TOKEN_BUDGET: u64 = 640;
/// Test and synthetic samples scored per task.
pub const EVAL_SAMPLES: usize = 8;
/// Evaluation length.
pub const EVAL_SEQ_LEN: usize = 128;

/// Write the three methods into `dir`: `a-bold` (lr 2e-3), `b-steady` (lr 2e-4) and
/// `c-timid` (lr 1e-6, half the budget); with 5 steps of 128 tokens the bold one learns
/// most and the timid one barely moves.
pub fn write_methods(dir: &Path) -> Vec<PathBuf> {
    let methods = [
        ("a-bold", 2e-3, 1.0, 8),
        ("b-steady", 2e-4, 1.0, 8),
        ("c-timid", 1e-6, 0.5, 4),
    ];
    std::fs::create_dir_all(dir).unwrap();
    methods
        .iter()
        .map(|(name, lr, fraction, r)| {
            let p = dir.join(format!("{name}.toml"));
            std::fs::write(
                &p,
                format!(
                    "name = \"{name}\"\n[lora]\nr = {r}\nalpha = {}\n[optimizer]\nlr = {lr:e}\n\
                     [train]\nmicro_batch = 2\nseq_len = 64\n[budget]\nfraction = {fraction:?}\n",
                    2 * r
                ),
            )
            .unwrap();
            p
        })
        .collect()
}
