//! Training tasks (SPEC §1) and their validator-side splits (SPEC §2), stored in the
//! [`Store`](crate::store::Store).
//!
//! A task spec (TOML or JSON, read field by field through fields.rs so errors name the field)
//! gives `task_type` (instruct | chat | dpo; grpo is refused as unsupported), `base_model`
//! (HF directory or GGUF file, or `asset:smollm2`), `dataset` (JSON/JSONL/CSV, or
//! `asset:alpaca_en_demo`), the column `[mapping]` (the engine's `data::Mapping` fields),
//! `hours_to_complete` (> 0), optional `test_data` (a custom test split file), `task_id` and
//! `split_seed` (default 42). Intake ([`create_task`]) checks everything before writing: the
//! mapping, the columns on the first rows of each file, the row count, the model's
//! architecture (its config only; weights are not loaded). Then one transaction inserts the
//! task, walks it pending → preparing_data → ready and stores its split's row indices.
//!
//! The split (see [`make_split`]): the engine's SPEC §2 split (data/split.rs) gives the hidden
//! test rows (or all of `test_data`) and the rest R in permutation order; the last
//! h = clamp(|test| / 2, 1, 200) rows of R (at most |R| − 1) are held back; the first |R| − h
//! are the miner's train split. The synthetic set is k = min(500, |test|, |train|) train rows
//! picked by `sample_indices(|train|, k, seed + 1)` followed by the held-back rows. A model
//! that memorised train looks good on the first part and is caught by the second; ranking on
//! max(test, synth) (validator.rs) keeps it honest. Everything follows from the seed.

use std::path::{Path, PathBuf};

use gradients_engine::data::split::{sample_indices, split_indices};
use gradients_engine::data::{read_records, Mapping, Record};
use gradients_engine::model::ModelConfig;
use gradients_engine::{Error, Result};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fields::{check_f64, parse_text, Fields};
use crate::store::{unix_now, Store};

/// Schema steps of the `tasks` component.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        task_type TEXT NOT NULL CHECK (task_type IN ('instruct', 'chat', 'dpo')),
        base_model TEXT NOT NULL,
        dataset TEXT NOT NULL,
        dataset_sha256 TEXT NOT NULL,
        test_data TEXT,
        mapping TEXT NOT NULL,
        hours_to_complete REAL NOT NULL,
        split_seed INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        failure TEXT
    );
    CREATE TABLE task_events (
        task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        at INTEGER NOT NULL,
        note TEXT,
        PRIMARY KEY (task_id, seq)
    );
    CREATE TABLE task_rows (
        task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        part TEXT NOT NULL CHECK (part IN ('train', 'test', 'holdback', 'synth')),
        pos INTEGER NOT NULL,
        row_index INTEGER NOT NULL,
        PRIMARY KEY (task_id, part, pos)
    );"];

/// Fewest dataset rows a task may have (the live network wants 2,000; smaller ones warn).
pub const MIN_TASK_ROWS: usize = 10;
/// Most train rows in the synthetic set (the live network's 500).
pub const SYNTH_TRAIN_ROWS: usize = 500;
/// Most held-back rows.
pub const MAX_HOLDBACK_ROWS: usize = 200;
/// Rows whose columns intake checks, from the top of each file.
pub const CHECKED_ROWS: usize = 5;

/// The kind of task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    /// SFT on instruction/input/output columns.
    Instruct,
    /// SFT on conversations.
    Chat,
    /// Preference pairs.
    Dpo,
}

impl TaskType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Instruct => "instruct",
            TaskType::Chat => "chat",
            TaskType::Dpo => "dpo",
        }
    }

    /// Parse a task type; `grpo` is a clear unsupported error.
    pub fn parse(s: &str) -> Result<TaskType> {
        match s {
            "instruct" => Ok(TaskType::Instruct),
            "chat" => Ok(TaskType::Chat),
            "dpo" => Ok(TaskType::Dpo),
            "grpo" => Err(Error::unsupported(
                "task_type `grpo`: GRPO needs generation and reward functions, which this validator does not run yet (use instruct, chat or dpo)",
            )),
            other => Err(Error::config(
                "task",
                "task_type",
                format!("unknown task type `{other}` (expected instruct, chat or dpo)"),
            )),
        }
    }
}

