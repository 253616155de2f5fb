//! A method's training runs on the validator (used by validator.rs): the method's recipe
//! becomes engine TrainConfigs with the validator's seed, data and budget, and its policies
//! decide how the budget is spent and which adapter is submitted.
//!
//! - Budget: the method spends `floor(token_budget · budget.fraction)` tokens over all its
//!   runs (each run's `token_budget` is what is left, so the total never exceeds it).
//! - Search (successive halving): C = |lr| × |r| candidates; rung k keeps
//!   n_k = ceil(C / 2^k) of them (stopping before a rung of one) and trains each from
//!   scratch on b_0·2^k tokens, b_0 = floor(S / Σ n_k·2^k), S = floor(spent ·
//!   search.fraction). Candidates are ranked by their held-out loss (the trainer's final
//!   evaluation of its own held-out slice of the train split; missing or NaN last, ties by
//!   candidate order) and the better half goes on. The winner's (lr, r) trains the final run
//!   from scratch on the rest of the budget.
//! - Checkpoint: `last` submits the final adapter; `best` evaluates and checkpoints every
//!   `eval_every` steps (default a quarter of the planned steps) and submits the checkpoint
//!   with the lowest held-out loss (a tie goes to the later one).
//! - Warmup steps = floor(warmup_fraction · planned steps); `seq_len` is capped at the
//!   model's maximum positions; the wall-clock cap is shared by all runs.
//! - Resume: the runs of a (task, method, seed, budget) live in one stable directory (the
//!   validator's `run_dir`); a run under the `last` policy (the final run, and every search
//!   candidate) saves a checkpoint every quarter of its planned steps and, when its
//!   directory holds one from an interrupted invocation, resumes from it (the trainer's
//!   resume is bit for bit, so the adapter is the one an uninterrupted run makes; one line
//!   on stderr says so). A finished candidate resumes at its end and only re-evaluates. A
//!   `best` run starts fresh: its best-so-far is tracked in memory. The wall-clock cap
//!   restarts with each invocation.
//! - DPO tasks (the task's mapping is `dpo`): the runs use the trainer's DPO mode and every
//!   field of the method applies as for instruct, with the DPO meaning the engine gives it:
//!   `micro_batch` counts pairs, `seq_len` caps each sequence (prompt + chosen, prompt +
//!   rejected; pairs with no completion token left are dropped), a step's tokens (for the
//!   budget) are both sequences of its pairs, and the held-out loss of `best` and the search
//!   is the DPO loss. Two fields are fixed rather than chosen: `train.packing` is ignored
//!   (every DPO sequence is its own forward, so there is nothing to pack; a method that sets
//!   it is still accepted, since its default is on and the same method plays every kind of
//!   task) and β is SPEC §3's 0.1 (methods have no β field), so training optimises the loss
//!   the validator scores.
//! - GRPO tasks (mapping `grpo`): the runs use the trainer's GRPO mode with the task's
//!   `[grpo]` generation settings (num_generations, max_new_tokens, temperature, top_k,
//!   top_p, scale_rewards: fixed by the task, not the method). The method's LoRA, optimiser,
//!   schedule, `micro_batch` (prompts), `grad_accum`, `epochs`, `seq_len` (prompt +
//!   completion), budget and checkpoint fields apply as for instruct; `packing` is ignored.
//!   The budget counts as the engine counts it: every one of the `num_generations` samples
//!   at its prompt length + its maximum completion length, fixed before generating. The
//!   held-out loss of `best` and the search is the engine's negated unnormalised score
//!   `−(Σ w·mean reward − 0.5·KL)` on the trainer's own held-out prompts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gradients_engine::data::Mapping;
use gradients_engine::train::dpo::DpoRun;
use gradients_engine::train::grpo::GrpoRun;
use gradients_engine::train::plan::{plan_steps, prepare_data};
use gradients_engine::train::{train_model, Event, RunOptions, TrainConfig, TrainSummary};
use gradients_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::method::{CheckpointPolicy, Method};
use crate::task::Task;
use crate::validator::{BaseModel, ValidatorOptions};

/// One search candidate's run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Learning rate.
    pub lr: f64,
    /// LoRA rank.
    pub r: usize,
    /// Halving round (0-based).
    pub rung: u32,
    /// Tokens it was allowed.
    pub token_budget: u64,
    /// Tokens it trained.
    pub tokens: u64,
    /// Its held-out loss (None when not finite).
    pub holdout_loss: Option<f64>,
}

