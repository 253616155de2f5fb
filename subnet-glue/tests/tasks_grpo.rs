//! GRPO tasks through intake, the store and the validator, on a tiny random Llama built in
//! code with the letter tokenizer that decodes (tests/common): a pre-GRPO database is
//! migrated without losing rows (the task_type CHECK widened in place, foreign keys intact);
//! grpo specs are validated at intake with the field named; a grpo task trains in GRPO mode
//! inside the token budget and is evaluated by generation on the test and synthetic prompts,
//! per-prompt rewards and KL stored bit exact; the task's scores are SPEC §3's normalised
//! GRPO scores (recomputed here by hand), ranked descending on min(test, synth).

mod tasks_support;

use std::path::{Path, PathBuf};

use gradients_engine::model::hf_model::save_hf_model;
use gradients_engine::model::{Arch, ModelConfig, ModelWeights};
use gradients_subnet::method::Method;
use gradients_subnet::store::Store;
use gradients_subnet::task::{create_task, get_task, load_split, TaskSpec, TaskStatus, TaskType};
use gradients_subnet::validator::{
    evaluate_task, load_result, BaseModel, MethodResult, ValidatorOptions,
};
use rusqlite::params;
use tasks_support::common;

const BUDGET: u64 = 800;
const WORDS: [&str; 6] = ["cat", "dog", "bird", "fish", "frog", "cow"];

fn write_prompts(dir: &Path, n: usize) -> PathBuf {
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"prompt": format!("say {}", WORDS[i % WORDS.len()])}))
        .collect();
    let path = dir.join("prompts.json");
    std::fs::write(&path, serde_json::to_string(&rows).unwrap()).unwrap();
    path
}

fn grpo_spec(model: &Path, data: &Path, id: &str, extra: &str) -> String {
    format!(
        r#"task_id = "{id}"
task_type = "grpo"
base_model = "{}"
dataset = "{}"
hours_to_complete = 1.0
{extra}
[mapping]
prompt_format = "{{prompt}}: "
[[mapping.rewards]]
kind = "regex_match"
pattern = "^[a-z]"
weight = 2.0
[[mapping.rewards]]
kind = "length"
target = 2
weight = 0.5
"#,
        model.display(),
        data.display()
    )
}

const GEN: &str = "[grpo]\nnum_generations = 4\nmax_new_tokens = 3\n";

/// The model of the engine's GRPO training tests (its sampling varies, so groups differ).
fn grpo_model() -> (ModelConfig, ModelWeights) {
    let cfg = common::tiny_config(Arch::Llama, 2, false);
    let w = common::random_weights(&cfg, 21);
    (cfg, w)
}

fn save_grpo_model(dir: &Path) -> PathBuf {
    let (cfg, w) = grpo_model();
    let m = dir.join("tiny-model");
    std::fs::create_dir_all(&m).unwrap();
    save_hf_model(&m, &cfg, &w).unwrap();
    m
}

fn decoding_base() -> BaseModel {
    let (config, weights) = grpo_model();
    BaseModel {
        config,
        weights,
        tokenizer: Box::new(common::LetterTok),
        name: "tiny".into(),
    }
}