/// Where a task is in its life (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted, not prepared.
    Pending,
    /// Splitting its data.
    PreparingData,
    /// Split stored; methods may run.
    Ready,
    /// Methods are training.
    Training,
    /// Adapters are being evaluated.
    Evaluating,
    /// Finished with at least one valid result.
    Success,
    /// Finished without a valid result, or stopped by an error.
    Failure,
}

impl TaskStatus {
    /// Every status, in flow order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::PreparingData,
        TaskStatus::Ready,
        TaskStatus::Training,
        TaskStatus::Evaluating,
        TaskStatus::Success,
        TaskStatus::Failure,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::PreparingData => "preparing_data",
            TaskStatus::Ready => "ready",
            TaskStatus::Training => "training",
            TaskStatus::Evaluating => "evaluating",
            TaskStatus::Success => "success",
            TaskStatus::Failure => "failure",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Result<TaskStatus> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::config("tasks", "status", format!("unknown status `{s}`")))
    }

    /// Success and failure end a task.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Failure)
    }

    /// The one legal next step of the normal flow (none from evaluating or an end state).
    fn next_in_flow(self) -> Option<TaskStatus> {
        use TaskStatus::*;
        match self {
            Pending => Some(PreparingData),
            PreparingData => Some(Ready),
            Ready => Some(Training),
            Training => Some(Evaluating),
            _ => None,
        }
    }

    /// Whether `self → next` is legal: one step along the flow, evaluating → success, or any
    /// unfinished status → failure.
    pub fn can_move_to(self, next: TaskStatus) -> bool {
        if self.is_terminal() {
            return false;
        }
        next == TaskStatus::Failure
            || self.next_in_flow() == Some(next)
            || (self == TaskStatus::Evaluating && next == TaskStatus::Success)
    }
}

/// A stored task.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Task {
    /// Its id.
    pub task_id: String,
    /// Its type.
    pub task_type: TaskType,
    /// The base model (absolute path: HF directory or GGUF file).
    pub base_model: PathBuf,
    /// The dataset file.
    pub dataset: PathBuf,
    /// sha256 of the dataset file at intake (a changed file is refused later).
    pub dataset_sha256: String,
    /// The column mapping (tagged by task type).
    pub mapping: Mapping,
    /// The time budget in hours.
    pub hours_to_complete: f64,
    /// Unix seconds at intake.
    pub created_at: i64,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// A custom test split file.
    pub test_data: Option<PathBuf>,
    /// Seed of the split.
    pub split_seed: u64,
    /// Rows in the dataset.
    pub rows: usize,
    /// Why it failed, when it did.
    pub failure: Option<String>,
}

/// A task as the user writes it (see the module docs for the fields).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// Optional id (letters, digits, `.`, `_`, `-`; at most 64); default: derived from the
    /// content and the time.
    pub task_id: Option<String>,
    /// The type.
    pub task_type: TaskType,
    /// Model path (relative to the spec file) or `asset:` name.
    pub base_model: PathBuf,
    /// Dataset path or `asset:` name.
    pub dataset: PathBuf,
    /// Custom test split file.
    pub test_data: Option<PathBuf>,
    /// Column mapping.
    pub mapping: Mapping,
    /// Hours to complete (> 0, at most 10,000).
    pub hours_to_complete: f64,
    /// Split seed (default 42, the live network's).
    pub split_seed: u64,
}

const SPEC_FIELDS: [&str; 8] = [
    "task_id",
    "task_type",
    "base_model",
    "dataset",
    "test_data",
    "mapping",
    "hours_to_complete",
    "split_seed",
];

