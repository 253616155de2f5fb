//! `gradients method check FILE`: read a miner's method (TOML/JSON, method.rs), print it
//! normalised with every default filled in, and its content hash; a bad file is an error
//! naming the field. Nothing in a method is ever executed.

use std::path::PathBuf;

use anyhow::Context;
use gradients_subnet::method::Method;

/// Flags of `gradients method`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Validate a method file; print it normalised and its hash.
    Check {
        /// The method (TOML, or JSON by extension).
        file: PathBuf,
    },
}

/// Run the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Check { file } => {
            let m = Method::from_file(&file)
                .with_context(|| format!("checking method {}", file.display()))?;
            print!("{}", m.to_toml()?);
            println!("# hash = \"{}\"", m.hash());
        }
    }
    Ok(())
}
