//! What a training run leaves beside its adapter, on a tiny random Llama (built in code) with
//! a letter tokenizer: `keep_best` keeps `best/` (the adapter of the lowest test loss, whose
//! re-evaluation gives exactly the recorded loss, the same after an interrupted and resumed
//! run) and is refused without periodic evaluation; `loss.svg` is drawn from metrics.jsonl.

mod common;

use std::path::{Path, PathBuf};

use common::{tiny_run_config, INSTRUCT_MAPPING};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::eval::evaluate;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Llama, ModelConfig, ModelWeights};
use gradients_engine::train::checkpoint::BestRecord;
use gradients_engine::train::plan::prepare_data;
use gradients_engine::train::{RunOptions, TrainConfig, TrainSummary};
use gradients_engine::Result;

use common::{train_tiny, LetterTok};

/// 40 rows: "say N twice" → N twice, for eight animal names.
fn write_dataset(dir: &Path) -> PathBuf {
    common::write_animal_dataset(dir, 8, 40)
}

fn model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(true, 7)
}

/// A run over `data` into `out`; `extra` is TOML at the top level. A learning rate so high
/// that the test loss does not fall steadily (the best is not the last).
fn config(data: &Path, out: &Path, extra: &str) -> Result<TrainConfig> {
    let top = format!("seq_len = 48\nmicro_batch = 2\n{extra}");
    tiny_run_config(data, out, &top, INSTRUCT_MAPPING, "[optimizer]\nlr = 0.5")
}

fn run(cfg: &TrainConfig, opts: &RunOptions) -> TrainSummary {
    let (mcfg, w) = model();
    train_tiny(cfg, &mcfg, &w, opts).unwrap()
}

/// `(step, test_loss)` of every adapter evaluation in `out/metrics.jsonl`.
fn test_losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v.get("test_loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn keep_best_needs_periodic_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let out = dir.path().join("o");
    for extra in [
        "keep_best = true",
        "keep_best = true\neval_every = 2\nskip_eval = true",
    ] {
        let err = config(&data, &out, extra).unwrap_err().to_string();
        assert!(
            err.contains("keep_best") && err.contains("eval_every"),
            "{err}"
        );
    }
    assert!(config(&data, &out, "keep_best = true\neval_every = 2").is_ok());
}

#[test]
fn keep_best_keeps_the_lowest_test_loss_adapter_and_survives_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let extra = "keep_best = true\neval_every = 1\nmax_steps = 7\neval_samples = 4";
    let out = dir.path().join("full");
    let cfg = config(&data, &out, extra).unwrap();
    let s = run(&cfg, &RunOptions::default());

    // best.json is the minimum of the evaluations (earliest on a tie)
    let evals = test_losses(&out);
    assert_eq!(evals.len(), 7, "{evals:?}");
    let (step, loss) = evals
        .iter()
        .copied()
        .fold(None::<(u64, f64)>, |b, e| match b {
            Some(b) if b.1 <= e.1 => Some(b),
            _ => Some(e),
        })
        .unwrap();
    // (serde_json's float parsing may miss the last bit: compare parsed values loosely)
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    let best = s.best.clone().expect("a best adapter");
    assert!(
        best.step == step && close(loss, best.test_loss),
        "{best:?} vs {evals:?}"
    );
    let text = std::fs::read_to_string(out.join("best/best.json")).unwrap();
    let rec: BestRecord = serde_json::from_str(&text).unwrap();
    assert!(
        rec.step == step && close(rec.test_loss, best.test_loss),
        "{rec:?}"
    );
    assert!(
        step < 7,
        "the test loss should not fall steadily at this learning rate: {evals:?}"
    );
    let loss = best.test_loss;

    // the kept adapter re-scores to exactly its recorded loss; the final one does not
    let (mcfg, w) = model();
    let (_, test) = prepare_data(&cfg, &LetterTok).unwrap();
    let test = &test[..4];
    let be = CpuBackend::<f32>::new();
    let mut llama = Llama::new(be.clone(), &mcfg, &w).unwrap();
    let score = |dir: &Path, llama: &mut Llama<CpuBackend<f32>>| {
        let lw = LoraWeights::load(dir, &mcfg).unwrap();
        let st = LoraState::upload(&be, &lw).unwrap();
        evaluate(llama, Some(&st), test, cfg.eval_batch)
            .unwrap()
            .mean_loss
    };
    assert_eq!(
        score(&out.join("best"), &mut llama).to_bits(),
        loss.to_bits()
    );
    let fin = score(&out.join("adapter"), &mut llama);
    assert_eq!(fin.to_bits(), s.final_test_loss.unwrap().to_bits());
    assert!(fin > loss);

    // interrupted (a best is kept by then) and resumed: the same best, byte for byte
    let part = dir.path().join("part");
    let cfg2 = config(&data, &part, extra).unwrap();
    let stop = RunOptions {
        stop_after_steps: Some(4),
        ..Default::default()
    };
    run(&cfg2, &stop);
    let rest = run(&cfg2, &RunOptions::default());
    assert_eq!(rest.resumed_from, 4);
    let b2 = rest.best.expect("best after the resume");
    assert!(b2.step == step && close(b2.test_loss, loss), "{b2:?}");
    for f in [
        "best.json",
        "adapter_model.safetensors",
        "adapter_config.json",
    ] {
        let a = std::fs::read(out.join("best").join(f)).unwrap();
        let b = std::fs::read(part.join("best").join(f)).unwrap();
        assert!(a == b, "best/{f} differs after a resume");
    }
    // a fresh run into the same directory drops the old best before it finds its own
    let again = run(
        &cfg2,
        &RunOptions {
            fresh: true,
            stop_after_steps: Some(0),
            ..Default::default()
        },
    );
    assert!(again.best.is_some() && again.best.as_ref().unwrap().step == 0);
}

