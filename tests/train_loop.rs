//! The training loop and evaluation on a tiny random Llama (built in code) with a tiny
//! letter tokenizer and an in-code instruct dataset: config validation names the field, the
//! training loss falls, gradient accumulation equals one big batch, a resumed run is
//! bit-identical to an uninterrupted one, the token and wall-clock budgets and the stop flag
//! stop the run where documented, a NaN weight stops it with a clear error, and evaluation is
//! bit-identical across runs and independent of the batch size.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::{tiny_run_config, INSTRUCT_MAPPING};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{InstructMapping, Mapping, TextTokenizer, TokenizedSample};
use gradients_engine::eval::evaluate;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Llama, ModelConfig, ModelWeights};
use gradients_engine::train::{RunOptions, StopReason, TrainConfig, TrainSummary};

use common::{train_tiny, LetterTok};

/// 40 rows: "say the animal N" → the animal's name twice.
fn write_dataset(dir: &Path) -> PathBuf {
    common::write_animal_dataset(dir, 10, 40)
}

fn model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(true, 7)
}

/// A config over `data` writing into `out`; `extra` is TOML appended at the top level.
fn config(data: &Path, out: &Path, extra: &str) -> TrainConfig {
    let seq = if extra.contains("seq_len") {
        ""
    } else {
        "seq_len = 64"
    };
    let top = format!("{seq}\n{extra}");
    tiny_run_config(data, out, &top, INSTRUCT_MAPPING, "[optimizer]\nlr = 0.01").unwrap()
}

fn run(cfg: &TrainConfig, opts: &RunOptions) -> TrainSummary {
    let (mcfg, w) = model();
    train_tiny(cfg, &mcfg, &w, opts).unwrap()
}

fn adapter_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap()
}

#[test]
fn config_errors_name_the_field() {
    let base = r#"
model = "m"
dataset = "d.json"
output_dir = "o"
[mapping]
task_type = "instruct"
field_instruction = "instruction"
"#;
    let ok = TrainConfig::from_toml(base, "t").unwrap();
    assert_eq!(ok.epoch_limit(), 1);
    assert_eq!((ok.micro_batch, ok.grad_accum, ok.lora.r), (1, 1, 8));
    let cases = [
        ("micro_batch = 0", "micro_batch"),
        ("grad_accum = 5000", "grad_accum"),
        ("seq_len = 1", "seq_len"),
        ("epochs = 0", "epochs"),
        ("max_steps = 0", "max_steps"),
        ("token_budget = 0", "token_budget"),
        ("hours_to_complete = -1.0", "hours_to_complete"),
        ("eval_samples = 0", "eval_samples"),
        ("[optimizer]\nlr = 0.0", "optimizer.lr"),
        ("[optimizer]\nbetas = [0.9, 1.0]", "optimizer.betas[1]"),
        (
            "[optimizer]\nmax_grad_norm = 0.0",
            "optimizer.max_grad_norm",
        ),
        ("[optimizer]\nweight_decay = -0.1", "optimizer.weight_decay"),
        ("[lora]\nr = 0", "lora.r"),
        ("[lora]\ndropout = 1.0", "lora.lora_dropout"),
        ("[lora]\ntargets = [\"x_proj\"]", "lora.targets"),
        ("[schedule]\nkind = \"step\"", "schedule.kind"),
        ("bogus = 1", "bogus"),
        ("[lora]\nrank = 4", "rank"),
    ];
    for (bad, field) in cases {
        // top-level keys must come before the [mapping] table
        let text = if bad.starts_with('[') {
            format!("{base}{bad}\n")
        } else {
            format!("{bad}\n{base}")
        };
        let err = TrainConfig::from_toml(&text, "t").unwrap_err().to_string();
        assert!(
            err.contains(field),
            "`{bad}`: error `{err}` should name `{field}`"
        );
    }
    let no_instr = "model = \"m\"\ndataset = \"d\"\noutput_dir = \"o\"\n[mapping]\ntask_type = \"instruct\"\nfield_instruction = \"\"\n";
    let err = TrainConfig::from_toml(no_instr, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("field_instruction"), "{err}");
}

#[test]
fn json_config_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("run.json");
    let text = r#"{"model": "m.gguf", "dataset": "asset:alpaca_en_demo", "output_dir": "out",
        "mapping": {"task_type": "instruct", "field_instruction": "q"}, "max_steps": 3}"#;
    std::fs::write(&p, text).unwrap();
    let cfg = TrainConfig::from_file(&p).unwrap();
    assert_eq!(cfg.model, dir.path().join("m.gguf"));
    assert_eq!(cfg.output_dir, dir.path().join("out"));
    assert_eq!(cfg.dataset, PathBuf::from("asset:alpaca_en_demo"));
    assert_eq!(cfg.max_steps, Some(3));
    let m = Mapping::Instruct(InstructMapping {
        field_instruction: "q".into(),
        ..Default::default()
    });
    assert_eq!(cfg.mapping, m);
}

