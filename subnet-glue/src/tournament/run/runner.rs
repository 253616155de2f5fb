//! The tournament runner's state (used by run/mod.rs and play.rs): each match's task made
//! from the configured source of its kind on first use (a fresh split seed per stage, round
//! and match, so every task hides its own test rows), the methods evaluated on it through
//! the validator (evaluation events reported), and a result's showing in a match record.

use std::collections::HashMap;

use gradients_engine::lora::counter_hash;
use rusqlite::{params, OptionalExtension};

use super::super::store::{MatchRecord, Showing, Stage};
use super::super::{terr, Result, TaskKind};
use super::{Event, TaskSource, TournamentConfig};
use crate::method::Method;
use crate::store::Store;
use crate::task::{create_task, get_task, Task, TaskSpec, TaskType};
use crate::validator::{evaluate_method, get_method, BaseModel, MethodResult};

fn stage_tag(stage: Stage) -> u64 {
    match stage {
        Stage::Group => 1,
        Stage::Knockout => 2,
        Stage::Boss => 3,
    }
}

/// The runner's state while a tournament plays.
pub(super) struct Runner<'a, 'e> {
    pub(super) store: &'a Store,
    pub(super) base: &'a BaseModel,
    pub(super) cfg: &'a TournamentConfig,
    pub(super) id: String,
    pub(super) methods: HashMap<String, Method>,
    pub(super) on_event: &'e mut dyn FnMut(Event<'_>),
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Runner<'_, '_> {
    fn source(&self, kind: TaskKind) -> Result<&TaskSource> {
        self.cfg
            .sources
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| terr!("sources", "no dataset for {kind} tasks"))
    }

    /// The task `(stage, round, idx)` of this tournament, created on first use.
    pub(super) fn task(&self, stage: Stage, round: u32, idx: u32, kind: TaskKind) -> Result<Task> {
        let id = match stage {
            Stage::Group => format!("{}-g{idx}", self.id),
            Stage::Knockout => format!("{}-k{round}-{idx}", self.id),
            Stage::Boss => format!("{}-boss{idx}", self.id),
        };
        let exists: Option<i64> = self
            .store
            .conn()
            .query_row("SELECT 1 FROM tasks WHERE task_id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.store.err(e))?;
        if exists.is_some() {
            return get_task(self.store, &id);
        }
        let src = self.source(kind)?;
        let spec = TaskSpec {
            task_id: Some(id),
            task_type: match kind {
                TaskKind::Instruct => TaskType::Instruct,
                TaskKind::Dpo => TaskType::Dpo,
                TaskKind::Grpo => TaskType::Grpo,
            },
            base_model: self.cfg.base_model.clone(),
            dataset: src.dataset.clone(),
            test_data: None,
            mapping: src.mapping.clone(),
            hours_to_complete: self.cfg.hours_to_complete,
            split_seed: counter_hash(&[self.cfg.seed, stage_tag(stage), round as u64, idx as u64]),
            grpo: match kind {
                TaskKind::Grpo => Some(src.grpo.clone().unwrap_or_default()),
                _ => None,
            },
        };
        Ok(create_task(self.store, &spec)?.task)
    }

    pub(super) fn method(&self, hash: &str) -> Result<Method> {
        match self.methods.get(hash) {
            Some(m) => Ok(m.clone()),
            None => get_method(self.store, hash),
        }
    }

    pub(super) fn evaluate(&mut self, task: &Task, hash: &str) -> Result<MethodResult> {
        (self.on_event)(Event::Evaluating {
            task_id: &task.task_id,
            method_hash: hash,
        });
        let m = self.method(hash)?;
        evaluate_method(self.store, task, &m, self.base, &self.cfg.validator)
    }

    pub(super) fn emit(&mut self, record: &MatchRecord, replayed: bool) {
        (self.on_event)(Event::Match { record, replayed });
    }

    pub(super) fn showing(entry: (&str, u16), champion: bool, r: &MethodResult) -> Showing {
        Showing {
            method_hash: entry.0.to_string(),
            uid: entry.1,
            champion,
            loss: if r.failed.is_some() {
                None
            } else {
                finite(r.rank_loss)
            },
            test_loss: if r.failed.is_some() {
                None
            } else {
                finite(r.test_loss)
            },
            failed: r.failed.clone(),
        }
    }
}
