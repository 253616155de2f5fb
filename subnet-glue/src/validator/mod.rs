//! Validator evaluation (SPEC §3): run a miner's method (method.rs) on a task (task.rs) with
//! the validator's engine, data, seed and token budget, then score the adapter on the hidden
//! test split and the synthetic set; results persist in the store keyed by (task, method
//! hash; results.rs), so a rerun never trains a finished pair again. scoring.rs turns a task's results
//! into scores; the method runs themselves (TrainConfigs, search, checkpoint choice) are in
//! runs.rs.
//!
//! - The miner sees only the train split: it is written to `work_dir/<task>/train.jsonl`
//!   and is the only dataset the trainer gets (the trainer holds out its own SPEC §2 slice
//!   of it, which is the "held-out slice of train" for `best` checkpoints and the search).
//! - Test and synthetic rows are tokenised with the task's mapping at SPEC §3's length
//!   (2048/4096, or `eval_seq_len`), one sample (DPO: one pair) per row, and scored with the
//!   engine's `eval::evaluate` (DPO: `eval::evaluate_dpo`, β 0.1, reference = the base
//!   model; evalset.rs); `rank_loss` = max(test, synth), NaN when either is NaN (worst).
//! - GRPO tasks train in the trainer's GRPO mode (runs.rs) and are evaluated by generation
//!   (evalset.rs): `test_loss`/`synth_loss` are the negated unnormalised scores
//!   `0.5·KL − Σ w·mean reward` (so `rank_loss` = max of them = the worse set), and
//!   [`MethodResult::grpo`] keeps the raw per-prompt rewards and KL and the per-function
//!   means of both sets, from which scoring.rs computes SPEC §3's score normalised across
//!   the task's submissions. A non-finite reward or KL makes the result failed.
//! - DPO tasks train in the trainer's DPO mode with the same seed, budget and cap rules as
//!   instruct; how a method's fields apply to DPO is described in runs.rs.
//! - Fine-tune check: the adapter must load against the task's base model (targets and
//!   shapes, `LoraWeights::load`), else the result is failed. The adapter hash is the sha256
//!   of its tensors (layer, module, factor, shape, f32 bytes in order).
//! - A method that fails to train (bad values for this model, a non-finite loss) gives a
//!   failed result; validator-side problems (I/O, a changed dataset) are errors.
//! - A pair's runs live in `work_dir/<task>/<hash[..16]>-s<seed>-b<budget>/`; a killed
//!   evaluation resumes its runs from their last checkpoints there (runs.rs), with the same
//!   result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{Record, TextTokenizer};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::load::load_model;
use gradients_engine::model::{Llama, ModelConfig, ModelWeights};
use gradients_engine::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::method::Method;
use crate::runs::{run_method, Candidate};
use crate::scoring::{score_task, TaskScores, MAX_EVAL_ATTEMPTS};
use crate::store::Store;
mod evalset; // EvalSet: test/synthetic sets tokenised (SFT samples, DPO pairs, GRPO prompts) and scored
mod results; // methods and results tables: store_method, get_method, load_result, task_results

use evalset::EvalSet;
pub use evalset::{GrpoDetail, GrpoSet};

use results::{attempt_count, save_result, stored};
pub use results::{get_method, load_result, store_method, task_results, MIGRATIONS};

use crate::task::{
    advance_to, get_task, load_records, load_split, model_config, set_status, Task, TaskSplit,
    TaskStatus,
};

/// The validator's side of an evaluation: the same for every method of a task.
#[derive(Clone, Debug)]
pub struct ValidatorOptions {
    /// Seed of LoRA init, batch order and dropout.
    pub seed: u64,
    /// Training tokens a method may spend (all its runs together).
    pub token_budget: u64,
    /// Wall-clock cap of one method's training (default: the task's `hours_to_complete`).
    /// Hitting it stops training early, so timings then affect the result.
    pub wall_clock_cap: Option<Duration>,
    /// CPU threads (0: rayon's global pool). Results do not depend on it.
    pub threads: usize,
    /// Where the train split, runs and adapters are written.
    pub work_dir: PathBuf,
    /// Rows per evaluation batch.
    pub eval_batch: usize,
    /// Score only the first this-many test and synthetic samples (CI-sized runs).
    pub max_eval_samples: Option<usize>,
    /// Evaluation length (default SPEC §3's: 4096, 2048 under 8192 positions).
    pub eval_seq_len: Option<usize>,
}

