//! The `gradients` command-line tool: the engine and the subnet layer as their users drive them.
use clap::Parser;

/// gradients: LoRA training engine and training marketplace.
#[derive(Parser)]
#[command(name = "gradients", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