/// What a method's runs produced.
#[derive(Clone, Debug)]
pub struct MethodRun {
    /// The adapter to submit.
    pub adapter_dir: PathBuf,
    /// Tokens trained by all runs.
    pub tokens: u64,
    /// The search's candidates.
    pub search: Vec<Candidate>,
}

struct RunSpec {
    lr: f64,
    r: usize,
    budget: u64,
    eval: bool,
    best: bool,
    max_steps: Option<u64>,
    hours: f64,
}

fn config(
    task: &Task,
    m: &Method,
    spec: &RunSpec,
    base: &BaseModel,
    data: &Path,
    out: &Path,
    opts: &ValidatorOptions,
) -> Result<TrainConfig> {
    let seq_len = m
        .train
        .seq_len
        .min(base.config.max_position_embeddings.max(2));
    let v = json!({
        "model": task.base_model, "dataset": data, "mapping": task.mapping, "output_dir": out,
        "lora": {"r": spec.r, "alpha": m.lora.alpha, "dropout": m.lora.dropout,
                 "targets": m.lora.targets, "use_rslora": m.lora.use_rslora},
        "optimizer": {"lr": spec.lr, "betas": m.optimizer.betas, "eps": m.optimizer.eps,
                      "weight_decay": m.optimizer.weight_decay,
                      "max_grad_norm": m.optimizer.max_grad_norm},
        "schedule": {"kind": m.schedule.kind, "warmup_steps": 0},
        "micro_batch": m.train.micro_batch, "grad_accum": m.train.grad_accum,
        "seq_len": seq_len, "packing": m.train.packing, "epochs": m.train.epochs,
        "max_steps": spec.max_steps, "token_budget": spec.budget.max(1),
        "hours_to_complete": spec.hours, "seed": opts.seed,
        "eval_samples": m.budget.eval_samples, "eval_batch": opts.eval_batch,
        "skip_eval": !spec.eval, "grpo": task.grpo,
    });
    let source = format!("method {}", m.hash());
    let mut cfg: TrainConfig = serde_json::from_value(v)
        .map_err(|e| Error::config(&source, "train config", e.to_string()))?;
    cfg.validate(&source)?;
    let tok = base.tokenizer.as_ref();
    let steps = match &cfg.mapping {
        Mapping::Dpo(dm) => DpoRun::prepare(&cfg, dm, tok)?.plan(&cfg)?.0.len(),
        Mapping::Grpo(gm) => GrpoRun::prepare(&cfg, gm, tok)?.plan(&cfg)?.0.len(),
        _ => {
            let (train, _) = prepare_data(&cfg, tok)?;
            plan_steps(&train, &cfg)?.0.len()
        }
    } as u64;
    cfg.schedule.warmup_steps = (m.schedule.warmup_fraction * steps as f64).floor() as u64;
    if spec.best {
        let every = m.budget.eval_every.unwrap_or((steps / 4).max(1));
        cfg.eval_every = every;
        cfg.save_every = every;
    } else {
        cfg.save_every = steps.div_ceil(4).max(1);
    }
    Ok(cfg)
}

/// Copy the files of `from` into a fresh `to` (through a temporary directory).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let dst = tmp.join(entry.file_name());
        std::fs::copy(entry.path(), &dst).map_err(|e| Error::io(&dst, e))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| Error::io(to, e))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))
}

