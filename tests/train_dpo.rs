//! DPO on a tiny random Llama (built in code) with a letter tokenizer and an in-code
//! preference dataset: the DPO training gradient matches finite differences of the DPO loss
//! in f64, evaluation and gradients are bit-identical for 1 and 2 rayon threads, a DPO run
//! lowers the held-out DPO loss below the base model's ln 2, resumes bit for bit, counts
//! both sequences of a pair against the token budget, and names the row of a bad record;
//! plus the loss formula (stable log-sigmoid) and the pair layout (masking, truncation).

mod common;

use std::path::{Path, PathBuf};

use common::{
    lora_config, random_ids, random_lora, random_weights, tiny_config, tiny_run_config, unif,
};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{DpoMapping, DpoTokens, Mapping};
use gradients_engine::eval::dpo::{log_sigmoid, pair_logps, score_dpo, sigmoid};
use gradients_engine::eval::{dpo_samples, evaluate_dpo, DpoSample};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Arch, Llama, ModelConfig, ModelWeights, StepOptions};
use gradients_engine::train::dpo::{dpo_backward, DpoRun};
use gradients_engine::train::{RunOptions, StopReason, TrainConfig, TrainSummary};

use common::{train_tiny, LetterTok};

const WORDS: [&str; 8] = ["cat", "dog", "bird", "fish", "frog", "cow", "duck", "goat"];

/// 40 rows: "name the N" → chosen "N.", rejected another animal.
fn rows() -> Vec<serde_json::Value> {
    (0..40)
        .map(|i| {
            let w = WORDS[i % WORDS.len()];
            let other = WORDS[(i * 3 + 1) % WORDS.len()];
            let other = if other == w { "mole" } else { other };
            serde_json::json!({"prompt": format!("name the {w}"), "chosen": format!("{w}."),
                "rejected": format!("{other}.")})
        })
        .collect()
}

fn write(dir: &Path, rows: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("pairs.json");
    std::fs::write(&path, serde_json::to_string(rows).unwrap()).unwrap();
    path
}

fn model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(true, 7)
}

fn config(data: &Path, out: &Path, extra: &str) -> TrainConfig {
    let mapping = "task_type = \"dpo\"\nprompt_format = \"{prompt}: \"";
    let top = format!("seq_len = 48\n{extra}");
    tiny_run_config(data, out, &top, mapping, "[optimizer]\nlr = 0.01").unwrap()
}

fn run(cfg: &TrainConfig, opts: &RunOptions) -> TrainSummary {
    let (mcfg, w) = model();
    train_tiny(cfg, &mcfg, &w, opts).unwrap()
}

/// Three pairs of random ids (different lengths) for the low-level tests.
fn random_pairs(vocab: usize) -> Vec<DpoSample> {
    let t: Vec<DpoTokens> = [(4, 5, 3), (6, 2, 7), (3, 6, 6)]
        .iter()
        .enumerate()
        .map(|(i, &(p, c, r))| DpoTokens {
            row: i,
            prompt: random_ids(p, vocab, 10 * i as u64),
            chosen: random_ids(c, vocab, 10 * i as u64 + 1),
            rejected: random_ids(r, vocab, 10 * i as u64 + 2),
        })
        .collect();
    dpo_samples(&t, 32).unwrap().0
}

