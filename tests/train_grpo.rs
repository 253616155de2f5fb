//! GRPO training on a tiny random Llama (built in code) with the letter tokenizer: group
//! advantages with hand-computed numbers, the step's gradient against finite differences of
//! its loss in f64, a run that raises the sampled mean reward of "contains the letter x",
//! bit-identical adapters for 1 and 2 threads, a bit-exact resume, the token budget counting
//! every sample at its maximum length, and the example config parsing.

mod common;

use std::path::{Path, PathBuf};

use common::{lora_config, random_ids, random_lora, random_weights, tiny_config, tiny_run_config};
use common::{train_tiny, LetterTok};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{grpo_prompts, read_records, GrpoMapping, Mapping};
use gradients_engine::eval::{evaluate_grpo, GrpoEvalOptions};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Arch, Llama, ModelConfig, ModelWeights, Sampling, StepOptions};
use gradients_engine::train::grpo::{group_advantages, grpo_backward, GrpoRun, GrpoSequence};
use gradients_engine::train::{RunOptions, StopReason, TrainConfig, TrainSummary};

const WORDS: [&str; 6] = ["cat", "dog", "bird", "fish", "frog", "cow"];

fn write_rows(dir: &Path) -> PathBuf {
    let rows: Vec<serde_json::Value> = (0..24)
        .map(|i| serde_json::json!({"prompt": format!("say {}", WORDS[i % WORDS.len()])}))
        .collect();
    let path = dir.join("prompts.json");
    std::fs::write(&path, serde_json::to_string(&rows).unwrap()).unwrap();
    path
}

fn model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(false, 21)
}

fn config(data: &Path, out: &Path, extra: &str) -> TrainConfig {
    let mapping = r#"task_type = "grpo"
prompt_format = "{prompt}: "
[[mapping.rewards]]
kind = "contains"
text = "x""#;
    let rest = "[optimizer]\nlr = 0.03\n[grpo]\nnum_generations = 8\nmax_new_tokens = 6";
    let top = format!("seq_len = 24\nmicro_batch = 4\n{extra}");
    tiny_run_config(data, out, &top, mapping, rest).unwrap()
}

fn run(cfg: &TrainConfig) -> TrainSummary {
    let (mcfg, w) = model();
    train_tiny(cfg, &mcfg, &w, &RunOptions::default()).unwrap()
}

#[test]
fn advantages_are_group_normalised() {
    // mean 0.5, sample variance (4 · 0.25)/3 = 1/3
    let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], true);
    let d = (1.0f64 / 3.0).sqrt() + 1e-4;
    assert_eq!(a, [0.5 / d, -0.5 / d, -0.5 / d, 0.5 / d]);
    assert_eq!(
        group_advantages(&[1.0, 0.0, 0.0, 1.0], false),
        [0.5, -0.5, -0.5, 0.5]
    );
    assert_eq!(group_advantages(&[0.3, 0.3, 0.3], true), [0.0, 0.0, 0.0]);
}

