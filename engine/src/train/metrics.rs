//! `metrics.jsonl`: one JSON object per line (trainer.rs's step records and evaluations),
//! appended and flushed as the run goes. On resume the lines after the checkpoint's step are
//! dropped first (rewritten atomically), so a resumed run's file reads like an uninterrupted
//! run's; a fresh run starts an empty file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// An open metrics file.
pub struct Metrics {
    path: PathBuf,
    file: File,
}

impl Metrics {
    /// Open `path` for a run at step `step` (0: a fresh run, the file is emptied). Lines
    /// about later steps, and evaluations at `step` itself, are dropped.
    pub fn open(path: &Path, step: u64) -> Result<Self> {
        let kept = if step == 0 {
            String::new()
        } else {
            match std::fs::read_to_string(path) {
                Ok(text) => text
                    .lines()
                    .filter(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                        let s = v.get("step").and_then(|s| s.as_u64()).unwrap_or(u64::MAX);
                        s < step || (s == step && v.get("loss").is_some())
                    })
                    .map(|l| format!("{l}\n"))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::io(path, e)),
            }
        };
        write_atomic(path, kept.as_bytes())?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Metrics {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Append one record as a JSON line and flush it.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line =
            serde_json::to_string(record).map_err(|e| Error::format(&self.path, e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}