#[test]
fn dpo_gradient_matches_finite_differences_f64() {
    let cfg = tiny_config(Arch::Qwen2, 2, false);
    let w = random_weights(&cfg, 31);
    let lw = random_lora(&cfg, &lora_config(4, 0.0), 6, 0.3);
    let pairs = random_pairs(cfg.vocab_size);
    let beta = 0.5;
    let be = CpuBackend::<f64>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let reference = pair_logps(&mut m, None, &pairs).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut grads = lora.zeros_grads(&be).unwrap();
    let mut scratch = lora.zeros_grads(&be).unwrap();
    let refs: Vec<&DpoSample> = pairs.iter().collect();
    let opts = StepOptions::default();
    let st = dpo_backward(
        &mut m,
        &lora,
        &mut grads,
        &mut scratch,
        &refs,
        &reference,
        beta,
        &opts,
        false,
    )
    .unwrap();
    let mut loss_at = |lw: &LoraWeights| {
        let lora = LoraState::upload(&be, lw).unwrap();
        let policy = pair_logps(&mut m, Some(&lora), &pairs).unwrap();
        score_dpo(&pairs, &policy, &reference, beta)
            .unwrap()
            .mean_loss
    };
    assert!((loss_at(&lw) - st.loss).abs() < 1e-6);
    assert!(st.reward_accuracy > 0.0 || st.mean_margin.abs() > 1e-3);
    let g = grads.download(&be, &lw).unwrap();
    // Token losses come back as f32 (even from the f64 backend), so the loss carries ~1e-7
    // of rounding noise: steps of 4e-2 keep it ~1e-5 in the Richardson-extrapolated quotient.
    let h = 4e-2f32;
    let mut worst = 0.0f64;
    for (pi, p) in lw.pairs().iter().enumerate() {
        for which in 0..2u64 {
            let (len, gd) = if which == 0 {
                (p.a.len(), &g.pairs()[pi].a)
            } else {
                (p.b.len(), &g.pairs()[pi].b)
            };
            let dir: Vec<f32> = (0..len)
                .map(|i| unif(&[pi as u64, which, i as u64, 5]))
                .collect();
            let analytic: f64 = dir
                .iter()
                .zip(&gd.data)
                .map(|(&d, &g)| d as f64 * g as f64)
                .sum();
            let mut quotient = |step: f32| {
                let mut plus = lw.clone();
                let mut minus = lw.clone();
                let (tp, tm) = if which == 0 {
                    (&mut plus.pairs_mut()[pi].a, &mut minus.pairs_mut()[pi].a)
                } else {
                    (&mut plus.pairs_mut()[pi].b, &mut minus.pairs_mut()[pi].b)
                };
                for ((up, down), &d) in tp.data.iter_mut().zip(tm.data.iter_mut()).zip(&dir) {
                    *up += step * d;
                    *down -= step * d;
                }
                (loss_at(&plus) - loss_at(&minus)) / (2.0 * step as f64)
            };
            let fd = (4.0 * quotient(h / 2.0) - quotient(h)) / 3.0;
            let tol = 2e-3 * analytic.abs() + 5e-5;
            worst = worst.max((fd - analytic).abs() / tol);
            assert!(
                (fd - analytic).abs() <= tol,
                "layer {} {} {}: fd {fd:.8} vs analytic {analytic:.8}",
                p.layer,
                p.target.name(),
                if which == 0 { "A" } else { "B" }
            );
            assert!(
                analytic.abs() > 1e-3,
                "gradient too small to test: {analytic}"
            );
        }
    }
    eprintln!("dpo finite differences: worst err/tol {worst:.3}");
}

#[test]
fn dpo_eval_and_gradients_are_bit_identical_across_thread_counts() {
    let (cfg, w) = model();
    let lw = random_lora(&cfg, &lora_config(4, 0.1), 3, 0.5);
    let pairs = random_pairs(cfg.vocab_size);
    let go = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let be = CpuBackend::<f32>::new();
            let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
            let lora = LoraState::upload(&be, &lw).unwrap();
            let r = evaluate_dpo(&mut m, Some(&lora), &pairs, 0.1).unwrap();
            let reference = pair_logps(&mut m, None, &pairs).unwrap();
            let mut g = lora.zeros_grads(&be).unwrap();
            let mut s = lora.zeros_grads(&be).unwrap();
            let refs: Vec<&DpoSample> = pairs.iter().collect();
            let opts = StepOptions {
                seed: 3,
                step: 8,
                ..StepOptions::default()
            };
            let st = dpo_backward(
                &mut m, &lora, &mut g, &mut s, &refs, &reference, 0.1, &opts, false,
            )
            .unwrap();
            let grads: Vec<u32> = g
                .download(&be, &lw)
                .unwrap()
                .params()
                .iter()
                .flat_map(|t| t.data.iter().map(|x| x.to_bits()))
                .collect();
            (r, st.loss.to_bits(), grads)
        })
    };
    let one = go(1);
    assert_eq!(one, go(1), "two runs differ");
    assert_eq!(one, go(2), "1 and 2 threads differ");
    assert_eq!(one.0.pairs, 3);
    // the base model is its own reference: every loss is ln 2
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be, &cfg, &w).unwrap();
    let base = evaluate_dpo(&mut m, None, &pairs, 0.1).unwrap();
    assert!(base
        .per_pair_loss
        .iter()
        .all(|&l| l == std::f64::consts::LN_2));
    assert_ne!(one.0.mean_loss, base.mean_loss);
}