#[test]
fn grpo_gradient_matches_finite_differences_f64() {
    let cfg = tiny_config(Arch::Qwen2, 2, false);
    let w = random_weights(&cfg, 31);
    let lw = random_lora(&cfg, &lora_config(4, 0.0), 6, 0.3);
    let v = cfg.vocab_size;
    let seqs: Vec<GrpoSequence> = [(4, 5, 0.8), (4, 3, -1.1), (6, 2, 0.0), (3, 4, 0.4)]
        .iter()
        .enumerate()
        .map(|(i, &(p, c, a))| GrpoSequence {
            prompt_len: p,
            ids: random_ids(p + c, v, 40 + i as u64),
            advantage: a,
        })
        .collect();
    let be = CpuBackend::<f64>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let mut grads = lora.zeros_grads(&be).unwrap();
    let (loss, targets) =
        grpo_backward(&mut m, &lora, &mut grads, &seqs, &StepOptions::default()).unwrap();
    assert_eq!(targets, 5 + 3 + 4); // the A = 0 sequence is skipped
                                    // L = (1/N) Σ A_i · NLL_i/|y_i| from the engine's own per-token losses
    let mut loss_at = |lw: &LoraWeights| -> f64 {
        let lora = LoraState::upload(&be, lw).unwrap();
        seqs.iter()
            .map(|s| {
                let len = s.ids.len() - s.prompt_len;
                let labels: Vec<i32> = s
                    .ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| if t < s.prompt_len { -100 } else { id as i32 })
                    .collect();
                let sample = gradients_engine::model::Sample {
                    input_ids: &s.ids,
                    labels: &labels,
                };
                let b =
                    gradients_engine::model::Batch::unpacked(&[sample], s.ids.len(), v).unwrap();
                let nll: f64 = m
                    .forward_loss(&b, Some(&lora))
                    .unwrap()
                    .iter()
                    .map(|&l| l as f64)
                    .sum();
                s.advantage * nll / len as f64
            })
            .sum::<f64>()
            / seqs.len() as f64
    };
    assert!((loss_at(&lw) - loss).abs() < 1e-6, "{loss}");
    let g = grads.download(&be, &lw).unwrap();
    let h = 4e-2f32;
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (pi, p) in lw.pairs().iter().enumerate() {
        for which in 0..2 {
            let (len, gd) = if which == 0 {
                (p.a.len(), &g.pairs()[pi].a)
            } else {
                (p.b.len(), &g.pairs()[pi].b)
            };
            for e in (0..len).step_by(len / 3 + 1) {
                let mut at = |d: f32| {
                    let mut x = lw.clone();
                    let t = &mut x.pairs_mut()[pi];
                    if which == 0 {
                        t.a.data[e] += d;
                    } else {
                        t.b.data[e] += d;
                    }
                    loss_at(&x)
                };
                // Richardson-extrapolated central difference
                let d1 = (at(h) - at(-h)) / (2.0 * h as f64);
                let d2 = (at(h / 2.0) - at(-h / 2.0)) / h as f64;
                let fd = (4.0 * d2 - d1) / 3.0;
                let got = gd.data[e] as f64;
                worst = worst.max((fd - got).abs() / (1e-3 + fd.abs().max(got.abs())));
                checked += 1;
            }
        }
    }
    assert!(checked > 50);
    assert!(worst < 1e-2, "worst relative error {worst}");
}

/// Mean reward of sampled completions (T = 1, 4 seeds) of the train prompts, base + `lw`.
fn sampled_reward(cfg: &TrainConfig, lw: Option<&LoraWeights>) -> f64 {
    let (mcfg, w) = model();
    let Mapping::Grpo(map) = &cfg.mapping else {
        panic!("grpo mapping")
    };
    let map: &GrpoMapping = map;
    let recs = read_records(&cfg.dataset).unwrap();
    let ps = grpo_prompts(&LetterTok, map, &recs, &cfg.dataset).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &mcfg, &w).unwrap();
    let lora = lw.map(|l| LoraState::upload(&be, l).unwrap());
    let mut total = 0.0;
    for seed in 0..4 {
        let opts = GrpoEvalOptions {
            max_new_tokens: 6,
            sampling: Sampling {
                temperature: 1.0,
                seed: 100 + seed,
                ..Sampling::default()
            },
        };
        let r = evaluate_grpo(&mut m, lora.as_ref(), &LetterTok, map, &ps, &opts).unwrap();
        total += r.mean_rewards[0];
    }
    total / 4.0
}