#[test]
fn loss_svg_is_drawn_beside_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path());
    let out = dir.path().join("o");
    let cfg = config(
        &data,
        &out,
        "eval_every = 2\nmax_steps = 5\neval_samples = 2",
    )
    .unwrap();
    let s = run(&cfg, &RunOptions::default());
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    // the train line (blue; axes are black) has one vertex per step
    let line = svg
        .lines()
        .find(|l| l.contains("<polyline") && l.contains("stroke=\"#0000FF\""))
        .unwrap();
    let pts = &line[line.find("points=\"").unwrap() + 8..];
    let pts = &pts[..pts.find('"').unwrap()];
    assert_eq!(pts.split_whitespace().count(), s.steps as usize, "{pts}");
}

/// The measured effect of packing on the demo config (examples/alpaca-smollm2.toml, real
/// tokenizer and data): steps, tokens per step and the padded fraction of the computed
/// positions, packing on and off. Machine-independent numbers for BENCHMARKS.md:
/// `cargo test --test train_outputs packing_effect -- --ignored --nocapture`.
#[test]
#[ignore = "measurement on the real assets; prints a table"]
fn packing_effect_on_the_demo_config() {
    use gradients_engine::train::plan::{micro_batch, plan_steps};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/alpaca-smollm2.toml");
    let mut cfg = TrainConfig::from_file(&path).unwrap();
    let model = gradients_engine::train::config::resolve_asset(&cfg.model).unwrap();
    let m = gradients_engine::model::load::load_model(&model).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    println!("| packing | steps | sample tokens | tokens/step | computed positions | padding |");
    println!("|---|---|---|---|---|---|");
    for packing in [true, false] {
        cfg.packing = packing;
        let (train, _) = prepare_data(&cfg, tok).unwrap();
        let (plan, _) = plan_steps(&train, &cfg).unwrap();
        let (mut tokens, mut slots) = (0u64, 0u64);
        for sp in &plan {
            tokens += sp.tokens;
            for rows in &sp.micro {
                let b = micro_batch(&train, rows, &cfg, m.config.vocab_size).unwrap();
                slots += b.input_ids.len() as u64;
            }
        }
        println!(
            "| {packing} | {} | {tokens} | {:.0} | {slots} | {:.1}% |",
            plan.len(),
            tokens as f64 / plan.len() as f64,
            100.0 * (1.0 - tokens as f64 / slots as f64)
        );
    }
}
