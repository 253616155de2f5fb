//! Validator evaluation (SPEC §3) end to end on a tiny random Llama built in code, a letter
//! tokenizer and a 60-row instruct dataset, with a real SQLite store in a tempdir: a method
//! that trains beats one that barely moves on the hidden test split; results persist and a
//! rerun never trains again; the same inputs give bit-identical losses and adapters; the
//! search and best-checkpoint policies stay inside the token budget; a whole task is scored
//! and finished; a DPO task (ShareGPT-shaped pairs) trains in DPO mode and is scored on the
//! DPO loss with per-pair losses.

mod tasks_support;

use std::path::Path;

use gradients_subnet::method::Method;
use gradients_subnet::store::Store;
use gradients_subnet::task::{
    create_task, get_task, load_split, task_events, Task, TaskSpec, TaskStatus,
};
use gradients_subnet::validator::{
    evaluate_method, evaluate_task, task_results, BaseModel, ValidatorOptions,
};
use tasks_support::{save_tiny_model, spec_toml, tiny_base, write_dataset};

const BUDGET: u64 = 3000;

fn setup(dir: &Path, id: &str) -> (Store, Task) {
    let model = save_tiny_model(dir);
    let data = write_dataset(dir, 60);
    let store = Store::open(&dir.join("state.db")).unwrap();
    let spec = TaskSpec::parse(
        &spec_toml(&model, &data, &format!("task_id = \"{id}\"")),
        "spec",
        false,
    )
    .unwrap();
    let task = create_task(&store, &spec).unwrap().task;
    (store, task)
}

fn method(lr: f64, extra: &str) -> Method {
    Method::parse(
        &format!(
            "[lora]\nr = 4\nalpha = 8\n[optimizer]\nlr = {lr}\n[train]\nmicro_batch = 4\nseq_len = 64\nepochs = 3\n{extra}"
        ),
        "test method",
        false,
    )
    .unwrap()
}

fn opts(dir: &Path) -> ValidatorOptions {
    let mut o = ValidatorOptions::new(&dir.join("work"), 42, BUDGET);
    o.threads = 2;
    o
}

#[test]
fn evaluate_method_trains_scores_persists_and_repeats_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, task) = setup(dir.path(), "t");
    let base = tiny_base();
    let o = opts(dir.path());
    let good = evaluate_method(&store, &task, &method(1e-2, ""), &base, &o).unwrap();
    assert_eq!(good.failed, None);
    let split = load_split(&store, "t").unwrap();
    assert_eq!(
        good.test_rows, split.test,
        "every test row scored, in split order"
    );
    assert_eq!(good.per_sample_test.len(), split.test.len());
    assert!(good.test_loss.is_finite() && good.synth_loss.is_finite());
    assert_eq!(good.rank_loss, good.test_loss.max(good.synth_loss));
    assert!(
        good.tokens > 0 && good.tokens <= BUDGET,
        "tokens {}",
        good.tokens
    );
    assert_eq!(good.adapter_sha256.as_ref().unwrap().len(), 64);
    assert!(good
        .adapter_dir
        .as_ref()
        .unwrap()
        .join("adapter_model.safetensors")
        .is_file());
    let mean: f64 = good.per_sample_test.iter().sum::<f64>() / good.per_sample_test.len() as f64;
    assert!(
        (mean - good.test_loss).abs() < 0.5,
        "per-sample losses belong to this result"
    );

    let weak = evaluate_method(&store, &task, &method(1e-6, ""), &base, &o).unwrap();
    assert_eq!(weak.failed, None);
    assert!(
        good.test_loss < weak.test_loss - 0.1,
        "training must lower the hidden test loss: {} vs {}",
        good.test_loss,
        weak.test_loss
    );
    assert_ne!(good.adapter_sha256, weak.adapter_sha256);
    assert!(weak.seq > good.seq, "submission order is kept");

    // a rerun reads the stored result back and trains nothing (the work dir stays gone)
    std::fs::remove_dir_all(dir.path().join("work")).unwrap();
    let mut renamed = method(1e-2, "");
    renamed.name = "renamed".into();
    let again = evaluate_method(&store, &task, &renamed, &base, &o).unwrap();
    assert_eq!(again, good);
    assert!(!dir.path().join("work").exists());
    assert_eq!(
        task_results(&store, "t").unwrap(),
        vec![good.clone(), weak.clone()]
    );

    // other options for a finished pair are refused, naming them
    let mut o2 = o.clone();
    o2.seed = 7;
    let e = evaluate_method(&store, &task, &method(1e-2, ""), &base, &o2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("seed 42") && e.contains("not 7"), "{e}");
    // a model other than the task's base model is refused
    let (mut cfg, _) = tasks_support::tiny_model();
    cfg.num_layers = 3;
    let other = BaseModel {
        weights: tasks_support::common::random_weights(&cfg, 1),
        config: cfg,
        tokenizer: Box::new(tasks_support::LetterTok),
        name: "other".into(),
    };
    let e = evaluate_method(&store, &task, &method(3e-3, ""), &other, &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("base_model"), "{e}");

    // a fresh store and work dir give the same losses and adapter, bit for bit
    let dir2 = tempfile::tempdir().unwrap();
    let (store2, task2) = setup(dir2.path(), "t");
    let mut o3 = opts(dir2.path());
    o3.threads = 1;
    let twin = evaluate_method(&store2, &task2, &method(1e-2, ""), &base, &o3).unwrap();
    assert_eq!(twin.test_loss.to_bits(), good.test_loss.to_bits());
    assert_eq!(twin.synth_loss.to_bits(), good.synth_loss.to_bits());
    assert_eq!(twin.per_sample_test, good.per_sample_test);
    assert_eq!(twin.adapter_sha256, good.adapter_sha256);
}

