//! The `gradients` command-line tool: the engine and the subnet layer as their users drive them.
//!
//! One module per subcommand; each parses its own flags (clap derive) and returns
//! `anyhow::Result` so every failure reaches the user as one clear message with its context.

mod bench; // gradients bench: train/eval tokens/s and peak RSS on a real model
mod cli_chain; // gradients chain init|register|stake|set-weights|advance|epoch|metagraph
mod cli_method; // gradients method check: a miner's method normalised, with its hash
mod cli_task; // gradients task create|list|show: task intake and the stored tasks
mod cli_tournament; // gradients tournament run, gradients library list|show
mod eval; // gradients eval: SFT test loss (per sample and mean), with or without an adapter
mod eval_grpo; // gradients eval, GRPO mode: completions, rewards, KL(base||tuned)
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
    /// The embedded chain: metagraph, weights, block clock and Yuma epochs (SQLite).
    Chain(cli_chain::Args),
    /// Training tasks: create (validated intake), list, show.
    Task(cli_task::Args),
    /// Miners' methods: check a method file and print its hash.
    Method(cli_method::Args),
    /// Local tournaments among miners' methods, ending in weights and emission (SPEC §5–§6).
    #[command(subcommand)]
    Tournament(cli_tournament::TournamentCmd),
    /// The method library: tournament winners, their task wins and lineage.
    #[command(subcommand)]
    Library(cli_tournament::LibraryCmd),
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
        Command::Chain(args) => cli_chain::run(args),
        Command::Task(args) => cli_task::run(args),
        Command::Method(args) => cli_method::run(args),
        Command::Tournament(cmd) => cli_tournament::run(cmd),
        Command::Library(cmd) => cli_tournament::library(cmd),
        Command::Merge(args) => merge::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
