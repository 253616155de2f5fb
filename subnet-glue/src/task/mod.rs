//! Training tasks (SPEC §1) and their validator-side splits (SPEC §2), stored in the
//! [`Store`](crate::store::Store).
//!
//! A task spec (TOML or JSON, read field by field through fields.rs so errors name the field)
//! gives `task_type` (instruct | chat | dpo | grpo), `base_model`
//! (HF directory or GGUF file, or `asset:smollm2`), `dataset` (JSON/JSONL/CSV, or
//! `asset:alpaca_en_demo`), the column `[mapping]` (the engine's `data::Mapping` fields),
//! `hours_to_complete` (> 0), optional `test_data` (a custom test split file), `task_id` and
//! `split_seed` (default 42). A grpo task's `[mapping]` is the engine's `GrpoMapping` (prompt
//! column and the declarative rewards, compiled at intake so a bad reward names its field)
//! and its optional `[grpo]` table the engine's `GrpoSection` (num_generations,
//! max_new_tokens, temperature, top_k, top_p, scale_rewards; default the engine's): the
//! task fixes generation so every method trains and is evaluated the same way (`grpo` on
//! another type is refused). Intake ([`create_task`]) checks everything before writing: the
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
//!
//! This file holds the types, the spec reader and the split rule; intake.rs holds intake,
//! the status moves and the queries over the `tasks`, `task_events` and `task_rows` tables.

use std::path::{Path, PathBuf};

use gradients_engine::data::split::{sample_indices, split_indices};
use gradients_engine::data::Mapping;
use gradients_engine::train::grpo::GrpoSection;
use gradients_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::fields::{check_f64, parse_text, Fields};

mod intake; // create_task, model_config, status moves and queries over the tasks tables

pub use intake::{
    advance_to, create_task, file_sha256, get_task, list_tasks, load_records, load_split,
    model_config, set_status, task_events, Intake,
};

/// Schema steps of the `tasks` component.
/// Step 2 widens the `task_type` CHECK to `grpo` in place (SQLite's documented
/// writable_schema procedure for loosening a constraint: rows, foreign keys and the tables
/// that reference `tasks` are untouched; store.rs bumps the schema cookie) and adds the
/// `grpo` column (the task's generation settings as JSON; NULL for other types).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tasks (
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
    );",
    "ALTER TABLE tasks ADD COLUMN grpo TEXT;
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master
        SET sql = replace(sql, 'task_type IN (''instruct'', ''chat'', ''dpo'')',
                               'task_type IN (''instruct'', ''chat'', ''dpo'', ''grpo'')')
        WHERE type = 'table' AND name = 'tasks';
    PRAGMA writable_schema = OFF;",
];

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
    /// Prompts + reward functions (generation).
    Grpo,
}

impl TaskType {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Instruct => "instruct",
            TaskType::Chat => "chat",
            TaskType::Dpo => "dpo",
            TaskType::Grpo => "grpo",
        }
    }

    /// Parse a task type.
    pub fn parse(s: &str) -> Result<TaskType> {
        match s {
            "instruct" => Ok(TaskType::Instruct),
            "chat" => Ok(TaskType::Chat),
            "dpo" => Ok(TaskType::Dpo),
            "grpo" => Ok(TaskType::Grpo),
            other => Err(Error::config(
                "task",
                "task_type",
                format!("unknown task type `{other}` (expected instruct, chat, dpo or grpo)"),
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
    /// A grpo task's generation settings (None for other types).
    pub grpo: Option<GrpoSection>,
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
    /// A grpo task's generation settings (the `[grpo]` table; default the engine's).
    pub grpo: Option<GrpoSection>,
}

const SPEC_FIELDS: [&str; 9] = [
    "grpo",
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
        let task_type = TaskType::parse(&tt).map_err(|_| {
            f.error(
                "task_type",
                format!("unknown task type `{tt}` (expected instruct, chat, dpo or grpo)"),
            )
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
        let grpo = match (task_type, f.raw("grpo")) {
            (TaskType::Grpo, None) => Some(GrpoSection::default()),
            (TaskType::Grpo, Some(v)) => {
                let g: GrpoSection =
                    serde_json::from_value(v).map_err(|e| f.error("grpo", format!("{e}")))?;
                g.validate(source)?;
                Some(g)
            }
            (_, None) => None,
            (_, Some(_)) => {
                return Err(f.error(
                    "grpo",
                    format!("only a grpo task has generation settings, not {tt}"),
                ))
            }
        };
        f.finish(&SPEC_FIELDS)?;
        Ok(TaskSpec {
            grpo,
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
                assert_eq!(
                    a.can_move_to(b),
                    legal.contains(&(a, b)) || (b == Failure && !a.is_terminal()),
                    "{a:?} → {b:?}"
                );
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
        assert_ne!(
            make_split(1000, None, 42).unwrap().test,
            make_split(1000, None, 7).unwrap().test
        );
        assert!(make_split(1, None, 42).is_err());
    }
}
