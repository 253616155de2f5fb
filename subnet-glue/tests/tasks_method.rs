//! Methods (method.rs) and the CLI over tasks and methods: defaults, normalisation and a
//! hash that ignores formatting; unknown fields, out-of-range values and wrong types named;
//! `gradients method check` and `gradients task create|list|show` on real files.

mod cli_support;
mod tasks_support;

use cli_support::gradients;
use gradients_subnet::method::{CheckpointPolicy, Method};

#[test]
fn defaults_normalisation_and_hash() {
    let m = Method::parse("", "empty", false).unwrap();
    assert_eq!(m, Method::default());
    let a = Method::parse(
        r#"
name = "halving"
[lora]
r = 16
alpha = 32
targets = ["down_proj", "q_proj"]
[optimizer]
lr = 1e-3
[schedule]
kind = "cosine"
warmup_fraction = 0.1
[train]
micro_batch = 2
seq_len = 256
epochs = 3
[budget]
fraction = 0.5
checkpoint = "best"
eval_every = 5
[search]
lr = [3e-3, 1e-3, 3e-4]
r = [8, 4]
rungs = 2
"#,
        "a.toml",
        false,
    )
    .unwrap();
    assert_eq!(a.lora.targets, ["q_proj", "down_proj"]);
    assert_eq!(a.budget.checkpoint, CheckpointPolicy::Best);
    let s = a.search.as_ref().unwrap();
    assert_eq!(s.lr, [3e-4, 1e-3, 3e-3]);
    assert_eq!(s.r, [4, 8]);
    assert_eq!(a.candidates().len(), 6);
    assert_eq!(a.candidates()[0], (3e-4, 4));
    // same recipe, other order, other spelling, other name: same hash
    let b = Method::parse(
        r#"{"search": {"rungs": 2, "r": [4, 8, 8], "lr": [0.001, 0.0003, 0.003]},
            "budget": {"eval_every": 5, "checkpoint": "best", "fraction": 0.5},
            "train": {"epochs": 3, "seq_len": 256, "micro_batch": 2},
            "schedule": {"warmup_fraction": 0.1, "kind": "cosine"},
            "optimizer": {"lr": 0.001},
            "lora": {"targets": ["q", "down_proj"], "alpha": 32.0, "r": 16}}"#,
        "b.json",
        true,
    )
    .unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.name, b.name);
    let mut c = b.clone();
    c.budget.fraction = 0.6;
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn bad_methods_name_the_field() {
    let cases = [
        ("[lora]\nrank = 8", "`lora.rank`: unknown field"),
        ("seed = 3", "`seed`: unknown field"),
        ("[lora]\nr = 0", "`lora.r`: must be in 1..=256"),
        ("[lora]\nr = 4096", "`lora.r`"),
        ("[lora]\nr = 8.5", "`lora.r`: invalid type"),
        ("[lora]\ndropout = 0.9", "`lora.dropout`"),
        ("[lora]\ntargets = []", "`lora.targets`"),
        (
            "[lora]\ntargets = [\"q_proj\", \"lm_head\"]",
            "`lora.targets[1]`: unknown module `lm_head`",
        ),
        ("[optimizer]\nlr = 2.0", "`optimizer.lr`"),
        ("[optimizer]\nlr = \"fast\"", "`optimizer.lr`: invalid type"),
        ("[optimizer]\nbetas = [0.9, 1.5]", "`optimizer.betas[1]`"),
        (
            "[schedule]\nkind = \"step\"",
            "`schedule.kind`: unknown schedule",
        ),
        (
            "[schedule]\nwarmup_fraction = 0.9",
            "`schedule.warmup_fraction`",
        ),
        (
            "[train]\nmicro_batch = \"four\"",
            "`train.micro_batch`: invalid type",
        ),
        ("[train]\nmicro_batch = 0", "`train.micro_batch`"),
        ("[train]\nseq_len = 100000", "`train.seq_len`"),
        ("[train]\nepochs = -1", "`train.epochs`"),
        ("[budget]\nfraction = 0", "`budget.fraction`"),
        (
            "[budget]\ncheckpoint = \"worst\"",
            "`budget.checkpoint`: unknown variant",
        ),
        ("[budget]\nmax_steps = 0", "`budget.max_steps`"),
        ("[budget]\neval_samples = 10000", "`budget.eval_samples`"),
        (
            "[search]\nlr = [1e-3]",
            "`search`: needs at least 2 candidates",
        ),
        ("[search]\nlr = [1e-3, 5.0]", "`search.lr[1]`"),
        ("[search]\nlr = [1e-3, 2e-3]\nrungs = 9", "`search.rungs`"),
        (
            "[search]\nlr = [1e-3, 2e-3]\nfraction = 1.0",
            "`search.fraction`",
        ),
        (
            "[search]\nlr = [1e-3, 2e-3]\nsteps = 3",
            "`search.steps`: unknown field",
        ),
        ("lora = 3", "`lora`: expected a table"),
        ("[lora\nr = 1", "toml"),
    ];
    for (text, want) in cases {
        let e = Method::parse(text, "m.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: want {want:?} in: {e}");
        assert!(e.contains("m.toml"), "{e}");
    }
    let e = Method::parse(r#"{"train": {"packing": "yes"}}"#, "m.json", true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`train.packing`: invalid type"), "{e}");
}

#[test]
fn cli_method_check_and_task_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mfile = dir.path().join("m.toml");
    std::fs::write(&mfile, "[optimizer]\nlr = 1e-3\n").unwrap();
    let (ok, out, err) = gradients(&["method", "check", mfile.to_str().unwrap()]);
    assert!(ok, "{err}");
    let m = Method::parse("[optimizer]\nlr = 1e-3\n", "x", false).unwrap();
    assert!(out.contains(&format!("# hash = \"{}\"", m.hash())), "{out}");
    assert!(out.contains("lr = 0.001"), "{out}");
    // the printed form reads back to the same hash
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &out).unwrap();
    assert_eq!(Method::from_file(&printed).unwrap().hash(), m.hash());
    std::fs::write(&mfile, "[lora]\nr = 0\n").unwrap();
    let (ok, _, err) = gradients(&["method", "check", mfile.to_str().unwrap()]);
    assert!(!ok && err.contains("`lora.r`"), "{err}");

    let model = tasks_support::save_tiny_model(dir.path());
    let data = tasks_support::write_dataset(dir.path(), 30);
    let spec = dir.path().join("task.toml");
    std::fs::write(
        &spec,
        tasks_support::spec_toml(&model, &data, "task_id = \"cli\""),
    )
    .unwrap();
    let db = dir.path().join("db/state.db");
    let db = db.to_str().unwrap();
    let (ok, out, err) = gradients(&["task", "create", "--db", db, spec.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("cli instruct ready: 30 rows → train 26, test 3, held back 1, synthetic 4"),
        "{out}"
    );
    assert!(err.contains("warning"), "{err}");
    let (ok, out, _) = gradients(&["task", "list", "--db", db]);
    assert!(
        ok && out.starts_with("cli\tinstruct\tready\t30 rows"),
        "{out}"
    );
    let (ok, out, _) = gradients(&["task", "show", "--db", db, "cli"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["task"]["status"], "ready");
    assert_eq!(v["split"]["test"], 3);
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    let (ok, _, err) = gradients(&["task", "show", "--db", db, "nope"]);
    assert!(!ok && err.contains("no task `nope`"), "{err}");
    std::fs::write(&spec, tasks_support::spec_toml(&model, &data, "budget = 3")).unwrap();
    let (ok, _, err) = gradients(&["task", "create", "--db", db, spec.to_str().unwrap()]);
    assert!(!ok && err.contains("`budget`: unknown field"), "{err}");
}