#[test]
fn old_database_is_migrated_without_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // a database as the pre-GRPO build left it: version 1 of tasks and results
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE schema_migrations (component TEXT NOT NULL, version INTEGER NOT NULL,
                 applied_at INTEGER NOT NULL, PRIMARY KEY (component, version));",
        )
        .unwrap();
        c.execute_batch(gradients_subnet::task::MIGRATIONS[0])
            .unwrap();
        c.execute_batch(gradients_subnet::validator::MIGRATIONS[0])
            .unwrap();
        for comp in ["tasks", "results"] {
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, 1, 0)",
                params![comp],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO tasks (task_id, task_type, base_model, dataset, dataset_sha256, mapping,
                 hours_to_complete, split_seed, rows, created_at, status)
             VALUES ('old', 'instruct', '/m', '/d', 'x', ?1, 1.0, 42, 10, 5, 'ready')",
            params![r#"{"task_type":"instruct","field_instruction":"q"}"#],
        )
        .unwrap();
        c.execute("INSERT INTO task_rows VALUES ('old', 'test', 0, 3)", [])
            .unwrap();
        c.execute(
            "INSERT INTO task_events VALUES ('old', 1, 'ready', 5, NULL)",
            [],
        )
        .unwrap();
        assert!(c
            .execute(
                "UPDATE tasks SET task_type = 'grpo' WHERE task_id = 'old'",
                []
            )
            .is_err());
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version("tasks").unwrap(), 2);
    assert_eq!(store.schema_version("results").unwrap(), 2);
    let t = get_task(&store, "old").unwrap();
    assert_eq!((t.task_type, t.grpo.clone()), (TaskType::Instruct, None));
    assert_eq!(load_split(&store, "old").unwrap().test, vec![3]);
    let c = store.conn();
    let events: i64 = c
        .query_row("SELECT COUNT(*) FROM task_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 1);
    // the CHECK now admits grpo and still refuses anything else
    c.execute(
        "UPDATE tasks SET task_type = 'grpo' WHERE task_id = 'old'",
        [],
    )
    .unwrap();
    assert!(c
        .execute(
            "UPDATE tasks SET task_type = 'bogus' WHERE task_id = 'old'",
            []
        )
        .is_err());
    // foreign keys still point at tasks: deleting the task cascades to its rows
    c.execute("DELETE FROM tasks WHERE task_id = 'old'", [])
        .unwrap();
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM task_rows", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(store);
    // a second open applies nothing
    let again = Store::open(&path).unwrap();
    assert_eq!(again.schema_version("tasks").unwrap(), 2);
}

#[test]
fn grpo_intake_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = save_grpo_model(dir.path());
    let data = write_prompts(dir.path(), 30);
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let spec = TaskSpec::parse(&grpo_spec(&model, &data, "g", GEN), "spec", false).unwrap();
    let g = spec.grpo.clone().unwrap();
    assert_eq!((g.num_generations, g.max_new_tokens), (4, 3));
    let t = create_task(&store, &spec).unwrap().task;
    assert_eq!(get_task(&store, "g").unwrap(), t);
    assert_eq!(t.task_type, TaskType::Grpo);
    // no [grpo] table: the engine's defaults
    let d = TaskSpec::parse(&grpo_spec(&model, &data, "d", ""), "spec", false).unwrap();
    assert_eq!(d.grpo, Some(Default::default()));
    let bad = |extra: &str, tail: &str| {
        let text = grpo_spec(&model, &data, "b", extra) + tail;
        TaskSpec::parse(&text, "spec", false)
            .and_then(|s| create_task(&store, &s))
            .unwrap_err()
            .to_string()
    };
    for (extra, tail, field) in [
        ("[grpo]\nmax_new_tokens = 0\n", "", "grpo.max_new_tokens"),
        ("[grpo]\nnum_generations = 1\n", "", "grpo.num_generations"),
        ("[grpo]\nbeta = 1\n", "", "beta"),
        ("", "[[mapping.rewards]]\nkind = \"telepathy\"\n", "mapping"),
        (
            "",
            "[[mapping.rewards]]\nkind = \"contains\"\ntext = \"a\"\nweight = -1\n",
            "weight",
        ),
    ] {
        let e = bad(extra, tail);
        assert!(e.contains(field), "{field}: {e}");
    }
    // a missing prompt column is found on the rows at intake
    let e = TaskSpec::parse(
        &grpo_spec(&model, &data, "c", GEN)
            .replace("[mapping]\n", "[mapping]\nfield_prompt = \"question\"\n"),
        "spec",
        false,
    )
    .and_then(|s| create_task(&store, &s))
    .unwrap_err()
    .to_string();
    assert!(e.contains("mapping") && e.contains("question"), "{e}");
    // generation settings belong to grpo tasks only
    let e = TaskSpec::parse(&tasks_support::spec_toml(&model, &data, GEN), "spec", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("grpo"), "{e}");
    assert_eq!(
        gradients_subnet::task::list_tasks(&store).unwrap().len(),
        1,
        "nothing half-created"
    );
}

fn method(lr: f64) -> Method {
    Method::parse(
        &format!(
            "[lora]\nr = 4\nalpha = 8\n[optimizer]\nlr = {lr}\n[train]\nmicro_batch = 2\nseq_len = 32\nepochs = 3\n"
        ),
        "test method",
        false,
    )
    .unwrap()
}

