//! The subnet's embedded store: one SQLite file (rusqlite, bundled) in WAL mode with foreign
//! keys on, shared by every component, and a small migration helper.
//!
//! Each component owns its tables and its list of schema steps; [`Store::migrate`] applies the
//! steps not yet recorded in `schema_migrations(component, version)`, each in its own
//! transaction together with its version row, so a crash never leaves a half-applied step.
//! [`Store::open`] applies the tasks' and the validator's steps (task.rs, validator.rs); other
//! components (tournaments, the local chain) call `migrate` with their own name and steps, and
//! may open the same file with their own connection (WAL lets readers and one writer share
//! it; a busy timeout waits for the writer).
//!
//! Errors use the engine's error type: a SQLite failure becomes a format error naming the
//! database file ([`Store::err`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gradients_engine::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// An open store: one connection to the SQLite file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Open (creating it and its parent directory when missing) the database at `path`, turn
    /// on WAL and foreign keys, and apply the task and validator migrations.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path).map_err(|e| sql_error(path, e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store
            .conn
            .busy_timeout(Duration::from_secs(30))
            .map_err(|e| store.err(e))?;
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::format(
                path,
                format!("sqlite: could not switch to WAL (journal_mode is {mode})"),
            ));
        }
        store
            .conn
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS schema_migrations (
                     component TEXT NOT NULL,
                     version INTEGER NOT NULL,
                     applied_at INTEGER NOT NULL,
                     PRIMARY KEY (component, version)
                 );",
            )
            .map_err(|e| store.err(e))?;
        store.migrate("tasks", crate::task::MIGRATIONS)?;
        store.migrate("results", crate::validator::MIGRATIONS)?;
        Ok(store)
    }

    /// The connection (for components' own queries).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A SQLite error as an engine error naming this database.
    pub fn err(&self, e: rusqlite::Error) -> Error {
        sql_error(&self.path, e)
    }

    /// Begin a transaction (rolled back on drop unless committed).
    pub fn transaction(&self) -> Result<rusqlite::Transaction<'_>> {
        self.conn.unchecked_transaction().map_err(|e| self.err(e))
    }

    /// The newest applied version of `component` (0: none).
    pub fn schema_version(&self, component: &str) -> Result<u32> {
        let v: Option<u32> = self
            .conn
            .query_row(
                "SELECT MAX(version) FROM schema_migrations WHERE component = ?1",
                params![component],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .flatten();
        Ok(v.unwrap_or(0))
    }

    /// Apply the steps of `component` not applied yet: step `i` (0-based) is version `i + 1`.
    /// Each step runs in one transaction with its version row. Returns how many were applied.
    /// A database newer than `steps` (a version above `steps.len()`) is an error.
    pub fn migrate(&self, component: &str, steps: &[&str]) -> Result<usize> {
        if component.is_empty() {
            return Err(Error::config("store", "component", "must not be empty"));
        }
        let have = self.schema_version(component)? as usize;
        if have > steps.len() {
            return Err(Error::format(
                &self.path,
                format!(
                    "component `{component}` is at schema version {have}, newer than this build's {}",
                    steps.len()
                ),
            ));
        }
        for (i, step) in steps.iter().enumerate().skip(have) {
            let tx = self.transaction()?;
            // a step that edits the schema text must bump the schema cookie (SQLite's
            // documented writable_schema procedure), in the same transaction
            tx.execute_batch(step).map_err(|e| {
                Error::format(
                    &self.path,
                    format!("sqlite: migration {component} v{}: {e}", i + 1),
                )
            })?;
            if step.contains("writable_schema") {
                let c: i64 = tx
                    .query_row("PRAGMA schema_version", [], |r| r.get(0))
                    .map_err(|e| self.err(e))?;
                tx.execute_batch(&format!("PRAGMA schema_version = {}", c + 1))
                    .map_err(|e| self.err(e))?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (component, version, applied_at) VALUES (?1, ?2, ?3)",
                params![component, (i + 1) as i64, unix_now()],
            )
            .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(steps.len() - have)
    }
}

/// A SQLite error on the database `path`.
pub fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::format(path, format!("sqlite: {e}"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_roll_back_a_bad_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        let s = Store::open(&path).unwrap();
        let steps = [
            "CREATE TABLE a (x INTEGER)",
            "ALTER TABLE a ADD COLUMN y TEXT",
        ];
        assert_eq!(s.migrate("demo", &steps).unwrap(), 2);
        assert_eq!(s.migrate("demo", &steps).unwrap(), 0);
        assert_eq!(s.schema_version("demo").unwrap(), 2);
        // a failing step leaves neither its changes nor its version row
        let bad = [
            steps[0],
            steps[1],
            "CREATE TABLE b (z INTEGER); INSERT INTO nowhere VALUES (1)",
        ];
        let e = s.migrate("demo", &bad).unwrap_err().to_string();
        assert!(e.contains("demo v3"), "{e}");
        assert_eq!(s.schema_version("demo").unwrap(), 2);
        let b: i64 = s
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b, 0);
        // older code against a newer database is refused
        assert!(s.migrate("demo", &steps[..1]).is_err());
        drop(s);
        // reopening keeps everything; a second connection sees WAL mode
        let s2 = Store::open(&path).unwrap();
        assert_eq!(s2.schema_version("demo").unwrap(), 2);
        assert!(s2.schema_version("tasks").unwrap() >= 1);
        let mode: String = s2
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = s2
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }
}