impl TaskSpec {
    /// Read a spec file (`.json` is JSON, anything else TOML); relative paths are resolved
    /// against the file's directory.
    pub fn from_file(path: &Path) -> Result<TaskSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json = path.extension().and_then(|e| e.to_str()) == Some("json");
        let mut spec = Self::parse(&text, &path.display().to_string(), json)?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for p in [&mut spec.base_model, &mut spec.dataset]
            .into_iter()
            .chain(spec.test_data.as_mut())
        {
            if p.is_relative() && !p.to_string_lossy().starts_with("asset:") {
                *p = base.join(&*p);
            }
        }
        Ok(spec)
    }

    /// Parse spec text (JSON when `json`, else TOML); `source` names it in errors.
    pub fn parse(text: &str, source: &str, json: bool) -> Result<TaskSpec> {
        let mut f = Fields::new(source, "", parse_text(text, source, json)?)?;
        let task_id: Option<String> = f.opt("task_id")?;
        if let Some(id) = &task_id {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(f.error(
                    "task_id",
                    format!("`{id}`: use 1 to 64 letters, digits, `.`, `_` or `-`"),
                ));
            }
        }
        let tt: String = f.req("task_type")?;
        let task_type = TaskType::parse(&tt).map_err(|e| {
            if matches!(e.kind(), gradients_engine::ErrorKind::Unsupported(_)) {
                e
            } else {
                f.error(
                    "task_type",
                    format!("unknown task type `{tt}` (expected instruct, chat or dpo)"),
                )
            }
        })?;
        let base_model: PathBuf = f.req("base_model")?;
        let dataset: PathBuf = f.req("dataset")?;
        let test_data: Option<PathBuf> = f.opt("test_data")?;
        for (name, p) in [("base_model", &base_model), ("dataset", &dataset)]
            .into_iter()
            .chain(test_data.as_ref().map(|p| ("test_data", p)))
        {
            if p.as_os_str().is_empty() {
                return Err(f.error(name, "must not be empty"));
            }
        }
        let hours_to_complete: f64 = f.req("hours_to_complete")?;
        if !(hours_to_complete.is_finite() && hours_to_complete > 0.0) {
            return Err(f.error(
                "hours_to_complete",
                format!("the budget must be a positive number of hours, got {hours_to_complete}"),
            ));
        }
        check_f64(&f, "hours_to_complete", hours_to_complete, 0.0, 10_000.0)?;
        let split_seed: u64 = f.or("split_seed", 42)?;
        let mut m = match f.raw("mapping") {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err(f.error("mapping", "expected a table")),
        };
        if m.contains_key("task_type") {
            return Err(f.error(
                "mapping.task_type",
                "unknown field (the type is the top-level `task_type`)",
            ));
        }
        if task_type == TaskType::Instruct && !m.contains_key("field_instruction") {
            return Err(f.error("mapping.field_instruction", "is required"));
        }
        m.insert("task_type".into(), task_type.as_str().into());
        let mapping: Mapping = serde_json::from_value(serde_json::Value::Object(m))
            .map_err(|e| f.error("mapping", e.to_string()))?;
        mapping
            .validate()
            .map_err(|e| f.error("mapping", e.to_string()))?;
        f.finish(&SPEC_FIELDS)?;
        Ok(TaskSpec {
            task_id,
            task_type,
            base_model,
            dataset,
            test_data,
            mapping,
            hours_to_complete,
            split_seed,
        })
    }
}

/// The row indices of a task's parts (indices into the dataset; `test` indexes `test_data`
/// when the task has one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskSplit {
    /// What the miner trains on.
    pub train: Vec<usize>,
    /// The hidden test rows.
    pub test: Vec<usize>,
    /// Train-side rows withheld from the miner (part of the synthetic set).
    pub holdback: Vec<usize>,
    /// The synthetic set: sampled train rows, then the held-back rows.
    pub synth: Vec<usize>,
}

