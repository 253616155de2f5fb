//! The `gradients` command-line tool: the engine and the subnet layer as their users drive them.
//!
//! One module per subcommand; each parses its own flags (clap derive) and returns
//! `anyhow::Result` so every failure reaches the user as one clear message with its context.

mod bench; // gradients bench: train/eval tokens/s and peak RSS on a real model
mod eval; // gradients eval: SFT test loss (per sample and mean), with or without an adapter
mod generate; // gradients generate: greedy decoding, optionally with an adapter
mod inspect; // gradients inspect MODEL
mod merge; // gradients merge: base + LoRA adapter -> HF model directory
mod runtime; // RunArgs: --device (with CPU fallback) and --threads for every model command
mod train; // gradients train --config run.toml: LoRA SFT with checkpoints and resume

use clap::{Parser, Subcommand};

/// gradients: a LoRA training engine and training marketplace.
#[derive(Parser)]
#[command(name = "gradients", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes and tokenizer (GGUF file or HF directory).
    Inspect(inspect::Args),
    /// Greedy decoding of a chat prompt (optionally with a PEFT adapter).
    Generate(generate::Args),
    /// Measure LoRA training and evaluation tokens/s and peak memory on a model.
    Bench(bench::Args),
    /// LoRA fine-tuning from a TOML/JSON run config (resumes from its last checkpoint).
    Train(train::Args),
    /// SFT test loss of a model, optionally with an adapter, as one JSON object.
    Eval(eval::Args),
    /// Merge a LoRA adapter into its base model and write an HF model directory.
    Merge(merge::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Merge(args) => merge::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
