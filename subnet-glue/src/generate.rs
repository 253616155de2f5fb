//! `gradients generate`: greedy decoding with a model (and optionally a LoRA adapter) on the
//! CPU backend — the quickest way to see that a model and an adapter work.

use std::path::PathBuf;

use anyhow::{bail, Context};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::llama::Llama;
use gradients_engine::model::load::load_model;
use gradients_engine::tokenizer::ChatMessage;

/// Flags of `gradients generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter directory to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The user's message (rendered with the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// Feed the prompt as plain text instead of a chat turn.
    #[arg(long)]
    raw: bool,
    /// Most new tokens to generate.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
}

/// Load, render, decode greedily, print the completion.
pub fn run(args: Args) -> anyhow::Result<()> {
    let at = args.run.setup()?;
    let m = load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let Some(tok) = m.tokenizer.as_ref() else {
        bail!("{} carries no tokenizer", args.model.display());
    };
    let text = if args.raw {
        args.prompt.clone()
    } else {
        tok.render_chat(&[ChatMessage::new("user", args.prompt.as_str())], true)?
    };
    let be = CpuBackend::with_precision(at.precision)?;
    let mut model = Llama::from_weights(be.clone(), &m.config, m.weights)?;
    let lora = match &args.adapter {
        Some(dir) => {
            let w = LoraWeights::load(dir, &m.config)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            Some(LoraState::upload(&be, &w)?)
        }
        None => None,
    };
    let prompt = tok.encode(&text)?;
    let new = model.greedy(&prompt, args.max_tokens, tok.eos_id(), lora.as_ref())?;
    println!("{}", tok.decode(&new)?);
    Ok(())
}
