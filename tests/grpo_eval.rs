//! GRPO evaluation on a tiny random Llama (built in code) with the letter tokenizer: the
//! mapping (TOML/JSON, errors naming the field or row), prompt rendering, `logits_from`
//! against `logits_last` and the naive f64 reference forward, greedy/seeded generation, the
//! KL(base‖tuned) estimator against an independent f64 computation, bit-identical results
//! for 1 and 3 threads and any prompt order, and SPEC §3's cross-submission normalisation
//! with hand-computed numbers.

mod common;

use std::path::Path;

use common::{lora_config, random_ids, random_lora, random_weights, reference_forward};
use common::{tiny_config, LetterTok};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{grpo_prompts, GrpoMapping, Mapping, Record, TextTokenizer};
use gradients_engine::eval::{evaluate_grpo, grpo_scores, GrpoEvalOptions, GrpoRaw};
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::{Arch, Batch, Llama, ModelConfig, ModelWeights, Sample, Sampling};
use gradients_engine::train::TrainConfig;

const TOML: &str = r#"
task_type = "grpo"
field_prompt = "q"
[[rewards]]
kind = "contains"
text = "a"
weight = 0.5
[[rewards]]
kind = "length"
target = 5
[[rewards]]
kind = "reference_match"
column = "answer"
weight = 2
"#;

fn mapping() -> GrpoMapping {
    match toml::from_str::<Mapping>(TOML).unwrap() {
        Mapping::Grpo(m) => m,
        other => panic!("not grpo: {other:?}"),
    }
}

fn records() -> Vec<Record> {
    let rows = serde_json::json!([
        {"q": "name a cat", "answer": "tom"},
        {"q": [{"role": "system", "content": "be brief"}, {"from": "human", "value": "hi"}],
         "answer": "x"},
        {"q": "say dog", "answer": "dog"},
        {"q": "spell it", "answer": "it"},
    ]);
    serde_json::from_value(rows).unwrap()
}

fn model() -> (ModelConfig, ModelWeights, LoraWeights) {
    let cfg = tiny_config(Arch::Llama, 2, false); // untied: flatter next-token distributions
    let w = random_weights(&cfg, 11);
    let lw = random_lora(&cfg, &lora_config(4, 0.0), 5, 0.3);
    (cfg, w, lw)
}

fn path() -> &'static Path {
    Path::new("q.json")
}