#[test]
fn dpo_training_lowers_the_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), &rows());
    let out = dir.path().join("out");
    let cfg = config(&data, &out, "micro_batch = 4\nepochs = 3\neval_every = 5");
    let s = run(&cfg, &RunOptions::default());
    assert_eq!(s.stop_reason, StopReason::Completed);
    let n = s.losses.len();
    assert_eq!(n, 27, "36 train pairs, 4 per step, 3 epochs");
    // B = 0 at init: the policy is the reference, z = 0
    assert!(
        (s.losses[0] - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        s.losses[0]
    );
    let last = (s.losses[n - 1] + s.losses[n - 2]) / 2.0;
    assert!(
        last < 0.5 * s.losses[0],
        "train loss {} -> {last}",
        s.losses[0]
    );
    let (base, fin) = (s.base_test_loss.unwrap(), s.final_test_loss.unwrap());
    assert_eq!(base, std::f64::consts::LN_2);
    assert!(fin < 0.5 * base, "held-out DPO loss {base} -> {fin}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        n
    );
    assert_eq!(
        metrics.lines().filter(|l| l.contains("test_loss")).count(),
        7
    );
    // the saved adapter, loaded fresh, scores the held-out pairs bit for bit
    let (mcfg, w) = model();
    let lw = LoraWeights::load(&s.adapter_dir, &mcfg).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &mcfg, &w).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let Mapping::Dpo(map) = &cfg.mapping else {
        panic!("dpo mapping")
    };
    let d = DpoRun::prepare(&cfg, map, &LetterTok).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (36, 4));
    let r = evaluate_dpo(&mut m, Some(&lora), &d.test, 0.1).unwrap();
    assert_eq!(r.mean_loss, fin);
    assert_eq!(r.reward_accuracy, 1.0);
}

#[test]
fn dpo_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), &rows());
    let extra = "micro_batch = 2\ngrad_accum = 2\nmax_steps = 5\nsave_every = 2\nskip_eval = true";
    let cfg_at = |out: &Path| {
        let mut c = config(&data, out, extra);
        c.lora.dropout = 0.1;
        c
    };
    let full_out = dir.path().join("full");
    let full = run(&cfg_at(&full_out), &RunOptions::default());
    assert_eq!(full.losses.len(), 5);
    let part_out = dir.path().join("part");
    let first = run(
        &cfg_at(&part_out),
        &RunOptions {
            stop_after_steps: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(
        (first.stop_reason, first.steps),
        (StopReason::Interrupted, 3)
    );
    let rest = run(&cfg_at(&part_out), &RunOptions::default());
    assert_eq!((rest.resumed_from, rest.steps), (3, 5));
    let joined: Vec<f64> = first.losses.iter().chain(&rest.losses).copied().collect();
    assert_eq!(joined, full.losses);
    let bytes = |o: &Path| std::fs::read(o.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(bytes(&full_out), bytes(&part_out));
    assert_eq!(rest.tokens, full.tokens);
    // a changed β is refused on resume
    let mut other = cfg_at(&part_out);
    other.dpo_beta = 0.2;
    let (mcfg, w) = model();
    let err = train_tiny(&other, &mcfg, &w, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("different"), "{err}");
}

#[test]
fn token_budget_counts_both_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows();
    let data = write(dir.path(), &rows);
    let base = "micro_batch = 2\nskip_eval = true";
    let cfg = config(&data, &dir.path().join("a"), base);
    let Mapping::Dpo(map) = &cfg.mapping else {
        panic!("dpo mapping")
    };
    let d = DpoRun::prepare(&cfg, map, &LetterTok).unwrap();
    let (plan, _) = d.plan(&cfg).unwrap();
    let text_len = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap().len() as u64;
    for sp in &plan {
        // each sequence: "{prompt}: " then the completion and eos
        let want: u64 = sp
            .micro
            .iter()
            .flatten()
            .flatten()
            .map(|&i| {
                let r = &rows[d.train[i].row];
                2 * (text_len(r, "prompt") + 2)
                    + text_len(r, "chosen")
                    + text_len(r, "rejected")
                    + 2
            })
            .sum();
        assert_eq!(sp.tokens, want);
    }
    let cum: Vec<u64> = plan
        .iter()
        .scan(0, |a, sp| {
            *a += sp.tokens;
            Some(*a)
        })
        .collect();
    let b = run(
        &config(
            &data,
            &dir.path().join("b"),
            &format!("{base}\ntoken_budget = {}", cum[2] - 1),
        ),
        &RunOptions::default(),
    );
    assert_eq!(
        (b.stop_reason, b.steps, b.tokens),
        (StopReason::TokenBudget, 2, cum[1])
    );
}

#[test]
fn bad_dpo_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = rows();
    rows[2].as_object_mut().unwrap().remove("chosen");
    let data = write(dir.path(), &rows);
    let cfg = config(&data, &dir.path().join("o"), "");
    let (mcfg, w) = model();
    let err = train_tiny(&cfg, &mcfg, &w, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("row 3") && err.contains("`chosen`") && err.contains("pairs.json"),
        "{err}"
    );
    let bad_beta = "dpo_beta = 0.0\nmodel = \"m\"\ndataset = \"d\"\noutput_dir = \"o\"\n[mapping]\ntask_type = \"dpo\"\n";
    let err = TrainConfig::from_toml(bad_beta, "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dpo_beta"), "{err}");
    let m = DpoMapping {
        field_chosen: " ".into(),
        ..Default::default()
    };
    assert!(m
        .validate()
        .unwrap_err()
        .to_string()
        .contains("field_chosen"));
}