#[test]
fn search_and_best_checkpoint_stay_inside_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (store, task) = setup(dir.path(), "s");
    let base = tiny_base();
    let m = method(
        1e-2,
        "[budget]\ncheckpoint = \"best\"\neval_every = 2\neval_samples = 8\n[search]\nlr = [1e-4, 1e-2]\nr = [2, 4]\nrungs = 2\nfraction = 0.5\n",
    );
    let mut o = opts(dir.path());
    o.token_budget = 2 * BUDGET;
    let r = evaluate_method(&store, &task, &m, &base, &o).unwrap();
    assert_eq!(r.failed, None);
    assert!(r.tokens <= 2 * BUDGET, "tokens {}", r.tokens);
    let (rung0, rung1): (Vec<_>, Vec<_>) = r.search.iter().partition(|c| c.rung == 0);
    assert_eq!((rung0.len(), rung1.len()), (4, 2));
    assert!(rung0
        .iter()
        .all(|c| c.holdout_loss.is_some() && c.tokens > 0));
    // the better half of rung 0 goes on, with twice the tokens
    let mut by_loss = rung0.clone();
    by_loss.sort_by(|a, b| a.holdout_loss.unwrap().total_cmp(&b.holdout_loss.unwrap()));
    for c in &rung1 {
        assert!(by_loss[..2].iter().any(|b| (b.lr, b.r) == (c.lr, c.r)));
        assert_eq!(c.token_budget, 2 * rung0[0].token_budget);
    }
    assert!(r.test_loss.is_finite());
}

#[test]
fn evaluate_task_scores_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = setup(dir.path(), "k");
    let base = tiny_base();
    let o = opts(dir.path());
    let methods = [method(1e-6, ""), method(1e-2, "")];
    let run = evaluate_task(&store, "k", &methods, &base, &o).unwrap();
    let scores: Vec<f64> = run.scores.scores.iter().map(|s| s.score).collect();
    assert_eq!(scores, [0.0, 3.0]);
    assert_eq!(run.attempts, 1);
    assert_eq!(get_task(&store, "k").unwrap().status, TaskStatus::Success);
    let flow: Vec<TaskStatus> = task_events(&store, "k")
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        &flow[2..],
        [
            TaskStatus::Ready,
            TaskStatus::Training,
            TaskStatus::Evaluating,
            TaskStatus::Success
        ]
    );
    // asking again reads the finished task back
    let again = evaluate_task(&store, "k", &methods, &base, &o).unwrap();
    assert_eq!(again.results, run.results);
}