impl ValidatorOptions {
    /// Options with `seed`, `token_budget` and `work_dir`; no cap beyond the task's hours,
    /// rayon's pool, batches of 4, every sample, SPEC §3's length.
    pub fn new(work_dir: &Path, seed: u64, token_budget: u64) -> Self {
        ValidatorOptions {
            seed,
            token_budget,
            wall_clock_cap: None,
            threads: 0,
            work_dir: work_dir.to_path_buf(),
            eval_batch: 4,
            max_eval_samples: None,
            eval_seq_len: None,
        }
    }
}

/// The task's base model in memory (loaded once, shared by every method of a tournament).
pub struct BaseModel {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Frozen weights.
    pub weights: ModelWeights,
    /// Its tokenizer.
    pub tokenizer: Box<dyn TextTokenizer + Send>,
    /// Name written into adapters.
    pub name: String,
}

impl BaseModel {
    /// Load a GGUF file or HF directory (it must carry a tokenizer).
    pub fn load(path: &Path) -> Result<BaseModel> {
        let m = load_model(path)?;
        let tokenizer = m.tokenizer.ok_or_else(|| {
            Error::config(
                path.display().to_string(),
                "tokenizer",
                "the model has no tokenizer (tokenizer.json or GGUF vocab)",
            )
        })?;
        Ok(BaseModel {
            config: m.config,
            weights: m.weights,
            tokenizer: Box::new(tokenizer),
            name: path.display().to_string(),
        })
    }
}

/// One method's evaluation on one task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodResult {
    /// The task.
    pub task_id: String,
    /// The method's content hash.
    pub method_hash: String,
    /// Mean completion-token loss on the hidden test split (DPO: mean DPO loss; NaN when
    /// failed).
    pub test_loss: f64,
    /// Mean loss on the synthetic set (NaN when failed).
    pub synth_loss: f64,
    /// max(test, synth); NaN when either is NaN (ranked worst).
    pub rank_loss: f64,
    /// Each scored test sample's mean loss (DPO: each pair's loss), in split order.
    pub per_sample_test: Vec<f64>,
    /// The dataset (or test file) row of each entry of `per_sample_test`.
    pub test_rows: Vec<usize>,
    /// sha256 of the adapter's tensors.
    pub adapter_sha256: Option<String>,
    /// The submitted adapter (PEFT directory).
    pub adapter_dir: Option<PathBuf>,
    /// Why it failed, when it did.
    pub failed: Option<String>,
    /// Training tokens spent (all runs).
    pub tokens: u64,
    /// Seconds of training and evaluation.
    pub wall_s: f64,
    /// The search's candidates and their held-out losses.
    pub search: Vec<Candidate>,
    /// Submission order in the store (earliest first; 0 when not stored).
    pub seq: i64,
    /// A grpo task's raw rewards and KL on both sets (None otherwise, or when failed).
    pub grpo: Option<GrpoDetail>,
}

impl MethodResult {
    fn failed(task: &Task, hash: &str, why: String, tokens: u64, wall_s: f64) -> Self {
        MethodResult {
            task_id: task.task_id.clone(),
            method_hash: hash.to_string(),
            test_loss: f64::NAN,
            synth_loss: f64::NAN,
            rank_loss: f64::NAN,
            per_sample_test: Vec::new(),
            test_rows: Vec::new(),
            adapter_sha256: None,
            adapter_dir: None,
            failed: Some(why),
            tokens,
            wall_s,
            search: Vec::new(),
            seq: 0,
            grpo: None,
        }
    }
}

/// max(test, synth), NaN when either is NaN.
pub fn rank_loss(test: f64, synth: f64) -> f64 {
    if test.is_nan() || synth.is_nan() {
        f64::NAN
    } else {
        test.max(synth)
    }
}

