//! `gradients eval`: SFT test loss of a model (optionally with a PEFT adapter) on a dataset
//! file (SPEC §3: mean cross-entropy over completion tokens, one sample per row), printed as
//! one JSON object with `mean_loss`, `tokens`, `samples`, `per_sample_loss` and `rows` (each
//! scored sample's 0-based row in the file).

use std::path::PathBuf;

use anyhow::{bail, Context};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{
    read_records, split_indices, tokenize_sft, InstructMapping, Mapping, TokenizeOptions,
    Truncation,
};
use gradients_engine::eval::{eval_seq_len, evaluate};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::load::load_model;
use gradients_engine::model::Llama;

/// Flags of `gradients eval`.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// A PEFT adapter directory (none: the base model).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The dataset file (JSON array, JSONL or CSV).
    #[arg(long)]
    data: PathBuf,
    /// Instruct mapping: the instruction column.
    #[arg(long)]
    field_instruction: Option<String>,
    /// Instruct mapping: the input column.
    #[arg(long)]
    field_input: Option<String>,
    /// Instruct mapping: the output column.
    #[arg(long)]
    field_output: Option<String>,
    /// A mapping file (JSON or TOML, tagged by `task_type`: instruct or chat).
    #[arg(long, conflicts_with = "field_instruction")]
    mapping: Option<PathBuf>,
    /// Which rows: all of the file, or its SPEC §2 test or train split (seed 42).
    #[arg(long, default_value = "all", value_parser = ["all", "test", "train"])]
    split: String,
    /// Evaluate only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens per sample (longer ones lose their tail); default SPEC §3's (4096, or 2048
    /// when the model's max positions are under 8192).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Rows per forward.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Print the JSON object only (otherwise a one-line summary follows it on stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
}

fn mapping(args: &Args) -> anyhow::Result<Mapping> {
    if let Some(path) = &args.mapping {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading mapping {}", path.display()))?;
        let m: Mapping = if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            toml_like(&text).with_context(|| format!("parsing mapping {}", path.display()))?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("parsing mapping {}", path.display()))?
        };
        return Ok(m);
    }
    let Some(fi) = &args.field_instruction else {
        bail!("give --field-instruction (with --field-input/--field-output) or --mapping FILE");
    };
    Ok(Mapping::Instruct(InstructMapping {
        field_instruction: fi.clone(),
        field_input: args.field_input.clone(),
        field_output: args.field_output.clone(),
        ..InstructMapping::default()
    }))
}

/// A TOML mapping file.
fn toml_like(text: &str) -> anyhow::Result<Mapping> {
    Ok(toml::from_str(text)?)
}

/// Evaluate and print the JSON result.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.run.setup()?;
    let m = load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let map = mapping(&args)?;
    map.validate().context("column mapping")?;
    let tok = m
        .tokenizer
        .as_ref()
        .with_context(|| format!("model {} has no tokenizer", args.model.display()))?;
    let seq_len = args.seq_len.unwrap_or_else(|| eval_seq_len(&m.config));
    let records = read_records(&args.data)
        .with_context(|| format!("reading dataset {}", args.data.display()))?;
    // file row of each selected row
    let idx: Vec<usize> = match args.split.as_str() {
        "all" => (0..records.len()).collect(),
        which => {
            let s = split_indices(records.len(), 42)
                .with_context(|| format!("splitting {}", args.data.display()))?;
            if which == "test" {
                s.test
            } else {
                s.train
            }
        }
    };
    let rows: Vec<_> = idx.iter().map(|&i| records[i].clone()).collect();
    let opts = TokenizeOptions {
        seq_len,
        truncation: Truncation::TruncateTail,
    };
    let (mut samples, _) = tokenize_sft(tok, &map, &rows, &args.data, opts)
        .with_context(|| format!("tokenising {}", args.data.display()))?;
    if let Some(n) = args.limit {
        samples.truncate(n);
    }
    for s in &mut samples {
        s.row = idx[s.row];
    }
    let be = CpuBackend::<f32>::new();
    let mut model = Llama::new(be.clone(), &m.config, &m.weights)?;
    let lora = match &args.adapter {
        Some(dir) => {
            let w = LoraWeights::load(dir, &m.config)
                .with_context(|| format!("loading adapter {}", dir.display()))?;
            Some(LoraState::upload(&be, &w)?)
        }
        None => None,
    };
    let r = evaluate(&mut model, lora.as_ref(), &samples, args.batch).context("evaluating")?;
    println!("{}", serde_json::to_string(&r)?);
    if !args.json {
        eprintln!(
            "mean loss {:.4} over {} completion tokens of {} samples",
            r.mean_loss, r.tokens, r.samples
        );
    }
    Ok(())
}