/// Train `cfg` (from scratch under `best`, else resuming its checkpoint if it has one);
/// returns the summary and the adapter chosen by the policy.
fn train_once(cfg: &TrainConfig, base: &BaseModel, best: bool) -> Result<(TrainSummary, PathBuf)> {
    let best_dir = cfg.output_dir.join("best_adapter");
    let mut last_eval: Option<(u64, f64)> = None;
    let mut best_seen: Option<f64> = None;
    let mut failure: Option<Error> = None;
    let mut on_event = |e: Event<'_>| match e {
        Event::Start {
            first_step,
            total_steps,
            ..
        } if first_step > 0 => eprintln!(
            "resuming {} from its checkpoint at step {first_step} of {total_steps}",
            cfg.output_dir.display()
        ),
        Event::Eval {
            step,
            adapter: true,
            result,
        } => last_eval = Some((step, result.mean_loss)),
        Event::Checkpoint { step, dir } if best && failure.is_none() => {
            if let Some((s, loss)) = last_eval {
                if s == step && best_seen.is_none_or(|b| loss < b) {
                    match copy_dir(&dir.join("adapter"), &best_dir) {
                        Ok(()) => best_seen = Some(loss),
                        Err(e) => failure = Some(e),
                    }
                }
            }
        }
        _ => {}
    };
    let opts = RunOptions {
        fresh: best,
        ..Default::default()
    };
    let summary = train_model(
        cfg,
        &base.config,
        &base.weights,
        base.tokenizer.as_ref(),
        &base.name,
        &opts,
        &mut on_event,
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let final_better = match (summary.final_test_loss, best_seen) {
        (_, None) => true,
        (Some(f), Some(b)) => f <= b,
        (None, Some(_)) => false,
    };
    let chosen = if best && !final_better {
        best_dir
    } else {
        summary.adapter_dir.clone()
    };
    Ok((summary, chosen))
}

/// Run `method` for `task` on the miner's `train_file`, writing under `run_dir` (module docs).
pub fn run_method(
    task: &Task,
    method: &Method,
    base: &BaseModel,
    train_file: &Path,
    run_dir: &Path,
    opts: &ValidatorOptions,
    cap: Duration,
) -> Result<MethodRun> {
    let start = Instant::now();
    let hours_left = || {
        let left = cap.saturating_sub(start.elapsed()).as_secs_f64().max(1.0);
        left / 3600.0
    };
    let spent = ((opts.token_budget as f64 * method.budget.fraction).floor() as u64).max(1);
    let mut used = 0u64;
    let mut search = Vec::new();
    let (mut lr, mut r) = (method.optimizer.lr, method.lora.r);
    let cands = method.candidates();
    if let (Some(sp), true) = (&method.search, cands.len() >= 2) {
        let mut sizes = vec![cands.len()];
        while sizes.len() < sp.rungs as usize {
            let next = sizes[sizes.len() - 1].div_ceil(2);
            if next < 2 {
                break;
            }
            sizes.push(next);
        }
        let denom: u64 = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| (n as u64) << k)
            .sum();
        let s_budget = (spent as f64 * sp.fraction).floor() as u64;
        let b0 = (s_budget / denom).max(1);
        let mut alive: Vec<usize> = (0..cands.len()).collect();
        for (k, &n) in sizes.iter().enumerate() {
            alive.truncate(n);
            let mut scored = Vec::with_capacity(alive.len());
            for &i in &alive {
                let (clr, cr) = cands[i];
                let budget = (b0 << k).min(spent.saturating_sub(used)).max(1);
                let spec = RunSpec {
                    lr: clr,
                    r: cr,
                    budget,
                    eval: true,
                    best: false,
                    max_steps: None,
                    hours: hours_left(),
                };
                let out = run_dir.join(format!("search/rung{k}/c{i}"));
                let cfg = config(task, method, &spec, base, train_file, &out, opts)?;
                let (s, _) = train_once(&cfg, base, false)?;
                used += s.tokens;
                let loss = s.final_test_loss.filter(|l| l.is_finite());
                search.push(Candidate {
                    lr: clr,
                    r: cr,
                    rung: k as u32,
                    token_budget: budget,
                    tokens: s.tokens,
                    holdout_loss: loss,
                });
                scored.push((i, loss));
            }
            // best first: finite losses ascending, then missing; ties by candidate order
            scored.sort_by(|a, b| match (a.1, b.1) {
                (Some(x), Some(y)) => x.total_cmp(&y).then(a.0.cmp(&b.0)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.0.cmp(&b.0),
            });
            alive = scored.iter().map(|&(i, _)| i).collect();
        }
        (lr, r) = cands[alive[0]];
    }
    let best = method.budget.checkpoint == CheckpointPolicy::Best;
    let spec = RunSpec {
        lr,
        r,
        budget: spent.saturating_sub(used).max(1),
        eval: best,
        best,
        max_steps: method.budget.max_steps,
        hours: hours_left(),
    };
    let out = run_dir.join("final");
    let cfg = config(task, method, &spec, base, train_file, &out, opts)?;
    let (s, adapter_dir) = train_once(&cfg, base, best)?;
    used += s.tokens;
    Ok(MethodRun {
        adapter_dir,
        tokens: used,
        search,
    })
}
