//! `gradients inspect MODEL`: what a model file holds, in a few lines (or one JSON object).

use std::path::PathBuf;

use anyhow::Context;
use gradients_engine::model::load::load_model;

/// Flags of `gradients inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or an HF model directory (config.json + safetensors).
    model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Load the model and describe it.
pub fn run(args: Args) -> anyhow::Result<()> {
    let m = load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let c = &m.config;
    let params = m.weights.num_params();
    let tok = m.tokenizer.as_ref();
    if args.json {
        let v = serde_json::json!({
            "source": m.source,
            "format": format!("{:?}", m.format),
            "arch": format!("{:?}", c.arch),
            "layers": c.num_layers,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "heads": c.num_heads,
            "kv_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "vocab_size": c.vocab_size,
            "tied_embeddings": c.tie_word_embeddings,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "parameters": params,
            "tokenizer_vocab": tok.map(|t| t.vocab_size()),
            "chat_template": tok.and_then(|t| t.chat_template()).is_some(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("{} ({:?})", m.source.display(), m.format);
    println!("  arch            {:?}", c.arch);
    println!("  layers          {}", c.num_layers);
    println!(
        "  hidden / ffn    {} / {}",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "  heads / kv      {} / {} (head_dim {})",
        c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!(
        "  vocab           {} (tied embeddings: {})",
        c.vocab_size, c.tie_word_embeddings
    );
    println!(
        "  rope            theta {} scaling {:?}",
        c.rope_theta, c.rope_scaling
    );
    println!("  context         {}", c.max_position_embeddings);
    println!("  parameters      {:.1}M", params as f64 / 1e6);
    match tok {
        Some(t) => println!(
            "  tokenizer       {} ids, chat template: {}",
            t.vocab_size(),
            if t.chat_template().is_some() {
                "yes"
            } else {
                "no"
            }
        ),
        None => println!("  tokenizer       none"),
    }
    Ok(())
}
