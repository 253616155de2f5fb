//! `gradients eval`: SFT test loss of a model (optionally with a PEFT adapter) on a dataset
//! file (SPEC §3: mean cross-entropy over completion tokens, one sample per row), printed as
//! one JSON object with `mean_loss`, `tokens`, `samples`, `per_sample_loss` and `rows` (each
//! scored sample's 0-based row in the file).
//!
//! With a DPO mapping (`--field-prompt/--field-chosen/--field-rejected`, or a mapping file
//! with `task_type = "dpo"`) it prints the DPO evaluation instead (SPEC §3: β 0.1 unless
//! `--beta`, reference = the base model): `mean_loss`, `pairs`, `per_pair_loss`,
//! `reward_accuracy`, margins, rewards, `tokens` and `rows`. A `task_type = "grpo"` mapping
//! file selects the GRPO evaluation (eval_grpo.rs).

use std::path::PathBuf;

use anyhow::{bail, Context};
use gradients_engine::backend::device::{run_on, BackendTask};
use gradients_engine::backend::Backend;
use gradients_engine::data::{
    read_records, split_indices, tokenize_dpo, tokenize_sft, DpoMapping, InstructMapping, Mapping,
    Record, TokenizeOptions, Truncation,
};
use gradients_engine::eval::{dpo_samples, eval_seq_len, evaluate, evaluate_dpo, DEFAULT_BETA};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::load::{load_model, LoadedModel};
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
    /// DPO mapping: the prompt column (selects the DPO evaluation).
    #[arg(long, conflicts_with = "field_instruction")]
    field_prompt: Option<String>,
    /// DPO mapping: the chosen-answer column (default `chosen`).
    #[arg(long, requires = "field_prompt")]
    field_chosen: Option<String>,
    /// DPO mapping: the rejected-answer column (default `rejected`).
    #[arg(long, requires = "field_prompt")]
    field_rejected: Option<String>,
    /// DPO mapping: a system-text column.
    #[arg(long, requires = "field_prompt")]
    field_system: Option<String>,
    /// β of the DPO loss.
    #[arg(long, default_value_t = DEFAULT_BETA)]
    beta: f64,
    /// A mapping file (JSON or TOML, tagged by `task_type`: instruct, chat, dpo or grpo).
    #[arg(long, conflicts_with_all = ["field_instruction", "field_prompt"])]
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
    grpo: crate::eval_grpo::GrpoArgs,
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
    if let Some(fp) = &args.field_prompt {
        let d = DpoMapping::default();
        return Ok(Mapping::Dpo(DpoMapping {
            field_prompt: fp.clone(),
            field_chosen: args.field_chosen.clone().unwrap_or(d.field_chosen),
            field_rejected: args.field_rejected.clone().unwrap_or(d.field_rejected),
            field_system: args.field_system.clone(),
            ..DpoMapping::default()
        }));
    }
    let Some(fi) = &args.field_instruction else {
        bail!(
            "give --field-instruction (with --field-input/--field-output), --field-prompt (DPO) or --mapping FILE"
        );
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
    let device = args.run.setup_device()?;
    let m = load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let map = mapping(&args)?;
    map.validate().context("column mapping")?;
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
    let task = EvalTask {
        args: &args,
        m,
        map: &map,
        seq_len,
        rows: &rows,
        idx: &idx,
    };
    run_on(device, task).context("evaluating")?
}

/// The rest of `run` (model, adapter, tokenisation, evaluation, output) as work for
/// `run_on`, generic over the backend.
struct EvalTask<'a> {
    args: &'a Args,
    m: LoadedModel,
    map: &'a Mapping,
    seq_len: usize,
    rows: &'a [Record],
    idx: &'a [usize],
}

impl BackendTask for EvalTask<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: Backend + Clone>(self, be: B) -> gradients_engine::Result<anyhow::Result<()>> {
        Ok(self.eval(be))
    }
}

impl EvalTask<'_> {
    fn eval<B: Backend + Clone>(self, be: B) -> anyhow::Result<()> {
        let EvalTask {
            args,
            m,
            map,
            seq_len,
            rows,
            idx,
        } = self;
        let tok = m
            .tokenizer
            .as_ref()
            .with_context(|| format!("model {} has no tokenizer", args.model.display()))?;
        // the weights move into the model, which frees each host tensor once uploaded
        let mut model = Llama::from_weights(be.clone(), &m.config, m.weights)?;
        let lora = match &args.adapter {
            Some(dir) => {
                let w = LoraWeights::load(dir, &m.config)
                    .with_context(|| format!("loading adapter {}", dir.display()))?;
                Some(LoraState::upload(&be, &w)?)
            }
            None => None,
        };
        if let Mapping::Grpo(gm) = map {
            let (l, a) = (lora.as_ref(), args);
            let (data, lim) = (&a.data, a.limit);
            return crate::eval_grpo::run(
                &mut model, l, tok, gm, rows, idx, data, lim, &a.grpo, a.json,
            );
        }
        if let Mapping::Dpo(dm) = map {
            let tokens = tokenize_dpo(tok, dm, rows, &args.data)
                .with_context(|| format!("tokenising {}", args.data.display()))?;
            let (mut pairs, dropped) = dpo_samples(&tokens, seq_len)?;
            if let Some(n) = args.limit {
                pairs.truncate(n);
            }
            for p in &mut pairs {
                p.row = idx[p.row];
            }
            let r = evaluate_dpo(&mut model, lora.as_ref(), &pairs, args.beta)
                .context("evaluating dpo")?;
            println!("{}", serde_json::to_string(&r)?);
            if !args.json {
                eprintln!(
                    "mean dpo loss {:.4} over {} pairs ({} dropped: no completion token within {seq_len}); reward accuracy {:.3}",
                    r.mean_loss, r.pairs, dropped, r.reward_accuracy
                );
            }
            return Ok(());
        }
        let opts = TokenizeOptions {
            seq_len,
            truncation: Truncation::TruncateTail,
        };
        let (mut samples, _) = tokenize_sft(tok, map, rows, &args.data, opts)
            .with_context(|| format!("tokenising {}", args.data.display()))?;
        if let Some(n) = args.limit {
            samples.truncate(n);
        }
        for s in &mut samples {
            s.row = idx[s.row];
        }
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
}
