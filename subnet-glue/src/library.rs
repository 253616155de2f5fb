//! The method library (SPEC §5): every method that won a tournament, archived with its
//! recipe, hash, the tasks it won with their losses, and its lineage (the parent method it
//! names, if any), so anyone can query it and start from a winner.
//!
//! Tables (component `library` of the shared store): `library_methods` (one row per method:
//! recipe, parent, first winner, tournaments won, defences, tasks won) and `library_wins`
//! (one row per task a library method won: tournament, stage, kind, its loss and the
//! opponent's). Rows are written only inside the tournament's finishing transaction
//! (tournament/run.rs), keyed so the same tournament can never be archived twice.
//! `gradients library list|show` (cli_tournament.rs) prints them.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::store::Store;
use gradients_engine::{Error, Result};

/// Schema steps of the `library` component.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE library_methods (
        method_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        recipe TEXT NOT NULL,
        parent_hash TEXT,
        first_uid INTEGER NOT NULL,
        first_hotkey TEXT NOT NULL,
        tournaments_won INTEGER NOT NULL,
        defences INTEGER NOT NULL,
        tasks_won INTEGER NOT NULL,
        first_tournament TEXT NOT NULL,
        last_tournament TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE library_wins (
        tournament_id TEXT NOT NULL,
        method_hash TEXT NOT NULL REFERENCES library_methods(method_hash),
        task_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        kind TEXT NOT NULL,
        loss REAL,
        opponent_hash TEXT,
        opponent_loss REAL,
        PRIMARY KEY (tournament_id, method_hash, task_id)
    );"];

/// A task a library method won.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskWin {
    /// The tournament.
    pub tournament_id: String,
    /// The task.
    pub task_id: String,
    /// `group`, `knockout` or `boss`.
    pub stage: String,
    /// The task type.
    pub kind: String,
    /// The method's ranking loss on it (`None`: it won because the other side failed).
    pub loss: Option<f64>,
    /// The opponent (`None` in a group task).
    pub opponent_hash: Option<String>,
    /// The opponent's loss.
    pub opponent_loss: Option<f64>,
}

/// One archived method.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LibraryEntry {
    /// Content hash.
    pub method_hash: String,
    /// Its free-text name.
    pub name: String,
    /// The canonical recipe (JSON).
    pub recipe: String,
    /// The method it names as its parent.
    pub parent_hash: Option<String>,
    /// The miner that first won with it.
    pub first_uid: u16,
    /// That miner's hotkey.
    pub first_hotkey: String,
    /// Tournaments it won (crowned or defended).
    pub tournaments_won: u32,
    /// Boss rounds it defended.
    pub defences: u32,
    /// Tasks won in those tournaments.
    pub tasks_won: u32,
    /// The tournament that first archived it.
    pub first_tournament: String,
    /// The latest tournament it won.
    pub last_tournament: String,
}

/// What the finishing transaction archives for a tournament's winner.
pub struct Archive<'a> {
    /// The tournament.
    pub tournament_id: &'a str,
    /// Winner's hash.
    pub method_hash: &'a str,
    /// Winner's name.
    pub name: &'a str,
    /// Winner's canonical recipe.
    pub recipe: &'a str,
    /// The parent it names.
    pub parent_hash: Option<&'a str>,
    /// The miner.
    pub uid: u16,
    /// The miner's hotkey.
    pub hotkey: &'a str,
    /// It defended the title (rather than taking it).
    pub defended: bool,
    /// The tasks it won in this tournament.
    pub wins: &'a [TaskWin],
}

/// Archive a tournament winner inside the finishing transaction `tx`: insert or update its
/// entry and add its task wins. Archiving the same tournament twice is an error (the wins'
/// primary key), so a crash can never count a tournament twice.
pub fn archive(tx: &rusqlite::Transaction<'_>, a: &Archive<'_>) -> rusqlite::Result<()> {
    let now = crate::store::unix_now();
    tx.execute(
        "INSERT INTO library_methods (method_hash, name, recipe, parent_hash, first_uid,
             first_hotkey, tournaments_won, defences, tasks_won, first_tournament,
             last_tournament, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?9, ?10, ?10)
         ON CONFLICT(method_hash) DO UPDATE SET
             tournaments_won = tournaments_won + 1,
             defences = defences + ?7,
             tasks_won = tasks_won + ?8,
             last_tournament = ?9,
             updated_at = ?10",
        params![
            a.method_hash,
            a.name,
            a.recipe,
            a.parent_hash,
            a.uid,
            a.hotkey,
            a.defended as u32,
            a.wins.len() as u32,
            a.tournament_id,
            now
        ],
    )?;
    for w in a.wins {
        tx.execute(
            "INSERT INTO library_wins (tournament_id, method_hash, task_id, stage, kind, loss,
                 opponent_hash, opponent_loss)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                a.tournament_id,
                a.method_hash,
                w.task_id,
                w.stage,
                w.kind,
                w.loss,
                w.opponent_hash,
                w.opponent_loss
            ],
        )?;
    }
    Ok(())
}