/// SPEC §3 by hand: per reward, (r − min)/max(r − min) over the compared results.
fn by_hand(sets: &[(&[f64], f64)], w: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = sets.iter().map(|(_, kl)| -0.5 * kl).collect();
    for (k, wk) in w.iter().enumerate() {
        let min = sets.iter().map(|(r, _)| r[k]).fold(f64::INFINITY, f64::min);
        let max = sets.iter().map(|(r, _)| r[k] - min).fold(0.0, f64::max);
        if max > 0.0 {
            for (x, (r, _)) in s.iter_mut().zip(sets) {
                *x += wk * (r[k] - min) / max;
            }
        }
    }
    s
}

#[test]
fn grpo_task_trains_generates_stores_and_ranks_descending() {
    let dir = tempfile::tempdir().unwrap();
    let model = save_grpo_model(dir.path());
    let data = write_prompts(dir.path(), 30);
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let spec = TaskSpec::parse(&grpo_spec(&model, &data, "g", GEN), "spec", false).unwrap();
    create_task(&store, &spec).unwrap();
    let base = decoding_base();
    let mut o = ValidatorOptions::new(&dir.path().join("work"), 42, BUDGET);
    o.threads = 2;
    let methods = [method(5e-2), method(1e-5), method(2e-2)];
    let run = evaluate_task(&store, "g", &methods, &base, &o).unwrap();
    let split = load_split(&store, "g").unwrap();
    let res: &[MethodResult] = &run.results;
    for r in res {
        assert_eq!(r.failed, None, "{r:?}");
        assert!(r.tokens > 0 && r.tokens <= BUDGET, "tokens {}", r.tokens);
        let g = r.grpo.as_ref().unwrap();
        assert_eq!(g.weights, [2.0, 0.5]);
        assert_eq!(g.reward_kinds, ["regex_match", "length"]);
        assert_eq!(r.test_rows, split.test, "one prompt per test row");
        assert_eq!(g.test.rewards.len(), split.test.len());
        assert_eq!(g.synth.kls.len(), split.synth.len());
        // the SFT-shaped view: 0.5·KL − Σ w·reward, per prompt and on average
        for (i, (rw, kl)) in g.test.rewards.iter().zip(&g.test.kls).enumerate() {
            let v = 0.5 * kl - (2.0 * rw[0] + 0.5 * rw[1]);
            assert!((v - r.per_sample_test[i]).abs() < 1e-12);
            assert!(*kl >= 0.0 && rw.iter().all(|x| (0.0..=1.0).contains(x)));
        }
        let n = g.test.rewards.len() as f64;
        let mean = |k: usize| g.test.rewards.iter().map(|x| x[k]).sum::<f64>() / n;
        assert!((mean(0) - g.test.mean_rewards[0]).abs() < 1e-12);
        assert!((r.test_loss - (0.5 * g.test.kl - 2.0 * mean(0) - 0.5 * mean(1))).abs() < 1e-12);
        // stored bit exact
        let back = load_result(&store, "g", &r.method_hash).unwrap().unwrap();
        assert_eq!(back.grpo, r.grpo);
        assert_eq!(back.test_loss.to_bits(), r.test_loss.to_bits());
    }
    assert!(res[0].grpo.as_ref().unwrap().test.kl > 0.0);
    // scores: SPEC §3 normalised over the three, min(test, synth), ranked descending
    let sets = |test: bool| -> Vec<(&[f64], f64)> {
        res.iter()
            .map(|r| {
                let g = r.grpo.as_ref().unwrap();
                let s = if test { &g.test } else { &g.synth };
                (s.mean_rewards.as_slice(), s.kl)
            })
            .collect()
    };
    let (t, s) = (
        by_hand(&sets(true), &[2.0, 0.5]),
        by_hand(&sets(false), &[2.0, 0.5]),
    );
    let want: Vec<f64> = t.iter().zip(&s).map(|(a, b)| a.min(*b)).collect();
    for (sc, w) in run.scores.scores.iter().zip(&want) {
        assert!((sc.grpo_score.unwrap() - w).abs() < 1e-12, "{sc:?} vs {w}");
    }
    let ranking = run.scores.ranking();
    for pair in ranking.windows(2) {
        assert!(want[pair[0]] >= want[pair[1]], "{want:?} {ranking:?}");
    }
    assert_eq!(run.scores.scores[ranking[0]].score, 3.0);
    assert_eq!(get_task(&store, "g").unwrap().status, TaskStatus::Success);
}