#[test]
fn mapping_files_parse_and_bad_ones_name_the_field() {
    let m = mapping();
    m.validate().unwrap();
    assert_eq!(m.rewards.len(), 3);
    assert_eq!(m.rewards[2].weight, 2.0);
    assert_eq!(m.rewards[1].weight, 1.0); // the default
    let json = serde_json::json!({"task_type": "grpo", "field_prompt": "q", "rewards": [
        {"kind": "contains", "text": "a", "weight": 0.5}, {"kind": "length", "target": 5},
        {"kind": "reference_match", "column": "answer", "weight": 2}]});
    assert_eq!(
        serde_json::from_value::<Mapping>(json).unwrap(),
        Mapping::Grpo(m)
    );
    let bad = |text: &str| -> String {
        match toml::from_str::<Mapping>(text) {
            Err(e) => e.to_string(),
            Ok(m) => m.validate().unwrap_err().to_string(),
        }
    };
    let e = bad(&TOML.replace("kind = \"length\"", "kind = \"python\""));
    assert!(e.contains("rewards[1].kind") && e.contains("python"), "{e}");
    let e = bad(&TOML.replace("target = 5", "target = 5\ncolour = 1"));
    assert!(e.contains("colour"), "{e}");
    let e = bad(&TOML.replace("weight = 2", "weight = -2"));
    assert!(e.contains("rewards[2].weight"), "{e}");
    let e = bad("task_type = \"grpo\"\nrewards = []\n");
    assert!(e.contains("rewards") && e.contains("1..=16"), "{e}");
    let e = bad(&TOML.replace("field_prompt = \"q\"", "field_prompt = \" \""));
    assert!(e.contains("field_prompt"), "{e}");
    // a training run takes a grpo mapping and a bounded `grpo` section
    let run = format!("model = \"m\"\ndataset = \"d\"\noutput_dir = \"o\"\n[mapping]\n{TOML}")
        .replace("[[rewards]]", "[[mapping.rewards]]");
    let cfg = TrainConfig::from_toml(&run, "run.toml").unwrap();
    assert!(matches!(cfg.mapping, Mapping::Grpo(_)) && cfg.grpo.is_none());
    let bad_run = format!("{run}\n[grpo]\nnum_generations = 1\n");
    let e = TrainConfig::from_toml(&bad_run, "run.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("grpo.num_generations"), "{e}");
}

#[test]
fn prompts_render_and_bad_rows_name_the_row() {
    let m = mapping();
    let recs = records();
    let ps = grpo_prompts(&LetterTok, &m, &recs, path()).unwrap();
    assert_eq!(ps.len(), 4);
    // no template on the tokenizer: ChatML with the generation prompt
    let want0 = "<|im_start|>user\nname a cat<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(ps[0].text, want0);
    assert_eq!(ps[0].ids, LetterTok.encode(want0).unwrap());
    assert_eq!(ps[0].references, vec![None, None, Some("tom".to_string())]);
    assert_eq!(
        ps[1].text,
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ps[3].row, 3);
    // plain-text prompts with a system column
    let mut plain = m.clone();
    plain.prompt_format = Some("{system}Q: {prompt} A:".into());
    plain.field_system = Some("sys".into());
    let rows: Vec<Record> = serde_json::from_value(
        serde_json::json!([{"q": "name a cat", "sys": "be kind. ", "answer": "tom"}]),
    )
    .unwrap();
    let p = grpo_prompts(&LetterTok, &plain, &rows, path()).unwrap();
    assert_eq!(p[0].text, "be kind. Q: name a cat A:");
    // errors name the row and the column; check_row (task intake) agrees
    let err = |rows: Vec<Record>, m: &GrpoMapping| -> String {
        let e = grpo_prompts(&LetterTok, m, &rows, path())
            .unwrap_err()
            .to_string();
        let c = rows
            .iter()
            .enumerate()
            .find_map(|(i, r)| m.check_row(r, path(), i + 1).err())
            .expect("check_row fails too")
            .to_string();
        assert_eq!(e, c);
        e
    };
    let mut r = records();
    r[1].remove("q");
    let e = err(r, &m);
    assert!(e.contains("row 2") && e.contains("`q`"), "{e}");
    let mut r = records();
    r[2].insert("answer".into(), serde_json::json!("  "));
    let e = err(r, &m);
    assert!(e.contains("row 3") && e.contains("`answer`"), "{e}");
    let mut r = records();
    r[0].insert(
        "q".into(),
        serde_json::json!([{"role": "robot", "content": "x"}]),
    );
    let e = err(r, &m);
    assert!(e.contains("row 1") && e.contains("robot"), "{e}");
    let e = err(records(), &plain);
    assert!(e.contains("row 1") && e.contains("`sys`"), "{e}");
    let mut no_sys = plain.clone();
    no_sys.field_system = None;
    let e = err(records(), &no_sys);
    assert!(e.contains("row 2") && e.contains("conversation"), "{e}");
}

#[test]
fn logits_from_matches_logits_last_and_the_reference() {
    let (cfg, w, lw) = model();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let ids = random_ids(9, cfg.vocab_size, 3);
    let v = cfg.vocab_size;
    let rows = m.logits_from(&ids, 3, Some(&lora)).unwrap();
    assert_eq!(rows.len(), 6 * v);
    let last = m.logits_last(&ids, Some(&lora)).unwrap();
    for (a, b) in rows[5 * v..].iter().zip(&last) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let labels = vec![-100i32; ids.len()];
    let s = Sample {
        input_ids: &ids,
        labels: &labels,
    };
    let batch = Batch::unpacked(&[s], ids.len(), v).unwrap();
    let (_, reference) = reference_forward(&cfg, &w, Some(&lw), &batch);
    for (r, row) in rows.chunks(v).enumerate() {
        for (a, b) in row.iter().zip(&reference[3 + r]) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
    }
    assert!(m.logits_from(&ids, 9, None).is_err());
}

#[test]
fn generation_is_greedy_or_seeded() {
    let (cfg, w, lw) = model();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let prompt = random_ids(6, cfg.vocab_size, 8);
    let greedy = m.greedy(&prompt, 12, Some(29), Some(&lora)).unwrap();
    let g = m
        .generate(
            &prompt,
            12,
            Some(29),
            Some(&lora),
            &Sampling::greedy(),
            [0, 0],
        )
        .unwrap();
    assert_eq!(g.ids, greedy);
    // top-k 1 at any temperature is greedy
    let k1 = Sampling {
        temperature: 1.5,
        top_k: 1,
        top_p: 1.0,
        seed: 9,
    };
    let k = m
        .generate(&prompt, 12, Some(29), Some(&lora), &k1, [4, 2])
        .unwrap();
    assert_eq!(k.ids, greedy);
    let s = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 5,
    };
    let mut gen = |s: &Sampling, key: [u64; 2]| {
        m.generate(&prompt, 12, Some(29), Some(&lora), s, key)
            .unwrap()
    };
    let a = gen(&s, [0, 0]);
    assert_eq!(a, gen(&s, [0, 0]));
    // other keys and seeds draw other completions (random weights: near-uniform logits)
    let others = [
        gen(&s, [0, 1]),
        gen(&s, [1, 0]),
        gen(&Sampling { seed: 6, ..s }, [0, 0]),
    ];
    assert!(others.iter().all(|o| *o != a), "{a:?} vs {others:?}");
    assert_ne!(a.ids, greedy);
}

