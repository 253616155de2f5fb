//! The LoRA SFT training loop: data → split → tokens → a deterministic step plan → steps
//! (micro-batches with gradient accumulation, clipping, AdamW on a schedule) → metrics,
//! checkpoints, evaluation; resumable bit for bit.
//!
//! - Split (SPEC §2): the whole file is tokenised (errors name the file's rows), then
//!   `split_indices(rows, 42)` puts each sample in train or test. Test samples are evaluated
//!   with eval/mod.rs (truncated to `seq_len` like the training samples).
//! - Plan: epoch `e` orders the train samples by `counter_hash([seed, e])` (packed rows by
//!   first-fit in that order, or one sample per row), cuts them into micro-batches of
//!   `micro_batch` rows and those into steps of `grad_accum` micro-batches (the epoch's last
//!   step may have fewer). Steps are planned up to `epochs`, `max_steps` and the token
//!   budget; the LR schedule spans the planned steps.
//! - Token budget: a step's tokens are its samples' tokens (padding excluded); the run stops
//!   before the first step that would take the total past `token_budget`, so the trained
//!   tokens never exceed it and the stop step depends only on the data and the config.
//! - A step: every micro-batch's gradient is taken with `loss_scale = 1 / targets of the
//!   whole step` and summed (`axpy`), so accumulation equals one big batch; then clipping
//!   and AdamW at `schedule.lr_at(step)`. A non-finite loss or gradient norm ends the run
//!   with an error before the update; the last checkpoint on disk stays the last good one.
//! - Stops: interruption (a flag, set by SIGINT/SIGTERM via [`install_signal_flag`]) and the
//!   wall-clock budget are checked between steps (the budget with 1.5× the slowest step
//!   plus the last save's time as a margin); both save a checkpoint and return normally.
//! - DPO (`mapping.task_type = "dpo"`): train/dpo.rs supplies the data, the plan, the step's
//!   gradients and the test evaluation (the mean DPO loss, recorded as the test loss); the
//!   loop, budgets, checkpoints and metrics are shared.
//! - GRPO (`mapping.task_type = "grpo"`): train/grpo.rs likewise supplies the data, the
//!   plan, the step (sampled groups, advantages, β = 0) and the test evaluation (the negated
//!   unnormalised GRPO score, recorded as the test loss).
//! - Files in `output_dir`: `metrics.jsonl` (one JSON object per step, and per evaluation),
//!   `loss.svg` (plot.rs; redrawn after every evaluation and at the end), `checkpoints/`
//!   (checkpoint.rs), `adapter/` (the final PEFT adapter) and, with `keep_best`, `best/`
//!   (the adapter of the lowest test loss, periodic or final; a tie keeps the earlier).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::checkpoint::{
    best_dir, latest_checkpoint, load_checkpoint, read_best, save_best, save_checkpoint,
    BestRecord, TrainerState,
};
use super::config::{resolve_asset, TrainConfig};
use super::dpo::DpoRun;
use super::grpo::GrpoRun;
use super::metrics::Metrics;
use super::plan::{micro_batch, plan_steps, prepare_data};
use super::plot::write_loss_curve;
use crate::backend::cpu::CpuBackend;
use crate::backend::device::{run_on, BackendTask, Device, Placement};
use crate::backend::Backend;
use crate::data::{Mapping, TextTokenizer, TokenizedSample};
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::lora::{LoraState, LoraWeights};
use crate::model::load::load_model;
use crate::model::{Batch, Llama, ModelConfig, ModelWeights, StepOptions};
use crate::optim::{clip_grad_norm, AdamW, Schedule};

/// Options of one invocation (not part of the run's config). The wall-clock budget counts
/// from the start of each invocation.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Start over, deleting `output_dir/checkpoints` (the default resumes from the latest).
    pub fresh: bool,
    /// Checked between steps: when set, save a checkpoint and return.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop (saving a checkpoint) once this many steps are done, as an interruption would.
    pub stop_after_steps: Option<u64>,
}

/// Why the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every planned epoch was trained.
    Completed,
    /// `max_steps` reached.
    MaxSteps,
    /// The next step would have exceeded `token_budget`.
    TokenBudget,
    /// The next step would likely have overrun `hours_to_complete`.
    Deadline,
    /// The stop flag (a signal) or `stop_after_steps`.
    Interrupted,
}