/// sha256 hex over the adapter's tensors: for each pair in order, layer (u64 LE), module
/// name, then A and B as shape (u64 LE each) and f32 LE values.
pub fn adapter_sha256(w: &LoraWeights) -> String {
    let mut h = Sha256::new();
    for (layer, target, a, b) in w.iter() {
        h.update((layer as u64).to_le_bytes());
        h.update(target.name().as_bytes());
        for t in [a, b] {
            for &d in &t.shape {
                h.update((d as u64).to_le_bytes());
            }
            for v in &t.data {
                h.update(v.to_le_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// Write the miner's view of the task (its train split) as JSONL; returns the file.
fn write_train_split(
    task: &Task,
    records: &[Record],
    train: &[usize],
    work: &Path,
) -> Result<PathBuf> {
    let path = work.join("train.jsonl");
    let mut text = String::new();
    for &r in train {
        let rec = records
            .get(r)
            .ok_or_else(|| Error::format(&task.dataset, format!("split row {r} out of range")))?;
        text.push_str(
            &serde_json::to_string(rec).map_err(|e| Error::format(&path, e.to_string()))?,
        );
        text.push('\n');
    }
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    gradients_engine::io::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Check that `base` is the task's base model (same architecture and sizes).
fn check_base(task: &Task, base: &BaseModel) -> Result<()> {
    let want = model_config(&task.base_model)?;
    let c = &base.config;
    let same = want.arch == c.arch
        && want.vocab_size == c.vocab_size
        && want.hidden_size == c.hidden_size
        && want.intermediate_size == c.intermediate_size
        && want.num_layers == c.num_layers
        && want.num_heads == c.num_heads
        && want.num_kv_heads == c.num_kv_heads
        && want.head_dim == c.head_dim;
    if !same {
        return Err(Error::config(
            format!("task {}", task.task_id),
            "base_model",
            format!(
                "the model given to the validator is not {}",
                task.base_model.display()
            ),
        ));
    }
    Ok(())
}

/// Evaluate `method` on `task` (module docs). A stored result for the pair is returned as
/// it is (made with other options it is an error naming them).
pub fn evaluate_method(
    store: &Store,
    task: &Task,
    method: &Method,
    base: &BaseModel,
    opts: &ValidatorOptions,
) -> Result<MethodResult> {
    evaluate_attempt(store, task, method, base, opts, false)
}

fn evaluate_attempt(
    store: &Store,
    task: &Task,
    method: &Method,
    base: &BaseModel,
    opts: &ValidatorOptions,
    retry_failed: bool,
) -> Result<MethodResult> {
    if opts.token_budget == 0 {
        return Err(Error::config(
            "validator options",
            "token_budget",
            "must be at least 1",
        ));
    }
    if opts.eval_batch == 0 {
        return Err(Error::config(
            "validator options",
            "eval_batch",
            "must be at least 1",
        ));
    }
    method.validate("method")?;
    let hash = store_method(store, method)?;
    let mut attempts = 1;
    if let Some((r, seed, budget)) = stored(store, &task.task_id, &hash)? {
        if seed != opts.seed || budget != opts.token_budget {
            return Err(Error::config(
                format!("task {}", task.task_id),
                "method",
                format!("method {hash} was evaluated with seed {seed} and token budget {budget}, not {} and {}", opts.seed, opts.token_budget),
            ));
        }
        if r.failed.is_none() || !retry_failed {
            return Ok(r);
        }
        attempts = attempt_count(store, &task.task_id, &hash)? + 1;
    }
    check_base(task, base)?;
    let split = load_split(store, &task.task_id)?;
    let mut r = if opts.threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build()
            .map_err(|e| Error::unsupported(format!("building a thread pool: {e}")))?
            .install(|| run_and_score(&split, task, method, &hash, base, opts))?
    } else {
        run_and_score(&split, task, method, &hash, base, opts)?
    };
    r.seq = save_result(store, &r, opts, attempts)?;
    Ok(r)
}

fn run_and_score(
    split: &TaskSplit,
    task: &Task,
    method: &Method,
    hash: &str,
    base: &BaseModel,
    opts: &ValidatorOptions,
) -> Result<MethodResult> {
    let t0 = Instant::now();
    let (records, test_records) = load_records(task)?;
    let task_dir = opts.work_dir.join(&task.task_id);
    let train_file = write_train_split(task, &records, &split.train, &task_dir)?;
    let (test_src, test_file) = match (&test_records, &task.test_data) {
        (Some(t), Some(p)) => (t.as_slice(), p.as_path()),
        _ => (records.as_slice(), task.dataset.as_path()),
    };
    let test = EvalSet::build(
        task,
        base,
        test_src,
        &split.test,
        test_file,
        opts,
        (&task_dir, "test"),
    )?;
    let synth = EvalSet::build(
        task,
        base,
        &records,
        &split.synth,
        &task.dataset,
        opts,
        (&task_dir, "synth"),
    )?;
    let cap = opts
        .wall_clock_cap
        .unwrap_or_else(|| Duration::from_secs_f64(task.hours_to_complete * 3600.0));
    let run_dir = task_dir.join(format!(
        "{}-s{}-b{}",
        &hash[..16],
        opts.seed,
        opts.token_budget
    ));
    let run = match run_method(task, method, base, &train_file, &run_dir, opts, cap) {
        Ok(run) => run,
        Err(e) => {
            return Ok(MethodResult::failed(
                task,
                hash,
                format!("training failed: {e}"),
                0,
                t0.elapsed().as_secs_f64(),
            ));
        }
    };
    let lw = match LoraWeights::load(&run.adapter_dir, &base.config) {
        Ok(w) => w,
        Err(e) => {
            let why = format!("not a fine-tune of the base model: {e}");
            let mut r =
                MethodResult::failed(task, hash, why, run.tokens, t0.elapsed().as_secs_f64());
            r.search = run.search;
            return Ok(r);
        }
    };
    let be = CpuBackend::<f32>::new();
    let mut model = Llama::new(be.clone(), &base.config, &base.weights)?;
    let lora = LoraState::upload(&be, &lw)?;
    let tok = base.tokenizer.as_ref();
    let (tr, tg) = test.score(&mut model, &lora, tok, opts.eval_batch)?;
    let (sr, sg) = synth.score(&mut model, &lora, tok, opts.eval_batch)?;
    let grpo = match (tg, sg, &task.mapping) {
        (Some(test), Some(synth), gradients_engine::data::Mapping::Grpo(m)) => {
            if !(test.is_finite() && synth.is_finite()) {
                let why = "a non-finite GRPO reward or KL".to_string();
                let mut r =
                    MethodResult::failed(task, hash, why, run.tokens, t0.elapsed().as_secs_f64());
                r.search = run.search;
                return Ok(r);
            }
            Some(GrpoDetail {
                weights: m.rewards.iter().map(|s| s.weight).collect(),
                reward_kinds: m.rewards.iter().map(|s| s.kind.clone()).collect(),
                test,
                synth,
            })
        }
        _ => None,
    };
    Ok(MethodResult {
        grpo,
        task_id: task.task_id.clone(),
        method_hash: hash.to_string(),
        test_loss: tr.mean_loss,
        synth_loss: sr.mean_loss,
        rank_loss: rank_loss(tr.mean_loss, sr.mean_loss),
        per_sample_test: tr.per_sample_loss,
        test_rows: tr.rows,
        adapter_sha256: Some(adapter_sha256(&lw)),
        adapter_dir: Some(run.adapter_dir),
        failed: None,
        tokens: run.tokens,
        wall_s: t0.elapsed().as_secs_f64(),
        search: run.search,
        seq: 0,
    })
}

/// A task run to its end: every method's result (in the order given) and the scores.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRun {
    /// The results, in the order the methods were given.
    pub results: Vec<MethodResult>,
    /// Their scores.
    pub scores: TaskScores,
    /// Evaluation attempts made.
    pub attempts: u32,
}

/// Run `methods` (earliest submission first) on task `task_id` and score them: the task goes
/// ready → training → evaluating → success (a valid result exists) or failure. When every
/// score is 0 the failed pairs are evaluated again, at most [`MAX_EVAL_ATTEMPTS`] in all.
/// Safe to call again after a crash: finished pairs are read back, not retrained.
pub fn evaluate_task(
    store: &Store,
    task_id: &str,
    methods: &[Method],
    base: &BaseModel,
    opts: &ValidatorOptions,
) -> Result<TaskRun> {
    let task = get_task(store, task_id)?;
    if task.status.is_terminal() {
        let results = methods
            .iter()
            .map(|m| load_result(store, task_id, &m.hash()))
            .collect::<Result<Option<Vec<_>>>>()?;
        if let Some(results) = results {
            let scores = score_task(&results);
            return Ok(TaskRun {
                results,
                scores,
                attempts: 0,
            });
        }
        return Err(Error::config(
            format!("task {task_id}"),
            "status",
            format!(
                "the task is finished ({}) without results for every method",
                task.status.as_str()
            ),
        ));
    }
    advance_to(store, task_id, TaskStatus::Training)?;
    let mut attempt = 1;
    let run = loop {
        let results = methods
            .iter()
            .map(|m| evaluate_attempt(store, &task, m, base, opts, attempt > 1))
            .collect::<Result<Vec<_>>>();
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                set_status(store, task_id, TaskStatus::Failure, Some(&e.to_string()))?;
                return Err(e);
            }
        };
        let scores = score_task(&results);
        if !scores.reevaluate || attempt >= MAX_EVAL_ATTEMPTS {
            break TaskRun {
                results,
                scores,
                attempts: attempt,
            };
        }
        attempt += 1;
    };
    advance_to(store, task_id, TaskStatus::Evaluating)?;
    if run.scores.valid > 0 {
        set_status(store, task_id, TaskStatus::Success, None)?;
    } else {
        set_status(store, task_id, TaskStatus::Failure, Some("no valid result"))?;
    }
    Ok(run)
}
