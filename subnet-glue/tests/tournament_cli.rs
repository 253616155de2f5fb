//! `gradients tournament run`'s task-source flags, without assets: `--task-kinds` refuses
//! unknown kinds and takes grpo only with its data, `--grpo-mapping` and `--grpo-settings`
//! are checked with the field named, `--dpo-mapping` must be a DPO mapping, an explicit dpo kind needs
//! its data, and by default (all three kinds) a missing DPO dataset or GRPO prompt file turns
//! that kind off with a printed reason (the run then goes on to load the model, which fails
//! here on purpose).

use std::path::Path;
use std::process::Command;

/// Run the command in `dir` with a method file, an instruct dataset and a model path that
/// does not exist (so nothing is trained); returns (success, stdout + stderr).
fn run(dir: &Path, extra: &[&str]) -> (bool, String) {
    let methods = dir.join("m.toml");
    std::fs::write(&methods, "name = \"m\"\n").unwrap();
    let data = dir.join("alpaca.json");
    std::fs::write(&data, "[]").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gradients"))
        .args(["tournament", "run", "--no-chain"])
        .arg("--db")
        .arg(dir.join("t.db"))
        .arg("--methods")
        .arg(&methods)
        .arg("--data")
        .arg(&data)
        .arg("--model")
        .arg(dir.join("no-model.gguf"))
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn task_source_flags_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nowhere = d.join("no-prompts.json");
    let nowhere = nowhere.to_str().unwrap();
    let (ok, out) = run(
        d,
        &["--task-kinds", "instruct,grpo", "--grpo-data", nowhere],
    );
    assert!(
        !ok && out.contains("--grpo-data") && out.contains("no-prompts.json"),
        "{out}"
    );
    let prompts = d.join("prompts.json");
    std::fs::write(&prompts, "[]").unwrap();
    let pr = prompts.to_str().unwrap();
    let grpo = |extra: &[&str]| {
        let mut args = vec!["--task-kinds", "grpo", "--grpo-data", pr];
        args.extend_from_slice(extra);
        run(d, &args)
    };
    let (ok, out) = grpo(&["--grpo-mapping", r#"{"field_instruction": "q"}"#]);
    assert!(!ok && out.contains("--grpo-mapping"), "{out}");
    let (ok, out) = grpo(&["--grpo-settings", r#"{"max_new_tokens": 0}"#]);
    assert!(!ok && out.contains("grpo.max_new_tokens"), "{out}");
    // the default mapping and settings: grpo tasks from the file, then the model fails
    let (ok, out) = grpo(&[]);
    assert!(
        !ok && out.contains("grpo tasks from") && out.contains("prompts.json"),
        "{out}"
    );
    assert!(out.contains("no-model.gguf"), "{out}");
    let (ok, out) = run(d, &["--task-kinds", "chat"]);
    assert!(!ok && out.contains("unknown task kind"), "{out}");
    let bad = r#"{"task_type": "instruct", "field_instruction": "q"}"#;
    let (ok, out) = run(d, &["--task-kinds", "dpo", "--dpo-mapping", bad]);
    assert!(
        !ok && out.contains("--dpo-mapping") && out.contains("dpo mapping"),
        "{out}"
    );
    let missing = d.join("none.json");
    let m = missing.to_str().unwrap();
    let (ok, out) = run(d, &["--task-kinds", "instruct,dpo", "--dpo-data", m]);
    assert!(
        !ok && out.contains("--dpo-data") && out.contains("none.json"),
        "{out}"
    );
    // default kinds: the missing DPO data turns dpo off, instruct goes on (to the model)
    let (ok, out) = run(d, &["--dpo-data", m, "--grpo-data", m]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("dpo tasks off") && out.contains("instruct tasks from"),
        "{out}"
    );
    assert!(!out.contains("dpo tasks from"), "{out}");
    assert!(out.contains("no-model.gguf"), "{out}");
    // grpo is a default kind too: off without its prompts, on with them
    assert!(
        out.contains("grpo tasks off") && !out.contains("grpo tasks from"),
        "{out}"
    );
    let (_, out) = run(d, &["--dpo-data", m, "--grpo-data", pr]);
    assert!(
        out.contains("grpo tasks from") && out.contains("prompts.json"),
        "{out}"
    );
    // a DPO mapping without the tag is read as dpo; the DPO file is used when it exists
    let pairs = d.join("pairs.json");
    std::fs::write(&pairs, "[]").unwrap();
    let p = pairs.to_str().unwrap();
    let (_, out) = run(
        d,
        &["--dpo-data", p, "--dpo-mapping", r#"{"field_prompt": "q"}"#],
    );
    assert!(
        out.contains("dpo tasks from") && out.contains("pairs.json"),
        "{out}"
    );
}