/// One optimiser step's metrics (also a `metrics.jsonl` line).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    /// 1-based step number.
    pub step: u64,
    /// Epoch of the step (0-based).
    pub epoch: u32,
    /// Mean loss over the step's targets.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Sample tokens of the step (padding excluded).
    pub tokens: u64,
    /// Target (completion) tokens of the step.
    pub targets: u64,
    /// Tokens per second of the step.
    pub tokens_per_s: f64,
    /// Seconds since the start of this invocation.
    pub elapsed_s: f64,
    /// GRPO runs: the mean weighted reward of the step's sampled completions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<f64>,
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Data and plan are ready.
    Start {
        /// Train samples.
        train_samples: usize,
        /// Test samples.
        test_samples: usize,
        /// Planned steps in all.
        total_steps: u64,
        /// First step to run (after a resume).
        first_step: u64,
    },
    /// A step finished.
    Step(&'a StepRecord),
    /// An evaluation of the test split (`adapter: false` = the base model).
    Eval {
        /// Steps done.
        step: u64,
        /// With the adapter?
        adapter: bool,
        /// The result.
        result: &'a EvalResult,
    },
    /// A checkpoint was saved.
    Checkpoint {
        /// Steps done.
        step: u64,
        /// Its directory.
        dir: &'a Path,
    },
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// Steps done in all (including before a resume).
    pub steps: u64,
    /// Step this invocation started from.
    pub resumed_from: u64,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Trained tokens in all.
    pub tokens: u64,
    /// Tokens per second of this invocation's steps.
    pub tokens_per_s: f64,
    /// The losses of this invocation's steps.
    pub losses: Vec<f64>,
    /// Test loss of the base model (no adapter).
    pub base_test_loss: Option<f64>,
    /// Test loss with the final adapter.
    pub final_test_loss: Option<f64>,
    /// The final adapter directory.
    pub adapter_dir: PathBuf,
    /// The last checkpoint.
    pub checkpoint_dir: PathBuf,
    /// With `keep_best`: the step and test loss of the adapter kept in `output_dir/best/`.
    pub best: Option<BestRecord>,
}

/// A flag set by SIGINT or SIGTERM (a second signal while it is set ends the process).
pub fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| Error::unsupported(format!("installing a signal handler: {e}")))?;
    }
    Ok(flag)
}

/// Config fields a resume must not change.
fn plan_fields(cfg: &TrainConfig) -> serde_json::Value {
    let mut v = json!({
        "seed": cfg.seed, "micro_batch": cfg.micro_batch, "grad_accum": cfg.grad_accum,
        "seq_len": cfg.seq_len, "packing": cfg.packing, "lora": cfg.lora,
        "mapping": cfg.mapping, "dataset": cfg.dataset,
    });
    if matches!(cfg.mapping, Mapping::Dpo(_)) {
        v["dpo_beta"] = json!(cfg.dpo_beta);
    }
    if matches!(cfg.mapping, Mapping::Grpo(_)) {
        v["grpo"] = json!(cfg.grpo.clone().unwrap_or_default());
    }
    v
}

/// The test evaluation: the DPO loss of `dpo`'s test pairs, GRPO's negated score of
/// `grpo`'s test prompts, else the SFT loss of `test`.
fn evaluate_test<B: Backend>(
    model: &mut Llama<B>,
    lora: Option<&LoraState<B>>,
    test: &[TokenizedSample],
    (dpo, grpo, tok): (Option<&mut DpoRun>, Option<&GrpoRun>, &dyn TextTokenizer),
    cfg: &TrainConfig,
) -> Result<EvalResult> {
    match (dpo, grpo) {
        (Some(d), _) => Ok(d.evaluate(model, lora)?.as_eval_result()),
        (_, Some(g)) => g.evaluate(model, lora, tok),
        _ => evaluate(model, lora, test, cfg.eval_batch),
    }
}

/// Run (or resume) the training run `cfg` on the CPU backend; `on_event` sees every step,
/// evaluation and save. Loads `cfg.model` (its tokenizer is required) and calls
/// [`train_model`]. [`train_on`] picks the device.
pub fn train(
    cfg: &TrainConfig,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    train_on(cfg, Device::Cpu.into(), opts, on_event)
}