/// KL(base‖tuned) of one prompt computed independently: the reference f64 forward of the
/// whole sequence with and without the adapter, exact KL at each completion position.
fn reference_kl(
    cfg: &ModelConfig,
    w: &ModelWeights,
    lw: &LoraWeights,
    seq: &[u32],
    start: usize,
) -> f64 {
    let labels = vec![-100i32; seq.len()];
    let s = Sample {
        input_ids: seq,
        labels: &labels,
    };
    let batch = Batch::unpacked(&[s], seq.len(), cfg.vocab_size).unwrap();
    let (_, tuned) = reference_forward(cfg, w, Some(lw), &batch);
    let (_, base) = reference_forward(cfg, w, None, &batch);
    let logp = |r: &[f64]| -> Vec<f64> {
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        r.iter().map(|x| x - lse).collect()
    };
    let positions = start..seq.len() - 1;
    let n = positions.len() as f64;
    positions
        .map(|t| {
            let (p, q) = (logp(&base[t]), logp(&tuned[t]));
            p.iter()
                .zip(&q)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
        })
        .sum::<f64>()
        / n
}

#[test]
fn evaluate_grpo_scores_rewards_and_the_kl() {
    let (cfg, w, lw) = model();
    let map = mapping();
    let ps = grpo_prompts(&LetterTok, &map, &records(), path()).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let opts = GrpoEvalOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let base = evaluate_grpo(&mut m, None, &LetterTok, &map, &ps, &opts).unwrap();
    assert_eq!(base.mean_kl, 0.0);
    assert!(base.per_prompt.iter().all(|p| p.kl == 0.0));
    let r = evaluate_grpo(&mut m, Some(&lora), &LetterTok, &map, &ps, &opts).unwrap();
    assert_eq!(r.prompts, 4);
    assert_eq!(r.reward_kinds, ["contains", "length", "reference_match"]);
    assert_eq!(r.weights, [0.5, 1.0, 2.0]);
    let rewards = map.rewards().unwrap();
    let mut positions = 0;
    for (p, pr) in ps.iter().zip(&r.per_prompt) {
        let c = m
            .generate(
                &p.ids,
                10,
                Some(29),
                Some(&lora),
                &Sampling::greedy(),
                [0, 0],
            )
            .unwrap();
        assert_eq!(pr.completion, LetterTok.decode(&c.ids).unwrap());
        assert_eq!((pr.completion_tokens, pr.ended), (c.ids.len(), c.ended));
        let want: Vec<f64> = rewards
            .iter()
            .zip(&p.references)
            .map(|(f, refv)| f.score(&pr.completion, refv.as_deref()))
            .collect();
        assert_eq!(pr.rewards, want);
        let mut seq: Vec<u32> = p.ids.iter().chain(&c.ids).copied().collect();
        if c.ended {
            seq.push(29);
        }
        positions += seq.len() - p.ids.len();
        let kl = reference_kl(&cfg, &w, &lw, &seq, p.ids.len() - 1);
        assert!(kl > 1e-4, "the adapter changes the distributions: {kl}");
        assert!((pr.kl - kl).abs() <= 1e-3 * kl, "{} vs {kl}", pr.kl);
    }
    assert_eq!(r.kl_positions, positions);
    for k in 0..3 {
        let mean = r.per_prompt.iter().map(|p| p.rewards[k]).sum::<f64>() / 4.0;
        assert_eq!(r.mean_rewards[k], mean);
    }
    let kl = r.per_prompt.iter().map(|p| p.kl).sum::<f64>() / 4.0;
    assert_eq!(r.mean_kl, kl);
    // the options are checked
    let bad = GrpoEvalOptions {
        max_new_tokens: 0,
        ..opts
    };
    let e = evaluate_grpo(&mut m, None, &LetterTok, &map, &ps, &bad).unwrap_err();
    assert!(e.to_string().contains("max_new_tokens"), "{e}");
}

