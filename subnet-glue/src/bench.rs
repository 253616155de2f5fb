//! `gradients bench`: tokens/s of LoRA training steps and of forward-only evaluation on a real
//! model, with the same settings as scripts/compare/torch_peft.py (LoRA r on all seven
//! projections, AdamW, `batch × seq` fixed pseudo-random tokens, every position labelled),
//! plus peak RSS. Runs on `--device` (the CPU backend, or the CUDA backend in a build with the
//! `cuda` feature). Prints one JSON object; BENCHMARKS.md records the runs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use gradients_engine::backend::device::{run_on, BackendTask};
use gradients_engine::backend::Backend;
use gradients_engine::lora::{LoraConfig, LoraState, LoraWeights};
use gradients_engine::model::llama::{Llama, StepOptions};
use gradients_engine::model::load::load_model;
use gradients_engine::model::{Batch, ModelConfig, ModelWeights};
use gradients_engine::optim::adamw::{AdamW, AdamWConfig};

/// Flags of `gradients bench`.
#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or an HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Rows per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Gradient checkpointing.
    #[arg(long)]
    recompute: bool,
}

/// Run the benchmark and print its JSON line.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.run.setup_device()?;
    anyhow::ensure!(
        args.batch > 0 && args.seq > 1 && args.steps > 0,
        "batch, seq and steps must be positive (seq > 1)"
    );
    let m = load_model(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    drop(m.tokenizer); // the benchmark feeds token ids; torch_peft.py loads no tokenizer either
    let task = BenchTask {
        args: &args,
        cfg: m.config,
        weights: m.weights,
    };
    let v = run_on(device, task).context("benchmarking")??;
    println!("{v}");
    Ok(())
}

/// The measured part of `run`, generic over the backend.
struct BenchTask<'a> {
    args: &'a Args,
    cfg: ModelConfig,
    weights: ModelWeights,
}

impl BackendTask for BenchTask<'_> {
    type Output = anyhow::Result<serde_json::Value>;
    fn run<B: Backend + Clone>(self, be: B) -> gradients_engine::Result<Self::Output> {
        Ok(self.bench(be))
    }
}

impl BenchTask<'_> {
    fn bench<B: Backend + Clone>(self, be: B) -> anyhow::Result<serde_json::Value> {
        let BenchTask { args, cfg, weights } = self;
        let cfg = &cfg;
        // the host weights move into the model (one copy in memory, not two)
        let mut model = Llama::from_weights(be.clone(), cfg, weights)?;
        let lcfg = LoraConfig {
            rank: args.rank,
            alpha: 2.0 * args.rank as f32,
            ..LoraConfig::default()
        };
        let lw = LoraWeights::init(cfg, &lcfg, 0)?;
        let mut lora = LoraState::upload(&be, &lw)?;
        drop(lw);
        let mut grads = lora.zeros_grads(&be)?;
        let lens: Vec<usize> = lora.params().iter().map(|p| be.len(p)).collect();
        let adam = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&be, adam, &lens)?;

        // Fixed ids, identical to scripts/compare/torch_peft.py's.
        let batch = Batch::synthetic(args.batch, args.seq, cfg.vocab_size)?;
        let ntok = (args.batch * args.seq) as f64;
        // Reading a value back waits for the device's queued work (a no-op on the CPU), so
        // a timed step ends when its optimizer update has finished.
        let sync = |lora: &LoraState<B>| -> anyhow::Result<()> {
            if let Some(p) = lora.params().first() {
                be.download(p)?;
            }
            Ok(())
        };

        let mut losses = Vec::new();
        let mut train_s = 0.0;
        // device memory in use after each step and evaluation (GPU only): its largest value
        let mut device_used: Option<u64> = None;
        for i in 0..args.warmup + args.steps {
            sync(&lora)?;
            let t0 = Instant::now();
            let opts = StepOptions {
                recompute: args.recompute,
                step: i as u64,
                ..StepOptions::default()
            };
            let s = model.forward_backward(&batch, &lora, &mut grads, &opts)?;
            lora.update(&be, |p| opt.step(&be, p, &grads.bufs(), 1e-4))?;
            sync(&lora)?;
            let dt = t0.elapsed().as_secs_f64();
            losses.push(s.loss);
            if i >= args.warmup {
                train_s += dt;
            }
            device_used = device_used.max(be.device_memory_in_use());
        }
        let mut eval_s = 0.0;
        for i in 0..args.warmup + args.steps {
            let t0 = Instant::now();
            model.forward_loss(&batch, Some(&lora))?; // returns host losses: synchronised
            if i >= args.warmup {
                eval_s += t0.elapsed().as_secs_f64();
            }
            device_used = device_used.max(be.device_memory_in_use());
        }
        Ok(serde_json::json!({
            "engine": "gradients",
            "backend": be.name(),
            "precision": be.precision().to_string(),
            "threads": rayon::current_num_threads(),
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "recompute": args.recompute,
            "train_tokens_per_s": ntok * args.steps as f64 / train_s,
            "eval_tokens_per_s": ntok * args.steps as f64 / eval_s,
            "peak_rss_mib": peak_rss_mib(),
            "gpu_used_mib": device_used.map(|b| b as f64 / (1u64 << 20) as f64),
            "losses": losses,
        }))
    }
}

/// Peak resident set size of this process (VmHWM), in MiB; `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