// ---- the loss formula and the pair layout (eval/dpo.rs) ----

#[test]
fn log_sigmoid_is_stable_and_exact() {
    for x in [-800.0, -30.0, -1.0, 0.0, 0.5, 30.0, 800.0] {
        let l = log_sigmoid(x);
        assert!(l.is_finite() && l <= 0.0, "{x}: {l}");
        let naive = (1.0 / (1.0 + (-x).exp())).ln();
        if x.abs() < 30.0 {
            assert!((l - naive).abs() < 1e-15, "{x}: {l} vs {naive}");
        }
    }
    assert_eq!(log_sigmoid(0.0), -std::f64::consts::LN_2);
    assert_eq!(log_sigmoid(-800.0), -800.0);
    assert_eq!(log_sigmoid(800.0), 0.0);
    assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
    assert_eq!(sigmoid(-800.0), 0.0);
}

fn toks(row: usize, p: usize, c: usize, r: usize) -> DpoTokens {
    DpoTokens {
        row,
        prompt: (0..p as u32).collect(),
        chosen: (10..10 + c as u32).collect(),
        rejected: (20..20 + r as u32).collect(),
    }
}

#[test]
fn samples_mask_the_prompt_and_truncate_the_tail() {
    let (s, dropped) = dpo_samples(&[toks(3, 2, 3, 1)], 4).unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(s[0].row, 3);
    assert_eq!(s[0].chosen.input_ids, vec![0, 1, 10, 11]);
    assert_eq!(s[0].chosen.labels, vec![-100, -100, 10, 11]);
    assert_eq!(s[0].rejected.input_ids, vec![0, 1, 20]);
    assert_eq!((s[0].tokens(), s[0].targets()), (7, 3));
    // a prompt filling seq_len leaves no completion token: dropped; an empty prompt
    // leaves the first completion token without a predecessor
    let (s, dropped) =
        dpo_samples(&[toks(0, 4, 2, 2), toks(1, 0, 1, 2), toks(2, 0, 2, 2)], 4).unwrap();
    assert_eq!(dropped, 2);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].targets(), 2);
    assert!(dpo_samples(&[], 1).is_err());
}

#[test]
fn scores_follow_the_formula() {
    let pairs = dpo_samples(&[toks(0, 2, 2, 2), toks(1, 2, 2, 2)], 8)
        .unwrap()
        .0;
    let policy = [[-3.0, -5.0], [-4.0, -1.0]];
    let reference = [[-3.5, -4.0], [-4.0, -2.0]];
    let r = score_dpo(&pairs, &policy, &reference, 0.1).unwrap();
    let z0 = 0.1 * ((-3.0 + 3.5) - (-5.0 + 4.0));
    let z1 = 0.1 * (0.0 - (-1.0 + 2.0));
    assert!((r.per_pair_margin[0] - z0).abs() < 1e-15);
    assert!((r.per_pair_margin[1] - z1).abs() < 1e-15);
    let l0 = (1.0 + (-z0).exp()).ln();
    assert!((r.per_pair_loss[0] - l0).abs() < 1e-15);
    assert_eq!(r.reward_accuracy, 0.5);
    assert_eq!(r.pairs, 2);
    assert_eq!(r.rows, vec![0, 1]);
    assert!((r.mean_loss - (r.per_pair_loss[0] + r.per_pair_loss[1]) / 2.0).abs() < 1e-15);
    assert!(score_dpo(&pairs, &policy, &reference, 0.0).is_err());
    assert!(score_dpo(&pairs, &policy[..1], &reference, 0.1).is_err());
    assert!(score_dpo(&[], &[], &[], 0.1).is_err());
    let e = r.as_eval_result();
    assert_eq!((e.samples, e.per_sample_loss), (2, r.per_pair_loss.clone()));
}