#[test]
fn evaluation_is_bit_identical_across_threads_and_orders() {
    let (cfg, w, lw) = model();
    let map = mapping();
    let ps = grpo_prompts(&LetterTok, &map, &records(), path()).unwrap();
    let opts = GrpoEvalOptions {
        max_new_tokens: 8,
        sampling: Sampling {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.9,
            seed: 3,
        },
    };
    let go = |threads: usize, ps: &[gradients_engine::data::GrpoPrompt]| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let be = CpuBackend::<f32>::new();
            let mut m = Llama::new(be.clone(), &cfg, &w).unwrap();
            let lora = LoraState::upload(&be, &lw).unwrap();
            evaluate_grpo(&mut m, Some(&lora), &LetterTok, &map, ps, &opts).unwrap()
        })
    };
    let one = go(1, &ps);
    assert_eq!(one, go(3, &ps));
    // draws are keyed by the dataset row: a reversed prompt list gives the same completions
    let rev: Vec<_> = ps.iter().rev().cloned().collect();
    let r = go(2, &rev);
    let mut back = r.per_prompt.clone();
    back.reverse();
    assert_eq!(back, one.per_prompt);
}

#[test]
fn scores_normalise_across_submissions() {
    let raw = |r: &[f64], kl: f64| GrpoRaw {
        mean_rewards: r.to_vec(),
        kl,
    };
    // reward 0: 0.2, 0.6, 0.4 -> shifted 0, 0.4, 0.2 -> 0, 1, 0.5
    // reward 1: 0.5, 0.5, 0.9 -> shifted 0, 0, 0.4 -> 0, 0, 1
    let subs = [
        raw(&[0.2, 0.5], 0.1),
        raw(&[0.6, 0.5], 0.0),
        raw(&[0.4, 0.9], 0.2),
    ];
    let s = grpo_scores(&subs, &[1.0, 2.0]).unwrap();
    let want = [0.0 + 0.0 - 0.05, 1.0 + 0.0 - 0.0, 0.5 + 2.0 - 0.1];
    for (a, b) in s.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{s:?} vs {want:?}");
    }
    // all equal (and a single submission): no reward separates anyone, only the KL counts
    let s = grpo_scores(&[raw(&[0.3], 0.4), raw(&[0.3], 0.0)], &[1.0]).unwrap();
    assert_eq!(s, [-0.2, 0.0]);
    assert_eq!(grpo_scores(&[raw(&[0.7], 0.2)], &[3.0]).unwrap(), [-0.1]);
    // a non-finite result scores NaN and takes no part in the min/max
    let s = grpo_scores(
        &[raw(&[f64::NAN], 0.0), raw(&[0.2], 0.0), raw(&[0.6], 0.0)],
        &[1.0],
    )
    .unwrap();
    assert!(s[0].is_nan());
    assert_eq!(&s[1..], &[0.0, 1.0]);
    let s = grpo_scores(&[raw(&[0.2], f64::INFINITY), raw(&[0.6], 0.0)], &[1.0]).unwrap();
    assert!(s[0].is_nan() && s[1] == 0.0);
    // mismatched lengths and bad weights are errors
    assert!(grpo_scores(&[raw(&[0.2, 0.1], 0.0)], &[1.0]).is_err());
    assert!(grpo_scores(&[raw(&[0.2], 0.0)], &[-1.0]).is_err());
}