/// [`train`] on a device and precision (resolve the device first with
/// `backend::device::resolve`): the CPU backend, or with the `cuda` feature the CUDA backend on
/// GPU N, in f32 or bf16.
pub fn train_on(
    cfg: &TrainConfig,
    at: Placement,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    let model_path = resolve_asset(&cfg.model)?;
    let loaded = load_model(&model_path)?;
    let tok = loaded.tokenizer.ok_or_else(|| {
        Error::config(
            model_path.display().to_string(),
            "tokenizer",
            "the model has no tokenizer (tokenizer.json or GGUF vocab)",
        )
    })?;
    let base_name = model_path.display().to_string();
    // the weights move into the run: the model frees each host tensor once it is uploaded
    let task = TrainTask {
        cfg,
        mcfg: &loaded.config,
        weights: Cow::Owned(loaded.weights),
        tok: &tok,
        base_name: &base_name,
        opts,
        on_event,
    };
    run_on(at, task)
}

/// The arguments of [`train_model_on`], as work for [`run_on`].
struct TrainTask<'a> {
    cfg: &'a TrainConfig,
    mcfg: &'a ModelConfig,
    weights: Cow<'a, ModelWeights>,
    tok: &'a dyn TextTokenizer,
    base_name: &'a str,
    opts: &'a RunOptions,
    on_event: &'a mut dyn for<'e> FnMut(Event<'e>),
}

impl BackendTask for TrainTask<'_> {
    type Output = TrainSummary;
    fn run<B: Backend + Clone>(self, be: B) -> Result<TrainSummary> {
        let t = self;
        run_with(
            be,
            t.cfg,
            t.mcfg,
            t.weights,
            t.tok,
            t.base_name,
            t.opts,
            t.on_event,
        )
    }
}

/// [`train`] on a model already in memory (`cfg.model` is not read; `base_name` goes into
/// the adapter's `base_model_name_or_path`), on the CPU backend.
pub fn train_model(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    weights: &ModelWeights,
    tok: &dyn TextTokenizer,
    base_name: &str,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    let be = CpuBackend::<f32>::new();
    train_model_on(be, cfg, mcfg, weights, tok, base_name, opts, on_event)
}

/// [`train_model`] on backend `be` (the CPU backend, or the CUDA backend: the loop, the
/// checkpoints and the results do not depend on it beyond the backends' tolerances).
#[allow(clippy::too_many_arguments)]
pub fn train_model_on<B: Backend + Clone>(
    be: B,
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    weights: &ModelWeights,
    tok: &dyn TextTokenizer,
    base_name: &str,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    run_with(
        be,
        cfg,
        mcfg,
        Cow::Borrowed(weights),
        tok,
        base_name,
        opts,
        on_event,
    )
}