/// A DPO task over `n` ShareGPT-shaped pairs (dpo_en_demo's shape): a conversation prompt
/// and `{from, value}` answers; the chosen answer is always "yes.", the rejected "no.".
fn dpo_task(dir: &Path, store: &Store, id: &str, n: usize) -> Task {
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "conversations": [{"from": "human", "value": format!("pick {}", i % 7)}],
                "chosen": {"from": "gpt", "value": "yes."},
                "rejected": {"from": "gpt", "value": "no."}
            })
        })
        .collect();
    let data = dir.join(format!("{id}.json"));
    std::fs::write(&data, serde_json::to_string(&rows).unwrap()).unwrap();
    let spec = format!(
        "task_id = \"{id}\"\ntask_type = \"dpo\"\nbase_model = \"{}\"\ndataset = \"{}\"\nhours_to_complete = 1\n\
         [mapping]\nfield_prompt = \"conversations\"\nchat_user_reference = \"human\"\nchat_assistant_reference = \"gpt\"\n",
        dir.join("tiny-model").display(),
        data.display()
    );
    create_task(store, &TaskSpec::parse(&spec, "dpo spec", false).unwrap())
        .unwrap()
        .task
}

#[test]
fn dpo_task_trains_in_dpo_mode_and_scores_the_dpo_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = setup(dir.path(), "k");
    let task = dpo_task(dir.path(), &store, "d", 60);
    let base = tiny_base();
    let o = opts(dir.path());
    let dm = |lr: f64| {
        let mut m = method(lr, "");
        m.train.seq_len = 128;
        m
    };
    let good = evaluate_method(&store, &task, &dm(1e-2), &base, &o).unwrap();
    assert_eq!(good.failed, None, "{good:?}");
    let split = load_split(&store, "d").unwrap();
    assert_eq!(
        good.test_rows, split.test,
        "one pair per test row, in order"
    );
    assert_eq!(good.per_sample_test.len(), split.test.len());
    // DPO loss per pair; the mean is their mean; ln 2 is the untrained value
    let mean = good.per_sample_test.iter().sum::<f64>() / good.per_sample_test.len() as f64;
    assert!((mean - good.test_loss).abs() < 1e-12);
    assert_eq!(good.rank_loss, good.test_loss.max(good.synth_loss));
    assert!(
        good.test_loss < 0.5 * std::f64::consts::LN_2,
        "preferring yes. is learnt: {}",
        good.test_loss
    );
    assert!(good.tokens > 0 && good.tokens <= BUDGET, "{}", good.tokens);
    // a method that barely moves stays at ln 2, and the stored result is read back
    let timid = evaluate_method(&store, &task, &dm(1e-7), &base, &o).unwrap();
    assert!(
        (timid.test_loss - std::f64::consts::LN_2).abs() < 1e-3,
        "{}",
        timid.test_loss
    );
    let hash = dm(1e-2).hash();
    let stored = gradients_subnet::validator::load_result(&store, "d", &hash)
        .unwrap()
        .unwrap();
    assert_eq!(stored.per_sample_test, good.per_sample_test);
    assert_eq!(stored.test_loss.to_bits(), good.test_loss.to_bits());
    // the reference log-probs are cached per task and set: the timid method read them back
    let cached: Vec<_> = std::fs::read_dir(dir.path().join("work/d"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("dpo-reference-")
        })
        .collect();
    assert_eq!(
        cached.len(),
        2,
        "one file for the test set, one for the synthetic set"
    );
    // same inputs in another database, evaluated in the other order (so the cache is
    // written by the other method): bit-identical losses and adapters
    let dir2 = tempfile::tempdir().unwrap();
    let (store2, _) = setup(dir2.path(), "k");
    let task2 = dpo_task(dir2.path(), &store2, "d", 60);
    let o2 = opts(dir2.path());
    let timid2 = evaluate_method(&store2, &task2, &dm(1e-7), &base, &o2).unwrap();
    let again = evaluate_method(&store2, &task2, &dm(1e-2), &base, &o2).unwrap();
    for (x, y) in [(&again, &good), (&timid2, &timid)] {
        assert_eq!(x.per_sample_test, y.per_sample_test);
        assert_eq!(x.synth_loss.to_bits(), y.synth_loss.to_bits());
        assert_eq!(x.adapter_sha256, y.adapter_sha256);
    }
    // the whole task: the trained method ranks first
    let run = evaluate_task(&store, "d", &[dm(1e-2), dm(1e-7)], &base, &o).unwrap();
    assert_eq!(run.scores.valid, 2);
    assert_eq!(run.scores.ranking()[0], 0);
    assert_eq!(get_task(&store, "d").unwrap().status, TaskStatus::Success);
}
