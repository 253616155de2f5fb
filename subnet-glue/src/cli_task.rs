//! `gradients task create|list|show`: intake of a task spec (TOML/JSON, SPEC §1) into the
//! store, and a look at the stored tasks, their splits and status history. The work is in
//! the library (task.rs, store.rs); this file only parses flags and prints.

use std::path::PathBuf;

use anyhow::Context;
use gradients_subnet::store::Store;
use gradients_subnet::task::{create_task, get_task, list_tasks, load_split, task_events, TaskSpec};

/// Flags of `gradients task`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Validate a task spec and store the task with its split (nothing is stored on error).
    Create {
        /// The SQLite store (created when missing).
        #[arg(long)]
        db: PathBuf,
        /// The task spec (TOML, or JSON by extension).
        spec: PathBuf,
    },
    /// One line per task.
    List {
        /// The SQLite store.
        #[arg(long)]
        db: PathBuf,
    },
    /// One task as JSON: its fields, split sizes and status history.
    Show {
        /// The SQLite store.
        #[arg(long)]
        db: PathBuf,
        /// The task id.
        id: String,
    },
}

fn open(db: &std::path::Path) -> anyhow::Result<Store> {
    Store::open(db).with_context(|| format!("opening store {}", db.display()))
}

/// Run the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Create { db, spec } => {
            let s = TaskSpec::from_file(&spec)
                .with_context(|| format!("reading task spec {}", spec.display()))?;
            let store = open(&db)?;
            let intake = create_task(&store, &s)
                .with_context(|| format!("creating the task of {}", spec.display()))?;
            for w in &intake.warnings {
                eprintln!("warning: {w}");
            }
            let (t, sp) = (&intake.task, &intake.split);
            println!(
                "{} {} {}: {} rows → train {}, test {}, held back {}, synthetic {}",
                t.task_id,
                t.task_type.as_str(),
                t.status.as_str(),
                t.rows,
                sp.train.len(),
                sp.test.len(),
                sp.holdback.len(),
                sp.synth.len()
            );
        }
        Cmd::List { db } => {
            let store = open(&db)?;
            for t in list_tasks(&store)? {
                println!(
                    "{}\t{}\t{}\t{} rows\t{}",
                    t.task_id,
                    t.task_type.as_str(),
                    t.status.as_str(),
                    t.rows,
                    t.dataset.display()
                );
            }
        }
        Cmd::Show { db, id } => {
            let store = open(&db)?;
            let t = get_task(&store, &id)?;
            let sp = load_split(&store, &id)?;
            let events: Vec<_> = task_events(&store, &id)?
                .into_iter()
                .map(|(s, at, note)| serde_json::json!({"status": s, "at": at, "note": note}))
                .collect();
            let out = serde_json::json!({
                "task": t,
                "split": {"train": sp.train.len(), "test": sp.test.len(),
                          "holdback": sp.holdback.len(), "synth": sp.synth.len()},
                "events": events,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