/// The run behind [`train_on`] (owned weights, freed as they are uploaded) and
/// [`train_model_on`] (borrowed weights, copied so the caller can reuse them).
#[allow(clippy::too_many_arguments)]
fn run_with<B: Backend + Clone>(
    be: B,
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    weights: Cow<'_, ModelWeights>,
    tok: &dyn TextTokenizer,
    base_name: &str,
    opts: &RunOptions,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TrainSummary> {
    let t_start = Instant::now();
    let deadline = cfg
        .hours_to_complete
        .map(|h| t_start + Duration::from_secs_f64(h * 3600.0));
    let mut dpo = match &cfg.mapping {
        Mapping::Dpo(m) => Some(DpoRun::prepare(cfg, m, tok)?),
        _ => None,
    };
    let grpo = match &cfg.mapping {
        Mapping::Grpo(m) => Some(GrpoRun::prepare(cfg, m, tok)?),
        _ => None,
    };
    let (train_set, test_set) = match (&dpo, &grpo) {
        (None, None) => prepare_data(cfg, tok)?,
        _ => (Vec::new(), Vec::new()),
    };
    let test_set: Vec<TokenizedSample> = match cfg.eval_samples {
        Some(n) => test_set.into_iter().take(n).collect(),
        None => test_set,
    };
    let (plan, planned_reason) = match (&dpo, &grpo) {
        (Some(d), _) => d.plan(cfg)?,
        (_, Some(g)) => g.plan(cfg)?,
        _ => plan_steps(&train_set, cfg)?,
    };
    let (n_train, n_test) = match (&dpo, &grpo) {
        (Some(d), _) => (d.train.len(), d.test.len()),
        (_, Some(g)) => (g.train.len(), g.test.len()),
        _ => (train_set.len(), test_set.len()),
    };
    let total = plan.len() as u64;
    let schedule = Schedule::new(
        cfg.schedule_kind()?,
        cfg.optimizer.lr,
        cfg.schedule.warmup_steps,
        total.max(1),
    )
    .map_err(|e| Error::config("train config", "schedule.warmup_steps", e.to_string()))?;
    let mut model = match weights {
        Cow::Owned(w) => Llama::from_weights(be.clone(), mcfg, w)?,
        Cow::Borrowed(w) => Llama::new(be.clone(), mcfg, w)?,
    };
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    // start fresh or resume
    let lcfg = cfg.lora_config()?;
    let ck_root = out.join("checkpoints");
    if opts.fresh && ck_root.exists() {
        std::fs::remove_dir_all(&ck_root).map_err(|e| Error::io(&ck_root, e))?;
    }
    let resume = if opts.fresh {
        None
    } else {
        latest_checkpoint(out)?
    };
    let mut lw;
    let mut opt;
    let mut state;
    let lens: Vec<usize>;
    match resume {
        Some(dir) => {
            let ck = load_checkpoint(&dir, mcfg)?;
            let want = plan_fields(cfg);
            let had = ck.state.config.clone();
            if had != want {
                return Err(Error::config(
                    dir.display().to_string(),
                    "config",
                    "the checkpoint was made with a different seed, batch, seq_len, packing, lora, mapping or dataset; use a new output_dir or start fresh",
                ));
            }
            lw = ck.lora;
            let st = LoraState::upload(&be, &lw)?;
            lens = st.params().iter().map(|p| be.len(p)).collect();
            opt = AdamW::new(&be, cfg.adamw_config(), &lens)?;
            opt.load_state(&be, &ck.opt)?;
            state = ck.state;
        }
        None => {
            lw = LoraWeights::init(mcfg, &lcfg, cfg.seed)?;
            let st = LoraState::upload(&be, &lw)?;
            lens = st.params().iter().map(|p| be.len(p)).collect();
            opt = AdamW::new(&be, cfg.adamw_config(), &lens)?;
            state = TrainerState {
                step: 0,
                epoch: 0,
                position: 0,
                seed: cfg.seed,
                tokens: 0,
                config: plan_fields(cfg),
            };
        }
    }
    let mut lora = LoraState::upload(&be, &lw)?;
    let mut grads = lora.zeros_grads(&be)?;
    let mut scratch = match dpo {
        Some(_) => Some(lora.zeros_grads(&be)?),
        None => None,
    };
    let mut metrics = Metrics::open(&out.join("metrics.jsonl"), state.step)?;
    // a fresh run forgets an old run's best adapter; a resumed one carries on from it
    let mut best = if state.step == 0 {
        let bd = best_dir(out);
        if bd.exists() {
            std::fs::remove_dir_all(&bd).map_err(|e| Error::io(&bd, e))?;
        }
        None
    } else {
        read_best(out)?
    };
    let resumed_from = state.step;
    on_event(Event::Start {
        train_samples: n_train,
        test_samples: n_test,
        total_steps: total,
        first_step: state.step,
    });

    let run_eval = !cfg.skip_eval && n_test > 0;
    let mut base_test_loss = None;
    if run_eval {
        let r = evaluate_test(
            &mut model,
            None,
            &test_set,
            (dpo.as_mut(), grpo.as_ref(), tok),
            cfg,
        )?;
        metrics.append(
            &json!({"step": state.step, "base_test_loss": r.mean_loss, "test_tokens": r.tokens}),
        )?;
        on_event(Event::Eval {
            step: state.step,
            adapter: false,
            result: &r,
        });
        base_test_loss = Some(r.mean_loss);
    }

    let mut losses = Vec::new();
    let mut train_secs = 0.0f64;
    let mut run_tokens = 0u64;
    let mut slowest = 0.0f64;
    let mut save_secs = 0.0f64;
    let mut last_ckpt: Option<(u64, PathBuf)> = None;
    let mut reason = planned_reason;
    while (state.step as usize) < plan.len() {
        let interrupted = opts.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
            || opts.stop_after_steps.is_some_and(|k| state.step >= k);
        if interrupted {
            reason = StopReason::Interrupted;
            break;
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
            if 1.5 * slowest + save_secs > left {
                reason = StopReason::Deadline;
                break;
            }
        }
        let sp = &plan[state.step as usize];
        let t0 = Instant::now();
        let mut mean_reward = None;
        let (loss, targets) = match (dpo.as_mut(), scratch.as_mut(), grpo.as_ref()) {
            (Some(d), Some(scratch), _) => {
                let st = d.step(&mut model, &lora, &mut grads, scratch, sp, cfg, state.step)?;
                (st.loss, st.targets)
            }
            (_, _, Some(g)) => {
                let st = g.step(&mut model, &lora, &mut grads, tok, sp, cfg, state.step)?;
                mean_reward = Some(st.mean_reward);
                (st.loss, st.targets)
            }
            _ => sft_step(
                &mut model, &lora, &mut grads, &train_set, sp, cfg, state.step,
            )?,
        };
        let step_no = state.step + 1;
        let good = || match &last_ckpt {
            Some((_, d)) => d.display().to_string(),
            None => latest_checkpoint(out)
                .ok()
                .flatten()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "none".into()),
        };
        if !loss.is_finite() {
            return Err(Error::config(
                "training",
                "loss",
                format!("non-finite loss ({loss}) at step {step_no}; stopped before updating; last good checkpoint: {}", good()),
            ));
        }
        let grad_norm = clip_grad_norm(&be, &mut grads.bufs_mut(), cfg.optimizer.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(Error::config(
                "training",
                "grad_norm",
                format!("non-finite gradient norm ({grad_norm}) at step {step_no}; stopped before updating; last good checkpoint: {}", good()),
            ));
        }
        let lr = schedule.lr_at(state.step);
        lora.update(&be, |params| opt.step(&be, params, &grads.bufs(), lr))?;
        let dt = t0.elapsed().as_secs_f64();
        slowest = slowest.max(dt);
        train_secs += dt;
        run_tokens += sp.tokens;
        state.step = step_no;
        state.tokens += sp.tokens;
        match plan.get(state.step as usize) {
            Some(next) => {
                state.epoch = next.epoch;
                state.position = next.position;
            }
            None => {
                state.epoch = sp.epoch + 1;
                state.position = 0;
            }
        }
        losses.push(loss);
        let rec = StepRecord {
            step: step_no,
            epoch: sp.epoch,
            loss,
            lr,
            grad_norm,
            tokens: sp.tokens,
            targets: targets as u64,
            tokens_per_s: sp.tokens as f64 / dt.max(1e-9),
            elapsed_s: t_start.elapsed().as_secs_f64(),
            mean_reward,
        };
        metrics.append(&rec)?;
        on_event(Event::Step(&rec));
        let last = state.step as usize == plan.len();
        if run_eval && cfg.eval_every > 0 && step_no % cfg.eval_every == 0 && !last {
            let r = evaluate_test(
                &mut model,
                Some(&lora),
                &test_set,
                (dpo.as_mut(), grpo.as_ref(), tok),
                cfg,
            )?;
            metrics.append(
                &json!({"step": step_no, "test_loss": r.mean_loss, "test_tokens": r.tokens}),
            )?;
            on_event(Event::Eval {
                step: step_no,
                adapter: true,
                result: &r,
            });
            let ctx = (cfg, &be, &lora, base_name);
            update_best(ctx, &mut lw, &mut best, step_no, r.mean_loss)?;
            write_loss_curve(out)?;
        }
        if cfg.save_every > 0 && step_no % cfg.save_every == 0 && !last {
            let ts = Instant::now();
            lora.download(&be, &mut lw)?;
            let dir = save_checkpoint(out, &lw, &opt.state(&be)?, &state, base_name)?;
            save_secs = ts.elapsed().as_secs_f64();
            on_event(Event::Checkpoint {
                step: step_no,
                dir: &dir,
            });
            last_ckpt = Some((step_no, dir));
        }
    }

    // final checkpoint (unless the last one is already at this step) and adapter
    lora.download(&be, &mut lw)?;
    let ckpt = match last_ckpt {
        Some((s, d)) if s == state.step => d,
        _ => {
            let dir = save_checkpoint(out, &lw, &opt.state(&be)?, &state, base_name)?;
            on_event(Event::Checkpoint {
                step: state.step,
                dir: &dir,
            });
            dir
        }
    };
    let adapter_dir = out.join("adapter");
    lw.save(&adapter_dir, base_name)?;
    let mut final_test_loss = None;
    if run_eval {
        let r = evaluate_test(
            &mut model,
            Some(&lora),
            &test_set,
            (dpo.as_mut(), grpo.as_ref(), tok),
            cfg,
        )?;
        metrics.append(
            &json!({"step": state.step, "test_loss": r.mean_loss, "test_tokens": r.tokens}),
        )?;
        on_event(Event::Eval {
            step: state.step,
            adapter: true,
            result: &r,
        });
        final_test_loss = Some(r.mean_loss);
        let ctx = (cfg, &be, &lora, base_name);
        update_best(ctx, &mut lw, &mut best, state.step, r.mean_loss)?;
    }
    write_loss_curve(out)?;
    Ok(TrainSummary {
        steps: state.step,
        resumed_from,
        stop_reason: reason,
        tokens: state.tokens,
        tokens_per_s: if train_secs > 0.0 {
            run_tokens as f64 / train_secs
        } else {
            0.0
        },
        losses,
        base_test_loss,
        final_test_loss,
        adapter_dir,
        checkpoint_dir: ckpt,
        best,
    })
}

