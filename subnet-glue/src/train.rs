//! `gradients train --config run.toml`: run (or resume) a LoRA SFT run from a TOML/JSON
//! config (engine `train` module), driven by the trainer's events: on a terminal a progress
//! bar on stderr (step/total, loss, tokens/s, ETA) with evaluations and checkpoints printed
//! above it; otherwise one plain line per step. A final summary goes to stdout.
//! SIGINT/SIGTERM save a checkpoint and exit cleanly; a rerun resumes from it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use gradients_engine::train::{install_signal_flag, train_on, Event, RunOptions, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `gradients train`.
#[derive(clap::Args)]
pub struct Args {
    /// The run's config (.toml or .json); relative paths in it are relative to its directory.
    #[arg(long)]
    config: PathBuf,
    /// Start over, ignoring any checkpoint in the output directory.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    run: crate::runtime::RunArgs,
    /// Print the summary as one JSON object too.
    #[arg(long)]
    json: bool,
}

/// Run the training and print its progress and summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.run.setup_device()?;
    let cfg = TrainConfig::from_file(&args.config)
        .with_context(|| format!("reading train config {}", args.config.display()))?;
    let stop = install_signal_flag()?;
    let opts = RunOptions {
        fresh: args.fresh,
        stop: Some(stop),
        stop_after_steps: None,
    };
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let mut print = |e: Event<'_>| progress.event(e);
    let s = train_on(&cfg, device, &opts, &mut print);
    progress.finish();
    let s = s.with_context(|| format!("training run {}", args.config.display()))?;
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
    println!(
        "done: {} steps ({:?}), {} tokens, {:.0} tok/s; base test loss {}, final test loss {}; adapter {}{}",
        s.steps,
        s.stop_reason,
        s.tokens,
        s.tokens_per_s,
        fmt(s.base_test_loss),
        fmt(s.final_test_loss),
        s.adapter_dir.display(),
        s.best.as_ref().map_or(String::new(), |b| format!(
            "; best test loss {:.4} at step {} kept in {}",
            b.test_loss,
            b.step,
            cfg.output_dir.join("best").display()
        ))
    );
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

/// How the run's events are shown: a progress bar (stderr is a terminal) or plain lines.
struct Progress {
    bar: Option<ProgressBar>,
    tty: bool,
}

impl Progress {
    fn new(tty: bool) -> Self {
        Progress { bar: None, tty }
    }

    /// Print `line` on stdout, above the bar when there is one.
    fn line(&self, line: String) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn event(&mut self, e: Event<'_>) {
        match e {
            Event::Start {
                train_samples,
                test_samples,
                total_steps,
                first_step,
            } => {
                self.line(format!(
                    "data: {train_samples} train / {test_samples} test samples; {total_steps} steps planned{}",
                    if first_step > 0 {
                        format!(", resuming after step {first_step}")
                    } else {
                        String::new()
                    }
                ));
                if self.tty {
                    let bar = ProgressBar::new(total_steps);
                    let style = ProgressStyle::with_template(
                        "{spinner} step {pos}/{len} [{bar:30}] {msg} {elapsed_precise} (eta {eta})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                    bar.set_style(style);
                    bar.set_position(first_step);
                    bar.reset_eta();
                    bar.set_message("loss -");
                    bar.enable_steady_tick(Duration::from_millis(250));
                    self.bar = Some(bar);
                }
            }
            Event::Step(r) => match &self.bar {
                Some(b) => {
                    b.set_message(format!(
                        "loss {:.4} | {:.0} tok/s",
                        r.loss, r.tokens_per_s
                    ));
                    b.set_position(r.step);
                }
                None => println!(
                    "step {:>5} epoch {} loss {:.4} lr {:.3e} grad_norm {:.3} tokens {} ({:.0} tok/s)",
                    r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens, r.tokens_per_s
                ),
            },
            Event::Eval {
                step,
                adapter,
                result,
            } => self.line(format!(
                "eval  step {step}: {} test loss {:.4} over {} tokens, {} samples",
                if adapter { "adapter" } else { "base" },
                result.mean_loss,
                result.tokens,
                result.samples
            )),
            Event::Checkpoint { step, dir } => {
                self.line(format!(
                    "saved checkpoint at step {step}: {}",
                    dir.display()
                ))
            }
        }
    }

    /// Remove the bar (the summary follows on stdout).
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
