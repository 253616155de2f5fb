//! SIGKILL a real `gradients tournament run` mid-way and run it again: it resumes from the
//! SQLite file and ends with the same outcome as an uninterrupted run in another database,
//! with nothing counted twice (one row per match and per evaluation, one library entry, one
//! champion, weights set once). A second SIGKILL lands in the middle of a method's training
//! (as soon as a run has saved a checkpoint): the next run resumes that training from the
//! checkpoint (it says so on stderr) instead of starting over, and the outcome is still the
//! uninterrupted one. Skips (printing why) when the real assets are absent.

mod tournament_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use tournament_support::*;

fn cmd(db: &Path, methods: &Path, model: &Path, data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gradients"));
    c.args(["tournament", "run", "--threads", "2", "--json"])
        .arg("--db")
        .arg(db)
        .arg("--methods")
        .arg(methods)
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--token-budget", &TOKEN_BUDGET.to_string()])
        .args(["--eval-samples", &EVAL_SAMPLES.to_string()])
        .args(["--eval-seq-len", &EVAL_SEQ_LEN.to_string()])
        .args(["--seed", "3"]);
    c
}

/// Run to the end; returns stdout.
fn run_to_end(c: Command) -> String {
    run_to_end_with_stderr(c).0
}

/// Run to the end; returns stdout and stderr.
fn run_to_end_with_stderr(mut c: Command) -> (String, String) {
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Checkpoints of unfinished runs under the work dir: `<task>/<pair>/final/checkpoints/step-*`
/// whose run has no final adapter yet.
fn unfinished_checkpoints(work: &Path) -> Vec<std::path::PathBuf> {
    let dirs = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for task in dirs(work) {
        for pair in dirs(&task) {
            let fin = pair.join("final");
            if fin.join("adapter").exists() {
                continue;
            }
            out.extend(dirs(&fin.join("checkpoints")).into_iter().filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            }));
        }
    }
    out
}

/// The outcome JSON (the last line of `--json` output), losses rounded to 10 significant
/// digits (a stored outcome goes through JSON, whose default float parsing may move the
/// last ulp).
fn outcome(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    fn round(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let x = n.as_f64().unwrap_or(0.0);
                *v = serde_json::json!(format!("{x:.10e}"));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(round),
            serde_json::Value::Object(o) => o.values_mut().for_each(round),
            _ => {}
        }
    }
    round(&mut v);
    v
}

fn count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn sigkill_mid_tournament_then_resume() {
    let (model, data) = match assets() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let methods = dir.path().join("methods");
    write_methods(&methods);
    let db = dir.path().join("killed.db");

    // Start, and SIGKILL as soon as the first played match is recorded.
    let mut child = cmd(&db, &methods, &model, &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.starts_with("match ") && !line.contains("[bye]") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.starts_with("match ")),
        "the run ended before a match: {seen:?}"
    );
    let matches_before = count(&db, "SELECT COUNT(*) FROM tournament_matches");
    assert!(matches_before >= 1);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM tournament_runs WHERE status = 'finished'"
        ),
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM library_methods"), 0);
    let first = count(&db, "SELECT COUNT(*) FROM results");

    // Run again and SIGKILL as soon as a method's training has saved a checkpoint.
    let work = std::path::PathBuf::from(format!("{}.work", db.display()));
    let mut child = cmd(&db, &methods, &model, &data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let mid = loop {
        let found = unfinished_checkpoints(&work);
        if !found.is_empty() {
            break found;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        assert!(t.elapsed().as_secs() < 1200, "no checkpoint in 20 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let second = count(&db, "SELECT COUNT(*) FROM results");

    // Resume to the end: the interrupted training resumes from its checkpoint.
    let (resumed, stderr) = run_to_end_with_stderr(cmd(&db, &methods, &model, &data));
    let line = stderr
        .lines()
        .find(|l| l.starts_with("resuming ") && l.contains("from its checkpoint at step"))
        .unwrap_or_else(|| panic!("no resumed training after killing at {mid:?}: {stderr}"));
    let run_dir = mid[0].parent().unwrap().parent().unwrap();
    assert!(
        line.contains(&run_dir.display().to_string()),
        "{line} resumes {}",
        run_dir.display()
    );
    assert!(first <= second);
    assert!(resumed.contains("(resuming)"), "{resumed}");
    assert!(resumed.contains("(recorded earlier)"), "{resumed}");
    let o = outcome(&resumed);

    // Nothing twice: three matches (a pair, a bye, the final), one row per evaluation (two per
    // played match), one finished run, one library entry won once, one champion, one set of
    // weights (the validator's), one epoch.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tournament_matches"), 3);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), 4);
    assert!(first <= 4);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM tournament_runs WHERE status = 'finished'"
        ),
        1
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM library_methods"), 1);
    assert_eq!(count(&db, "SELECT tournaments_won FROM library_methods"), 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tournament_champion"), 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM chain_epochs"), 1);

    // A third run reads the finished tournament back: same outcome, nothing new.
    let third = run_to_end(cmd(&db, &methods, &model, &data));
    assert_eq!(outcome(&third), o);
    assert!(third.contains("already set"), "{third}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM results"), 4);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM chain_epochs"), 1);
    assert_eq!(count(&db, "SELECT tournaments_won FROM library_methods"), 1);

    // The same tournament uninterrupted in another database ends the same way.
    let clean = run_to_end(cmd(&dir.path().join("clean.db"), &methods, &model, &data));
    assert_eq!(outcome(&clean), o);
}
