//! `gradients eval` with a GRPO mapping (`task_type = "grpo"`, SPEC §3): generate a
//! completion per prompt with the model (+ adapter), score the mapping's reward functions
//! and the KL(base‖tuned), print the engine's `GrpoEvalResult` as JSON (per-prompt
//! completions, rewards and KL; per-function raw means; mean KL). The cross-submission
//! normalisation (`grpo_scores`) needs every compared submission, so it is not applied here.
//! eval.rs parses the shared flags and dispatches here.

use std::path::Path;

use anyhow::Context;
use gradients_engine::backend::Backend;
use gradients_engine::data::{grpo_prompts, GrpoMapping, Record, TextTokenizer};
use gradients_engine::eval::grpo::DEFAULT_MAX_NEW_TOKENS;
use gradients_engine::eval::{evaluate_grpo, GrpoEvalOptions};
use gradients_engine::lora::LoraState;
use gradients_engine::model::{Llama, Sampling};

/// Generation flags of a GRPO evaluation.
#[derive(clap::Args)]
pub struct GrpoArgs {
    /// GRPO: most new tokens per completion.
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// GRPO: sampling temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// GRPO: keep the K most likely tokens when sampling (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// GRPO: nucleus mass kept when sampling (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// GRPO: seed of the sampling draws.
    #[arg(long, default_value_t = 0)]
    sample_seed: u64,
}

/// Evaluate the GRPO mapping `m` on `rows` (file rows `idx`) and print the JSON result.
#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    tok: &dyn TextTokenizer,
    m: &GrpoMapping,
    rows: &[Record],
    idx: &[usize],
    data: &Path,
    limit: Option<usize>,
    args: &GrpoArgs,
    json_only: bool,
) -> anyhow::Result<()> {
    let rows = &rows[..limit.unwrap_or(rows.len()).min(rows.len())];
    let mut prompts = grpo_prompts(tok, m, rows, data)
        .with_context(|| format!("rendering prompts of {}", data.display()))?;
    for p in &mut prompts {
        p.row = idx[p.row];
    }
    let opts = GrpoEvalOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: Sampling {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.sample_seed,
        },
    };
    let r = evaluate_grpo(model, lora, tok, m, &prompts, &opts).context("evaluating grpo")?;
    println!("{}", serde_json::to_string(&r)?);
    if !json_only {
        eprintln!(
            "grpo: {} prompts; mean rewards {:?} (weights {:?}); mean KL(base||tuned) {:.6} over {} positions",
            r.prompts, r.mean_rewards, r.weights, r.mean_kl, r.kl_positions
        );
    }
    Ok(())
}
