//! Task intake and storage (used through task/mod.rs): [`create_task`] validates a spec
//! against its files (mapping columns on the first rows, row count, the model's architecture
//! from its config alone) and stores the task, its status history and its split in one
//! transaction; the status machine's moves ([`set_status`], [`advance_to`]) and the queries
//! ([`get_task`], [`list_tasks`], [`load_split`], [`task_events`], [`load_records`]).

use std::path::{Path, PathBuf};

use gradients_engine::data::{read_records, Mapping, Record};
use gradients_engine::model::ModelConfig;
use gradients_engine::{Error, Result};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{
    make_split, Task, TaskSpec, TaskSplit, TaskStatus, TaskType, CHECKED_ROWS, MIN_TASK_ROWS,
};
use crate::store::{unix_now, Store};

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
            Mapping::Grpo(m) => m.check_row(row, path, i + 1),
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
            let seed = format!(
                "{dataset_sha256}|{}|{mapping_json}|{nanos}",
                base_model.display()
            );
            format!(
                "task-{}",
                &hex::encode(Sha256::digest(seed.as_bytes()))[..12]
            )
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
        grpo: spec.grpo.clone(),
    };
    let grpo_json = match &task.grpo {
        Some(g) => Some(
            serde_json::to_string(g).map_err(|e| Error::config("task", "grpo", e.to_string()))?,
        ),
        None => None,
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
             mapping, hours_to_complete, split_seed, rows, created_at, status, grpo)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12)",
        params![
            task_id,
            task.task_type.as_str(),
            task.base_model.to_string_lossy(),
            task.dataset.to_string_lossy(),
            task.dataset_sha256,
            task.test_data
                .as_ref()
                .map(|p| p.to_string_lossy().to_string()),
            mapping_json,
            task.hours_to_complete,
            task.split_seed as i64,
            task.rows as i64,
            created_at,
            grpo_json,
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

fn current_status(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
) -> Result<TaskStatus> {
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
pub fn set_status(
    store: &Store,
    task_id: &str,
    next: TaskStatus,
    note: Option<&str>,
) -> Result<()> {
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

type RawTask = (Task, String, String, String, Option<String>);

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawTask> {
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
        grpo: None,
    };
    Ok((task, r.get(1)?, r.get(6)?, r.get(11)?, r.get(13)?))
}

const TASK_COLUMNS: &str = "task_id, task_type, base_model, dataset, dataset_sha256, test_data,
    mapping, hours_to_complete, split_seed, rows, created_at, status, failure, grpo";

fn finish_task(store: &Store, raw: RawTask) -> Result<Task> {
    let (mut t, tt, mapping, status, grpo) = raw;
    if let Some(g) = grpo {
        t.grpo =
            Some(serde_json::from_str(&g).map_err(|e| {
                Error::format(store.path(), format!("task {}: grpo: {e}", t.task_id))
            })?);
    }
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
