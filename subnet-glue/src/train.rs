//! `gradients train --config run.toml`: run (or resume) a LoRA SFT run from a TOML/JSON
//! config (engine `train` module), printing one line per step and evaluation and a final
//! summary. SIGINT/SIGTERM save a checkpoint and exit cleanly; a rerun resumes from it.

use std::path::PathBuf;

use anyhow::Context;
use gradients_engine::train::{install_signal_flag, train, Event, RunOptions, TrainConfig};

/// Flags of `gradients train`.
#[derive(clap::Args)]
pub struct Args {
    /// The run's config (.toml or .json); relative paths in it are relative to its directory.
    #[arg(long)]
    config: PathBuf,
    /// Start over, ignoring any checkpoint in the output directory.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
    /// Print the summary as one JSON object too.
    #[arg(long)]
    json: bool,
}

/// Run the training and print its progress and summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.run.setup()?;
    let cfg = TrainConfig::from_file(&args.config)
        .with_context(|| format!("reading train config {}", args.config.display()))?;
    let stop = install_signal_flag()?;
    let opts = RunOptions {
        fresh: args.fresh,
        stop: Some(stop),
        stop_after_steps: None,
    };
    let mut print = |e: Event<'_>| {
        match e {
        Event::Start {
            train_samples,
            test_samples,
            total_steps,
            first_step,
        } => println!(
            "data: {train_samples} train / {test_samples} test samples; {total_steps} steps planned{}",
            if first_step > 0 {
                format!(", resuming after step {first_step}")
            } else {
                String::new()
            }
        ),
        Event::Step(r) => println!(
            "step {:>5} epoch {} loss {:.4} lr {:.3e} grad_norm {:.3} tokens {} ({:.0} tok/s)",
            r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens, r.tokens_per_s
        ),
        Event::Eval {
            step,
            adapter,
            result,
        } => println!(
            "eval  step {step}: {} test loss {:.4} over {} tokens, {} samples",
            if adapter { "adapter" } else { "base" },
            result.mean_loss,
            result.tokens,
            result.samples
        ),
        Event::Checkpoint { step, dir } => {
            println!("saved checkpoint at step {step}: {}", dir.display())
        }
    }
    };
    let s = train(&cfg, &opts, &mut print)
        .with_context(|| format!("training run {}", args.config.display()))?;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
    println!(
        "done: {} steps ({:?}), {} tokens, {:.0} tok/s; base test loss {}, final test loss {}; adapter {}",
        s.steps,
        s.stop_reason,
        s.tokens,
        s.tokens_per_s,
        fmt(s.base_test_loss),
        fmt(s.final_test_loss),
        s.adapter_dir.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}