/// One SFT step's gradients into `grads`: every micro-batch's gradient with `loss_scale =
/// 1 / targets of the whole step`, summed; returns the mean loss and the targets.
fn sft_step<B: Backend>(
    model: &mut Llama<B>,
    lora: &LoraState<B>,
    grads: &mut crate::lora::LoraGrads<B>,
    train_set: &[TokenizedSample],
    sp: &super::plan::StepPlan,
    cfg: &TrainConfig,
    step: u64,
) -> Result<(f64, usize)> {
    let vocab = model.config().vocab_size;
    let batches: Vec<Batch> = sp
        .micro
        .iter()
        .map(|rows| micro_batch(train_set, rows, cfg, vocab))
        .collect::<Result<_>>()?;
    let targets: usize = batches.iter().map(|b| b.num_targets()).sum();
    let scale = if targets > 0 {
        1.0 / targets as f32
    } else {
        0.0
    };
    let mut sum_loss = 0.0f64;
    for (i, batch) in batches.iter().enumerate() {
        let so = StepOptions {
            recompute: cfg.recompute,
            seed: cfg.seed,
            step: step * cfg.grad_accum as u64 + i as u64,
            loss_scale: Some(scale),
            // Micro-batches after the first add into the step's gradients.
            accumulate: i > 0,
        };
        let st = model.forward_backward(batch, lora, grads, &so)?;
        sum_loss += st.sum_loss;
    }
    let loss = if targets > 0 {
        sum_loss / targets as f64
    } else {
        0.0
    };
    Ok((loss, targets))
}

/// With `keep_best`, save the adapter as `best/` when `loss` (after `step` steps) is lower
/// than the kept one's.
fn update_best<B: Backend>(
    (cfg, be, lora, base_name): (&TrainConfig, &B, &LoraState<B>, &str),
    lw: &mut LoraWeights,
    best: &mut Option<BestRecord>,
    step: u64,
    loss: f64,
) -> Result<()> {
    if !cfg.keep_best || !loss.is_finite() || best.as_ref().is_some_and(|b| b.test_loss <= loss) {
        return Ok(());
    }
    lora.download(be, lw)?;
    let rec = BestRecord {
        step,
        test_loss: loss,
    };
    save_best(&cfg.output_dir, lw, &rec, base_name)?;
    *best = Some(rec);
    Ok(())
}
