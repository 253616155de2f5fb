//! `gradients merge --model M --adapter A --out DIR`: the base model with a PEFT LoRA adapter
//! merged in (`W + s·B·A`), written as an HF model directory (f32 `model.safetensors`,
//! `config.json`, tokenizer files) that transformers loads. The base may be an HF directory
//! or a GGUF file (engine `lora::merge`).

use std::path::PathBuf;

use anyhow::Context;
use gradients_engine::lora::merge::merge_model;

/// Flags of `gradients merge`.
#[derive(clap::Args)]
pub struct Args {
    /// The base model: a GGUF file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// The PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Where to write the merged model (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
}

/// Merge and print what was written.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.run.setup()?.precision != gradients_engine::backend::Precision::F32 {
        eprintln!("merge computes W + s·B·A in f32 and writes f32 weights; --precision is ignored");
    }
    let s = merge_model(&args.model, &args.adapter, &args.out).with_context(|| {
        format!(
            "merging {} into {}",
            args.adapter.display(),
            args.model.display()
        )
    })?;
    println!(
        "merged {} LoRA weights into {}; wrote {} (model.safetensors f32, config.json{})",
        s.merged,
        args.model.display(),
        s.out.display(),
        s.tokenizer_files
            .iter()
            .map(|f| format!(", {f}"))
            .collect::<String>()
    );
    Ok(())
}