/// The split of `rows` dataset rows (module docs): `test_rows` = the number of rows of a
/// custom test file, if any.
pub fn make_split(rows: usize, test_rows: Option<usize>, seed: u64) -> Result<TaskSplit> {
    let (test, rest) = match test_rows {
        None => {
            let s = split_indices(rows, seed)?;
            (s.test, s.train)
        }
        Some(t) => ((0..t).collect(), sample_indices(rows, rows, seed)),
    };
    let h = if rest.len() >= 2 {
        (test.len() / 2)
            .clamp(1, MAX_HOLDBACK_ROWS)
            .min(rest.len() - 1)
    } else {
        0
    };
    let cut = rest.len() - h;
    let train = rest[..cut].to_vec();
    let holdback = rest[cut..].to_vec();
    if train.is_empty() || test.is_empty() {
        return Err(Error::config(
            "dataset",
            "rows",
            format!("{rows} rows leave an empty train or test split"),
        ));
    }
    let k = SYNTH_TRAIN_ROWS.min(test.len()).min(train.len());
    let mut synth: Vec<usize> = sample_indices(train.len(), k, seed.wrapping_add(1))
        .into_iter()
        .map(|i| train[i])
        .collect();
    synth.extend_from_slice(&holdback);
    Ok(TaskSplit {
        train,
        test,
        holdback,
        synth,
    })
}

/// What intake produced.
#[derive(Clone, Debug)]
pub struct Intake {
    /// The stored task (status `ready`).
    pub task: Task,
    /// Its split.
    pub split: TaskSplit,
    /// Things the user should know (a small dataset).
    pub warnings: Vec<String>,
}

/// The config of the model at `path` (HF directory: its config.json; GGUF: its header), so
/// an unknown architecture is refused without loading weights.
pub fn model_config(path: &Path) -> Result<ModelConfig> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        gradients_engine::model::hf_config::load_hf_config(&path.join("config.json"))
    } else {
        let g = gradients_engine::model::gguf::GgufFile::open(path)?;
        gradients_engine::model::gguf_load::config_from_meta(g.meta())
    }
}

/// Check the mapping's columns on the first rows of `records` (from `path`).
fn check_columns(mapping: &Mapping, records: &[Record], path: &Path) -> Result<()> {
    for (i, row) in records.iter().take(CHECKED_ROWS).enumerate() {
        match mapping {
            Mapping::Instruct(m) => m.example(row, path, i + 1).map(|_| ()),
            Mapping::Chat(m) => m.example(row, path, i + 1).map(|_| ()),
            Mapping::Dpo(m) => m.example(row, path, i + 1).map(|_| ()),
        }?;
    }
    Ok(())
}

/// sha256 hex of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn resolve(spec_field: &str, p: &Path) -> Result<PathBuf> {
    let r = gradients_engine::train::config::resolve_asset(p)
        .map_err(|e| Error::config("task", spec_field, e.to_string()))?;
    Ok(std::path::absolute(&r).unwrap_or(r))
}