#[test]
fn training_loss_falls_and_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let out = dir.path().join("out");
    let cfg = config(&data, &out, "micro_batch = 2\nepochs = 6\neval_every = 4");
    let s = run(&cfg, &RunOptions::default());
    assert_eq!(s.stop_reason, StopReason::Completed);
    let n = s.losses.len();
    assert!(n >= 6, "{n} steps");
    let first = (s.losses[0] + s.losses[1]) / 2.0;
    let last = (s.losses[n - 1] + s.losses[n - 2]) / 2.0;
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    let (base, fin) = (s.base_test_loss.unwrap(), s.final_test_loss.unwrap());
    assert!(fin < base, "test loss {base} -> {fin}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| l.contains("\"loss\"")).count();
    assert_eq!(steps, n);
    assert!(metrics.contains("base_test_loss") && metrics.contains("test_loss"));
    let (mcfg, _) = model();
    let lw = LoraWeights::load(&out.join("adapter"), &mcfg).unwrap();
    assert_eq!(lw.config.rank, 4);
    assert!(s.checkpoint_dir.join("trainer_state.json").is_file());
}

#[test]
fn accumulation_equals_one_big_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    for packing in [true, false] {
        let p = format!("packing = {packing}\nmax_steps = 4\nskip_eval = true\nseq_len = 32");
        let a_out = dir.path().join(format!("a{packing}"));
        let b_out = dir.path().join(format!("b{packing}"));
        let a = run(
            &config(
                &data,
                &a_out,
                &format!("{p}\nmicro_batch = 2\ngrad_accum = 1"),
            ),
            &RunOptions::default(),
        );
        let b = run(
            &config(
                &data,
                &b_out,
                &format!("{p}\nmicro_batch = 1\ngrad_accum = 2"),
            ),
            &RunOptions::default(),
        );
        assert_eq!(a.losses.len(), 4);
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.losses.iter().zip(&b.losses) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
        }
        let (mcfg, _) = model();
        let wa = LoraWeights::load(&a_out.join("adapter"), &mcfg).unwrap();
        let wb = LoraWeights::load(&b_out.join("adapter"), &mcfg).unwrap();
        for (pa, pb) in wa.params().iter().zip(wb.params()) {
            for (x, y) in pa.data.iter().zip(&pb.data) {
                assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
            }
        }
    }
}

#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let extra = "micro_batch = 2\ngrad_accum = 2\nmax_steps = 7\nsave_every = 2\nskip_eval = true";
    let with_dropout = |out: &Path| {
        let mut c = config(&data, out, extra);
        c.lora.dropout = 0.1;
        c
    };
    let full_out = dir.path().join("full");
    let full = run(&with_dropout(&full_out), &RunOptions::default());
    assert_eq!(full.losses.len(), 7);
    let part_out = dir.path().join("part");
    let cfg = with_dropout(&part_out);
    let first = run(
        &cfg,
        &RunOptions {
            stop_after_steps: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(first.stop_reason, StopReason::Interrupted);
    assert_eq!(first.steps, 3);
    let rest = run(&cfg, &RunOptions::default());
    assert_eq!(rest.resumed_from, 3);
    assert_eq!(rest.steps, 7);
    let joined: Vec<f64> = first.losses.iter().chain(&rest.losses).copied().collect();
    assert_eq!(joined, full.losses);
    assert_eq!(adapter_bytes(&full_out), adapter_bytes(&part_out));
    assert_eq!(rest.tokens, full.tokens);
    // the metrics file reads like the uninterrupted run's
    let steps = |out: &Path| {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"loss\""))
            .count()
    };
    assert_eq!(steps(&part_out), 7);
    // a changed plan field is refused on resume
    let mut other = with_dropout(&part_out);
    other.seed = 5;
    let (mcfg, w) = model();
    let err = train_tiny(&other, &mcfg, &w, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("different seed"), "{err}");
}