#[test]
fn training_raises_the_mean_reward() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_rows(dir.path());
    let cfg = config(
        &data,
        &dir.path().join("run"),
        "max_steps = 8\nskip_eval = true",
    );
    let s = run(&cfg);
    assert_eq!(s.steps, 8);
    assert_eq!(s.stop_reason, StopReason::MaxSteps);
    let (mcfg, _) = model();
    let lw = LoraWeights::load(&s.adapter_dir, &mcfg).unwrap();
    let before = sampled_reward(&cfg, None);
    let after = sampled_reward(&cfg, Some(&lw));
    eprintln!("mean reward of 'contains x' (sampled, T = 1): {before:.3} -> {after:.3}");
    assert!(after > before + 0.1, "{before} -> {after}");
    // metrics.jsonl records each step's mean reward (of "contains x": in [0, 1])
    let metrics = std::fs::read_to_string(cfg.output_dir.join("metrics.jsonl")).unwrap();
    let rewards: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["mean_reward"].as_f64())
        .collect();
    assert_eq!(rewards.len(), 8);
    assert!(
        rewards.iter().all(|r| (0.0..=1.0).contains(r)),
        "{rewards:?}"
    );
}

#[test]
fn runs_are_bit_identical_across_threads_and_budgets_count_max_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_rows(dir.path());
    let go = |threads: usize, name: &str| {
        let cfg = config(&data, &dir.path().join(name), "max_steps = 2");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let s = pool.install(|| run(&cfg));
        let bytes = std::fs::read(s.adapter_dir.join("adapter_model.safetensors")).unwrap();
        (s, bytes)
    };
    let (a, wa) = go(1, "t1");
    let (b, wb) = go(2, "t2");
    assert_eq!(a.losses, b.losses);
    assert_eq!(wa, wb);
    assert_eq!(a.base_test_loss, b.base_test_loss);
    assert_eq!(a.final_test_loss, b.final_test_loss);
    // the base model's test "loss" is its negated reward (KL 0): in [-1, 0]
    let base = a.base_test_loss.unwrap();
    assert!((-1.0..=0.0).contains(&base), "{base}");

    // every sample counts prompt + max_new_tokens, 8 samples per prompt
    let cfg = config(&data, &dir.path().join("b"), "skip_eval = true");
    let Mapping::Grpo(map) = &cfg.mapping else {
        panic!("grpo mapping")
    };
    let g = GrpoRun::prepare(&cfg, map, &LetterTok).unwrap();
    let (plan, _) = g.plan(&cfg).unwrap();
    for sp in &plan {
        let want: u64 = sp
            .micro
            .iter()
            .flatten()
            .flatten()
            .map(|&i| 8 * (g.train[i].ids.len() as u64 + 6))
            .sum();
        assert_eq!(sp.tokens, want);
    }
    let budget = plan[0].tokens + plan[1].tokens + 1;
    let cfg = config(
        &data,
        &dir.path().join("c"),
        &format!("skip_eval = true\ntoken_budget = {budget}"),
    );
    let s = run(&cfg);
    assert_eq!((s.steps, s.stop_reason), (2, StopReason::TokenBudget));
    assert!(s.tokens <= budget);
}

#[test]
fn resume_is_bit_exact_and_the_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_rows(dir.path());
    let adapter =
        |s: &TrainSummary| std::fs::read(s.adapter_dir.join("adapter_model.safetensors")).unwrap();
    let straight = run(&config(
        &data,
        &dir.path().join("a"),
        "max_steps = 3\nskip_eval = true",
    ));
    let cfg = config(
        &data,
        &dir.path().join("b"),
        "max_steps = 3\nskip_eval = true",
    );
    let (mcfg, w) = model();
    let stop = RunOptions {
        stop_after_steps: Some(2),
        ..RunOptions::default()
    };
    let first = train_tiny(&cfg, &mcfg, &w, &stop).unwrap();
    assert_eq!(
        (first.steps, first.stop_reason),
        (2, StopReason::Interrupted)
    );
    let resumed = run(&cfg);
    assert_eq!((resumed.resumed_from, resumed.steps), (2, 3));
    assert_eq!(resumed.losses, straight.losses[2..]);
    assert_eq!(adapter(&resumed), adapter(&straight));

    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpo-smollm2.toml");
    let cfg = TrainConfig::from_file(&ex).unwrap();
    assert!(matches!(cfg.mapping, Mapping::Grpo(_)));
    assert_eq!(cfg.grpo.unwrap().num_generations, 4);
}