/// Validate `spec` completely, then store the task and its split in one transaction
/// (pending → preparing_data → ready). Bad input is an error naming the field, file and row,
/// and leaves nothing behind.
pub fn create_task(store: &Store, spec: &TaskSpec) -> Result<Intake> {
    let field_err = |field: &str, e: Error| Error::config("task", field, e.to_string());
    let base_model = resolve("base_model", &spec.base_model)?;
    model_config(&base_model).map_err(|e| field_err("base_model", e))?;
    let dataset = resolve("dataset", &spec.dataset)?;
    let records = read_records(&dataset).map_err(|e| field_err("dataset", e))?;
    let mut warnings = Vec::new();
    if records.len() < MIN_TASK_ROWS {
        return Err(Error::config(
            "task",
            "dataset",
            format!(
                "{}: {} rows; a task needs at least {MIN_TASK_ROWS}",
                dataset.display(),
                records.len()
            ),
        ));
    }
    if records.len() < gradients_engine::data::split::MIN_ROWS_LIVE {
        warnings.push(format!(
            "dataset {} has {} rows; the live network rejects datasets under {}",
            dataset.display(),
            records.len(),
            gradients_engine::data::split::MIN_ROWS_LIVE
        ));
    }
    check_columns(&spec.mapping, &records, &dataset).map_err(|e| field_err("mapping", e))?;
    let test_data = match &spec.test_data {
        Some(p) => Some(resolve("test_data", p)?),
        None => None,
    };
    let test_rows = match &test_data {
        Some(p) => {
            let t = read_records(p).map_err(|e| field_err("test_data", e))?;
            check_columns(&spec.mapping, &t, p).map_err(|e| field_err("mapping", e))?;
            Some(t.len())
        }
        None => None,
    };
    let split = make_split(records.len(), test_rows, spec.split_seed)
        .map_err(|e| field_err("dataset", e))?;
    let dataset_sha256 = file_sha256(&dataset)?;
    let created_at = unix_now();
    let mapping_json = serde_json::to_string(&spec.mapping)
        .map_err(|e| Error::config("task", "mapping", e.to_string()))?;
    let task_id = match &spec.task_id {
        Some(id) => id.clone(),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let seed = format!("{dataset_sha256}|{}|{mapping_json}|{nanos}", base_model.display());
            format!("task-{}", &hex::encode(Sha256::digest(seed.as_bytes()))[..12])
        }
    };
    let task = Task {
        task_id: task_id.clone(),
        task_type: spec.task_type,
        base_model,
        dataset,
        dataset_sha256,
        mapping: spec.mapping.clone(),
        hours_to_complete: spec.hours_to_complete,
        created_at,
        status: TaskStatus::Ready,
        test_data,
        split_seed: spec.split_seed,
        rows: records.len(),
        failure: None,
    };
    let tx = store.transaction()?;
    let exists: Option<String> = tx
        .query_row(
            "SELECT task_id FROM tasks WHERE task_id = ?1",
            params![task_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store.err(e))?;
    if exists.is_some() {
        return Err(Error::config(
            "task",
            "task_id",
            format!("a task `{task_id}` already exists"),
        ));
    }
    tx.execute(
        "INSERT INTO tasks (task_id, task_type, base_model, dataset, dataset_sha256, test_data,
             mapping, hours_to_complete, split_seed, rows, created_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending')",
        params![
            task_id,
            task.task_type.as_str(),
            task.base_model.to_string_lossy(),
            task.dataset.to_string_lossy(),
            task.dataset_sha256,
            task.test_data.as_ref().map(|p| p.to_string_lossy().to_string()),
            mapping_json,
            task.hours_to_complete,
            task.split_seed as i64,
            task.rows as i64,
            created_at,
        ],
    )
    .map_err(|e| store.err(e))?;
    record_event(store, &tx, &task_id, TaskStatus::Pending, None)?;
    move_status(store, &tx, &task_id, TaskStatus::PreparingData, None)?;
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO task_rows (task_id, part, pos, row_index) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| store.err(e))?;
        for (part, rows) in [
            ("train", &split.train),
            ("test", &split.test),
            ("holdback", &split.holdback),
            ("synth", &split.synth),
        ] {
            for (pos, &r) in rows.iter().enumerate() {
                ins.execute(params![task_id, part, pos as i64, r as i64])
                    .map_err(|e| store.err(e))?;
            }
        }
    }
    move_status(store, &tx, &task_id, TaskStatus::Ready, None)?;
    tx.commit().map_err(|e| store.err(e))?;
    Ok(Intake {
        task,
        split,
        warnings,
    })
}

fn record_event(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
    status: TaskStatus,
    note: Option<&str>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO task_events (task_id, seq, status, at, note)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM task_events WHERE task_id = ?1), ?2, ?3, ?4)",
        params![task_id, status.as_str(), unix_now(), note],
    )
    .map_err(|e| store.err(e))?;
    Ok(())
}