#[test]
fn budgets_and_stop_flag_end_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let base = "micro_batch = 2\nepochs = 2\nskip_eval = true\nseq_len = 32";
    let full = run(
        &config(&data, &dir.path().join("f"), base),
        &RunOptions::default(),
    );
    let metrics = std::fs::read_to_string(dir.path().join("f/metrics.jsonl")).unwrap();
    let per_step: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("tokens").and_then(|t| t.as_u64()))
        .collect();
    assert_eq!(per_step.len(), full.losses.len());
    let cum: Vec<u64> = per_step
        .iter()
        .scan(0, |a, &t| {
            *a += t;
            Some(*a)
        })
        .collect();
    // a budget one token short of 5 steps' tokens stops after 4 steps
    let budget = cum[4] - 1;
    let b = run(
        &config(
            &data,
            &dir.path().join("b"),
            &format!("{base}\ntoken_budget = {budget}"),
        ),
        &RunOptions::default(),
    );
    assert_eq!(b.stop_reason, StopReason::TokenBudget);
    assert_eq!(b.steps, 4);
    assert_eq!(b.tokens, cum[3]);
    assert!(b.tokens <= budget);
    // an exact budget includes the step that reaches it
    let b = run(
        &config(
            &data,
            &dir.path().join("c"),
            &format!("{base}\ntoken_budget = {}", cum[4]),
        ),
        &RunOptions::default(),
    );
    assert_eq!((b.steps, b.tokens), (5, cum[4]));
    // a tiny wall-clock budget: one step, then stop and save
    let d = run(
        &config(
            &data,
            &dir.path().join("d"),
            &format!("{base}\nhours_to_complete = 1e-9"),
        ),
        &RunOptions::default(),
    );
    assert_eq!(d.stop_reason, StopReason::Deadline);
    assert_eq!(d.steps, 1);
    assert!(d.checkpoint_dir.ends_with("step-00000001"));
    // the stop flag (what SIGINT sets) is honoured before the first step
    let flag = Arc::new(AtomicBool::new(true));
    let s = run(
        &config(&data, &dir.path().join("s"), base),
        &RunOptions {
            stop: Some(flag),
            ..Default::default()
        },
    );
    assert_eq!((s.stop_reason, s.steps), (StopReason::Interrupted, 0));
    assert!(dir
        .path()
        .join("s/checkpoints/step-00000000/adapter")
        .is_dir());
}

#[test]
fn non_finite_loss_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let cfg = config(
        &data,
        &dir.path().join("o"),
        "skip_eval = true\nmax_steps = 2",
    );
    let (mcfg, mut w) = model();
    w.final_norm.data[0] = f32::NAN;
    let err = train_tiny(&cfg, &mcfg, &w, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("non-finite loss") && err.contains("step 1"),
        "{err}"
    );
    assert!(!dir.path().join("o/adapter").exists());
}

fn samples(n: usize) -> Vec<TokenizedSample> {
    let tok = LetterTok;
    (0..n)
        .map(|i| {
            let p = tok
                .encode(&format!("say {} twice ", common::ANIMALS[i % 10]))
                .unwrap();
            let c = tok
                .encode(&format!(
                    "{} {}.",
                    common::ANIMALS[(i * 3) % 10],
                    common::ANIMALS[i % 10]
                ))
                .unwrap();
            let mut ids = p.clone();
            ids.extend(&c);
            let mut labels = vec![-100; p.len()];
            labels.extend(c.iter().map(|&x| x as i32));
            TokenizedSample {
                row: i,
                input_ids: ids,
                labels,
            }
        })
        .collect()
}

#[test]
fn evaluation_is_deterministic_and_batch_independent() {
    let (mcfg, w) = model();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &mcfg, &w).unwrap();
    let s = samples(7);
    let lw = common::random_lora(&mcfg, &common::lora_config(4, 0.0), 3, 0.5);
    let lora = LoraState::upload(&be, &lw).unwrap();
    let a = evaluate(&mut m, Some(&lora), &s, 3).unwrap();
    let b = evaluate(&mut m, Some(&lora), &s, 3).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.samples, 7);
    let want_tokens: usize = s.iter().map(|x| x.num_labels()).sum();
    assert_eq!(a.tokens, want_tokens);
    let one = evaluate(&mut m, Some(&lora), &s, 1).unwrap();
    for (x, y) in a.per_sample_loss.iter().zip(&one.per_sample_loss) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    // the mean is token-weighted over the per-sample means
    let weighted: f64 = a
        .per_sample_loss
        .iter()
        .zip(&s)
        .map(|(l, x)| l * x.num_labels() as f64)
        .sum::<f64>()
        / want_tokens as f64;
    assert!((weighted - a.mean_loss).abs() < 1e-9);
    let base = evaluate(&mut m, None, &s, 3).unwrap();
    assert_ne!(base.mean_loss, a.mean_loss);
}