const ENTRY_COLUMNS: &str = "method_hash, name, recipe, parent_hash, first_uid, first_hotkey,
    tournaments_won, defences, tasks_won, first_tournament, last_tournament";

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LibraryEntry> {
    Ok(LibraryEntry {
        method_hash: r.get(0)?,
        name: r.get(1)?,
        recipe: r.get(2)?,
        parent_hash: r.get(3)?,
        first_uid: r.get(4)?,
        first_hotkey: r.get(5)?,
        tournaments_won: r.get(6)?,
        defences: r.get(7)?,
        tasks_won: r.get(8)?,
        first_tournament: r.get(9)?,
        last_tournament: r.get(10)?,
    })
}

/// Every archived method, most tournaments won first (then hash).
pub fn list(store: &Store) -> Result<Vec<LibraryEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM library_methods ORDER BY tournaments_won DESC, method_hash"
    );
    let mut st = store.conn().prepare(&sql).map_err(|e| store.err(e))?;
    let rows = st.query_map([], entry_row).map_err(|e| store.err(e))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| store.err(e))
}

/// An archived method with its task wins and lineage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LibraryDetail {
    /// The entry.
    pub entry: LibraryEntry,
    /// Every task it won, oldest tournament first.
    pub wins: Vec<TaskWin>,
    /// Its ancestors, parent first, as far as the library knows them (an unknown parent
    /// ends the chain; so does a cycle).
    pub lineage: Vec<String>,
    /// Archived methods that name it as their parent.
    pub children: Vec<String>,
}

/// The archived method whose hash is `hash` or starts with it (at least 6 characters; an
/// ambiguous or unknown prefix is an error naming it).
pub fn show(store: &Store, hash: &str) -> Result<LibraryDetail> {
    if hash.len() < 6 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::config(
            "library show",
            "hash",
            format!("`{hash}` is not a method hash or a prefix of at least 6 hex digits"),
        ));
    }
    let like = format!("{}%", hash.to_ascii_lowercase());
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM library_methods WHERE method_hash LIKE ?1");
    let mut st = store.conn().prepare(&sql).map_err(|e| store.err(e))?;
    let mut found = st
        .query_map(params![like], entry_row)
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| store.err(e))?;
    let entry = match found.len() {
        1 => found.swap_remove(0),
        0 => {
            return Err(Error::config(
                "library show",
                "hash",
                format!("no archived method `{hash}`"),
            ))
        }
        n => {
            return Err(Error::config(
                "library show",
                "hash",
                format!("`{hash}` matches {n} archived methods; give more digits"),
            ))
        }
    };
    let mut st = store
        .conn()
        .prepare(
            "SELECT w.tournament_id, w.task_id, w.stage, w.kind, w.loss, w.opponent_hash,
                    w.opponent_loss
             FROM library_wins w JOIN tournament_runs t USING (tournament_id)
             WHERE w.method_hash = ?1 ORDER BY t.created_at, w.tournament_id, w.task_id",
        )
        .map_err(|e| store.err(e))?;
    let wins = st
        .query_map(params![entry.method_hash], |r| {
            Ok(TaskWin {
                tournament_id: r.get(0)?,
                task_id: r.get(1)?,
                stage: r.get(2)?,
                kind: r.get(3)?,
                loss: r.get(4)?,
                opponent_hash: r.get(5)?,
                opponent_loss: r.get(6)?,
            })
        })
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| store.err(e))?;
    let mut lineage = Vec::new();
    let mut next = entry.parent_hash.clone();
    while let Some(p) = next.take() {
        if p == entry.method_hash || lineage.contains(&p) {
            break;
        }
        next = store
            .conn()
            .query_row(
                "SELECT parent_hash FROM library_methods WHERE method_hash = ?1",
                params![p],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(|e| store.err(e))?
            .flatten();
        lineage.push(p);
    }
    let mut st = store
        .conn()
        .prepare("SELECT method_hash FROM library_methods WHERE parent_hash = ?1 ORDER BY 1")
        .map_err(|e| store.err(e))?;
    let children = st
        .query_map(params![entry.method_hash], |r| r.get(0))
        .map_err(|e| store.err(e))?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(|e| store.err(e))?;
    Ok(LibraryDetail {
        entry,
        wins,
        lineage,
        children,
    })
}