fn current_status(store: &Store, tx: &rusqlite::Transaction<'_>, task_id: &str) -> Result<TaskStatus> {
    let s: Option<String> = tx
        .query_row(
            "SELECT status FROM tasks WHERE task_id = ?1",
            params![task_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| store.err(e))?;
    match s {
        Some(s) => TaskStatus::parse(&s),
        None => Err(no_task(task_id)),
    }
}

fn no_task(task_id: &str) -> Error {
    Error::config("tasks", "task_id", format!("no task `{task_id}`"))
}

fn move_status(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
    next: TaskStatus,
    note: Option<&str>,
) -> Result<()> {
    let cur = current_status(store, tx, task_id)?;
    if !cur.can_move_to(next) {
        return Err(Error::config(
            format!("task {task_id}"),
            "status",
            format!("illegal transition {} → {}", cur.as_str(), next.as_str()),
        ));
    }
    let failure = (next == TaskStatus::Failure).then(|| note.unwrap_or("failed"));
    tx.execute(
        "UPDATE tasks SET status = ?2, failure = COALESCE(?3, failure) WHERE task_id = ?1",
        params![task_id, next.as_str(), failure],
    )
    .map_err(|e| store.err(e))?;
    record_event(store, tx, task_id, next, note)
}

/// Move task `task_id` one legal step to `next` (a note is kept in its history; for
/// failure it is the reason). Illegal transitions are errors naming both states.
pub fn set_status(store: &Store, task_id: &str, next: TaskStatus, note: Option<&str>) -> Result<()> {
    let tx = store.transaction()?;
    move_status(store, &tx, task_id, next, note)?;
    tx.commit().map_err(|e| store.err(e))
}

/// Walk task `task_id` forward along the flow to `target` (nothing to do when it is there);
/// going backwards or leaving an end state is an error.
pub fn advance_to(store: &Store, task_id: &str, target: TaskStatus) -> Result<()> {
    let tx = store.transaction()?;
    let mut cur = current_status(store, &tx, task_id)?;
    while cur != target {
        let next = if cur.can_move_to(target) {
            target
        } else {
            match cur.next_in_flow() {
                Some(n) => n,
                None => {
                    return Err(Error::config(
                        format!("task {task_id}"),
                        "status",
                        format!("cannot reach {} from {}", target.as_str(), cur.as_str()),
                    ))
                }
            }
        };
        move_status(store, &tx, task_id, next, None)?;
        cur = next;
    }
    tx.commit().map_err(|e| store.err(e))
}

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Task, String, String, String)> {
    let task = Task {
        task_id: r.get(0)?,
        task_type: TaskType::Instruct,
        base_model: PathBuf::from(r.get::<_, String>(2)?),
        dataset: PathBuf::from(r.get::<_, String>(3)?),
        dataset_sha256: r.get(4)?,
        test_data: r.get::<_, Option<String>>(5)?.map(PathBuf::from),
        mapping: Mapping::Chat(Default::default()),
        hours_to_complete: r.get(7)?,
        split_seed: r.get::<_, i64>(8)? as u64,
        rows: r.get::<_, i64>(9)? as usize,
        created_at: r.get(10)?,
        status: TaskStatus::Pending,
        failure: r.get(12)?,
    };
    Ok((task, r.get(1)?, r.get(6)?, r.get(11)?))
}

const TASK_COLUMNS: &str = "task_id, task_type, base_model, dataset, dataset_sha256, test_data,
    mapping, hours_to_complete, split_seed, rows, created_at, status, failure";

fn finish_task(store: &Store, raw: (Task, String, String, String)) -> Result<Task> {
    let (mut t, tt, mapping, status) = raw;
    t.task_type = TaskType::parse(&tt)?;
    t.mapping = serde_json::from_str(&mapping)
        .map_err(|e| Error::format(store.path(), format!("task {}: mapping: {e}", t.task_id)))?;
    t.status = TaskStatus::parse(&status)?;
    Ok(t)
}

/// The task `task_id`.
pub fn get_task(store: &Store, task_id: &str) -> Result<Task> {
    let raw = store
        .conn()
        .query_row(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"),
            params![task_id],
            task_from_row,
        )
        .optional()
        .map_err(|e| store.err(e))?
        .ok_or_else(|| no_task(task_id))?;
    finish_task(store, raw)
}

/// Every task, oldest first.
pub fn list_tasks(store: &Store) -> Result<Vec<Task>> {
    let mut st = store
        .conn()
        .prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at, rowid"
        ))
        .map_err(|e| store.err(e))?;
    let raws = st
        .query_map([], task_from_row)
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| store.err(e))?;
    raws.into_iter().map(|r| finish_task(store, r)).collect()
}

/// The stored split of `task_id`.
pub fn load_split(store: &Store, task_id: &str) -> Result<TaskSplit> {
    get_task(store, task_id)?;
    let mut st = store
        .conn()
        .prepare("SELECT part, row_index FROM task_rows WHERE task_id = ?1 ORDER BY part, pos")
        .map_err(|e| store.err(e))?;
    let rows = st
        .query_map(params![task_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
        })
        .map_err(|e| store.err(e))?;
    let mut s = TaskSplit::default();
    for row in rows {
        let (part, i) = row.map_err(|e| store.err(e))?;
        match part.as_str() {
            "train" => s.train.push(i),
            "test" => s.test.push(i),
            "holdback" => s.holdback.push(i),
            _ => s.synth.push(i),
        }
    }
    Ok(s)
}

/// The status history of `task_id`: (status, unix seconds, note), oldest first.
pub fn task_events(store: &Store, task_id: &str) -> Result<Vec<(TaskStatus, i64, Option<String>)>> {
    let mut st = store
        .conn()
        .prepare("SELECT status, at, note FROM task_events WHERE task_id = ?1 ORDER BY seq")
        .map_err(|e| store.err(e))?;
    let rows = st
        .query_map(params![task_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<(String, i64, Option<String>)>>>()
        .map_err(|e| store.err(e))?;
    rows.into_iter()
        .map(|(s, at, n)| Ok((TaskStatus::parse(&s)?, at, n)))
        .collect()
}

/// The task's dataset records and (for a custom split) its test file's records; a dataset
/// changed since intake is refused (its split would no longer mean the same rows).
pub fn load_records(task: &Task) -> Result<(Vec<Record>, Option<Vec<Record>>)> {
    let sha = file_sha256(&task.dataset)?;
    if sha != task.dataset_sha256 {
        return Err(Error::format(
            &task.dataset,
            format!(
                "changed since task {} was created (sha256 {sha}, expected {})",
                task.task_id, task.dataset_sha256
            ),
        ));
    }
    let records = read_records(&task.dataset)?;
    let test = match &task.test_data {
        Some(p) => Some(read_records(p)?),
        None => None,
    };
    Ok((records, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine_allows_only_the_flow() {
        use TaskStatus::*;
        let legal = [
            (Pending, PreparingData),
            (PreparingData, Ready),
            (Ready, Training),
            (Training, Evaluating),
            (Evaluating, Success),
            (Evaluating, Failure),
            (Pending, Failure),
            (Training, Failure),
        ];
        for a in TaskStatus::ALL {
            for b in TaskStatus::ALL {
                assert_eq!(a.can_move_to(b), legal.contains(&(a, b)) || (b == Failure && !a.is_terminal()), "{a:?} → {b:?}");
            }
            assert_eq!(TaskStatus::parse(a.as_str()).unwrap(), a);
        }
    }

    #[test]
    fn split_rule_is_a_deterministic_partition() {
        for (n, test) in [(10, None), (40, None), (1000, None), (30, Some(7))] {
            let s = make_split(n, test, 42).unwrap();
            assert_eq!(s, make_split(n, test, 42).unwrap());
            let t = s.test.len();
            assert_eq!(t, test.unwrap_or((n / 10).clamp(1, 400)));
            assert_eq!(s.holdback.len(), (t / 2).clamp(1, MAX_HOLDBACK_ROWS));
            let mut all: Vec<usize> = s.train.iter().chain(&s.holdback).copied().collect();
            if test.is_none() {
                all.extend(&s.test);
            }
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            let k = t.min(SYNTH_TRAIN_ROWS).min(s.train.len());
            assert_eq!(s.synth.len(), k + s.holdback.len());
            assert!(s.synth[..k].iter().all(|r| s.train.contains(r)));
            assert_eq!(&s.synth[k..], &s.holdback[..]);
        }
        assert_ne!(make_split(1000, None, 42).unwrap().test, make_split(1000, None, 7).unwrap().test);
        assert!(make_split(1, None, 42).is_err());
    }
}
