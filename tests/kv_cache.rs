//! KV-cached decoding (model/decode.rs, model/generate.rs) against the full forward per token
//! (`logits_last`, the reference path) on tiny random models with and without LoRA (Llama
//! tied and untied, Qwen2 with attention biases; GQA 2:1): completions equal token for token,
//! greedy and seeded (top-k/top-p), with ends at the end token and at the context; per-step
//! logits agree within 2e-5 (the GEMMs see other row counts, so the last bits differ);
//! batching the samples of a prompt changes no completion; 1 and 2 threads give the same bits;
//! bad calls are errors. On the real SmolLM2 (skipped, printing why, without the asset) the
//! cached greedy and sampled completions equal the full-forward ones.

mod common;

use common::{lora_config, random_ids, random_lora, random_weights, tiny_config};
use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::lora::{LoraConfig, LoraState, Target};
use gradients_engine::model::generate::{pick, uniform};
use gradients_engine::model::load::load_model;
use gradients_engine::model::{Arch, Completion, Llama, Sampling};
use gradients_engine::tokenizer::ChatMessage;

type Cpu = CpuBackend<f32>;

/// The full-forward reference of `generate`: one `logits_last` over the whole sequence per
/// new token, the same draws.
fn reference(
    m: &mut Llama<Cpu>,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    lora: Option<&LoraState<Cpu>>,
    s: &Sampling,
    key: [u64; 2],
) -> Completion {
    let mut ids = prompt.to_vec();
    let max_pos = m.config().max_position_embeddings;
    while ids.len() - prompt.len() < max_new && ids.len() < max_pos {
        let logits = m.logits_last(&ids, lora).unwrap();
        let u = uniform(s.seed, key[0], key[1], (ids.len() - prompt.len()) as u64);
        let next = pick(&logits, s, u);
        if Some(next) == eos {
            return Completion {
                ids: ids.split_off(prompt.len()),
                ended: true,
            };
        }
        ids.push(next);
    }
    Completion {
        ids: ids.split_off(prompt.len()),
        ended: false,
    }
}

/// A test model: name, model, adapter.
type Case = (&'static str, Llama<Cpu>, Option<LoraState<Cpu>>);

/// The test models.
fn models() -> Vec<Case> {
    let be = Cpu::new();
    let mut out = Vec::new();
    for (name, arch, tied, lcfg) in [
        ("llama tied, base", Arch::Llama, true, None),
        (
            "llama untied, lora",
            Arch::Llama,
            false,
            Some(lora_config(4, 0.1)),
        ),
        (
            "qwen2, lora on k/o/up",
            Arch::Qwen2,
            false,
            Some(LoraConfig {
                targets: vec![Target::K, Target::O, Target::Up],
                ..lora_config(2, 0.0)
            }),
        ),
    ] {
        let cfg = tiny_config(arch, 2, tied);
        let w = random_weights(&cfg, 17);
        let lora = lcfg.map(|l| LoraState::upload(&be, &random_lora(&cfg, &l, 4, 0.3)).unwrap());
        out.push((name, Llama::new(be.clone(), &cfg, &w).unwrap(), lora));
    }
    out
}

fn samplings() -> [Sampling; 3] {
    [
        Sampling::greedy(),
        Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
        },
        Sampling {
            temperature: 0.7,
            top_k: 10,
            top_p: 0.9,
            seed: 8,
        },
    ]
}

#[test]
fn cached_completions_equal_the_full_forward() {
    let keys = [[3u64, 0], [3, 1], [3, 2], [5, 0]];
    let mut ended = 0;
    for (name, mut m, lora) in models() {
        let lora = lora.as_ref();
        for s in samplings() {
            // (prompt length, max_new): the context (128) cuts the second case at 5 new tokens
            for (plen, max_new) in [(7usize, 20usize), (123, 9)] {
                let prompt = random_ids(plen, 50, plen as u64);
                // an end token the first sample meets at its 5th token
                let free = reference(&mut m, &prompt, max_new, None, lora, &s, keys[0]);
                let eos = free.ids.get(4).copied();
                let many = m
                    .generate_many(&prompt, max_new, eos, lora, &s, &keys)
                    .unwrap();
                for (key, got) in keys.iter().zip(&many) {
                    let want = reference(&mut m, &prompt, max_new, eos, lora, &s, *key);
                    assert_eq!(got, &want, "{name}, {s:?}, prompt {plen}, key {key:?}");
                    let alone = m.generate(&prompt, max_new, eos, lora, &s, *key).unwrap();
                    assert_eq!(&alone, got, "{name}: batched vs alone, key {key:?}");
                    let cap = max_new.min(128 - plen);
                    assert!(got.ended || got.ids.len() == cap, "{got:?}");
                    ended += got.ended as usize;
                }
            }
        }
    }
    assert!(ended >= 18, "only {ended} completions met their end token");
}

/// max |a − b| / (1 + |b|).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn per_step_logits_agree_with_logits_last() {
    let v = 50;
    for (name, mut m, lora) in models() {
        let lora = lora.as_ref();
        let prompt = random_ids(6, v, 1);
        let first = m.prefill(&prompt, 3, 16, lora).unwrap();
        let mut worst = rel_diff(&first, &m.logits_last(&prompt, lora).unwrap());
        let mut seqs = vec![prompt.clone(); 3];
        // all three, a reordered subset (a shrunk batch), then one
        let steps: [&[usize]; 5] = [&[0, 1, 2], &[2, 0], &[1], &[0, 1, 2], &[2]];
        for (i, slots) in steps.iter().enumerate() {
            let tokens: Vec<u32> = slots.iter().map(|&s| (3 + 7 * i + s) as u32).collect();
            let rows = m.decode_step(slots, &tokens, lora).unwrap();
            assert_eq!(rows.len(), slots.len() * v);
            for (r, (&s, &t)) in slots.iter().zip(&tokens).enumerate() {
                seqs[s].push(t);
                let want = m.logits_last(&seqs[s], lora).unwrap();
                worst = worst.max(rel_diff(&rows[r * v..(r + 1) * v], &want));
            }
        }
        eprintln!("{name}: max relative logit difference {worst:e}");
        assert!(worst <= 2e-5, "{name}: {worst:e}");
    }
}

#[test]
fn decoding_is_bit_identical_for_1_and_2_threads() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut bits = Vec::new();
            for (_, mut m, lora) in models() {
                let lora = lora.as_ref();
                let prompt = random_ids(9, 50, 2);
                let s = samplings()[1];
                let c = m
                    .generate_many(&prompt, 12, None, lora, &s, &[[0, 0], [0, 1]])
                    .unwrap();
                bits.extend(c.iter().flat_map(|c| c.ids.clone()));
                let l = m.prefill(&prompt, 2, 12, lora).unwrap();
                bits.extend(l.iter().map(|x| x.to_bits()));
                let l = m.decode_step(&[1, 0], &[4, 5], lora).unwrap();
                bits.extend(l.iter().map(|x| x.to_bits()));
            }
            bits
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_decode_calls_are_errors() {
    let (_, mut m, lora) = models().remove(1);
    let lora = lora.as_ref();
    let err = |r: gradients_engine::Result<Vec<f32>>| r.unwrap_err().to_string();
    let e = err(m.decode_step(&[0], &[3], lora));
    assert!(e.contains("no prefill to continue"), "{e}");
    let prompt = random_ids(4, 50, 3);
    let e = err(m.prefill(&prompt, 2, 129, lora));
    assert!(e.contains("max_len = 129") && e.contains("(128)"), "{e}");
    let e = err(m.prefill(&prompt, 2, 3, lora));
    assert!(e.contains("got 4 tokens"), "{e}");
    assert!(m.prefill(&[], 2, 8, lora).is_err());
    assert!(m.prefill(&prompt, 0, 8, lora).is_err());
    m.prefill(&prompt, 2, 6, lora).unwrap();
    let e = err(m.decode_step(&[2], &[3], lora));
    assert!(e.contains("slot 2 of a prefill of 2 sequences"), "{e}");
    let e = err(m.decode_step(&[1, 1], &[3, 4], lora));
    assert!(e.contains("slot 1 is listed twice"), "{e}");
    let e = err(m.decode_step(&[0, 1], &[3], lora));
    assert!(e.contains("2 slots and 1 tokens"), "{e}");
    let e = err(m.decode_step(&[0], &[50], lora));
    assert!(e.contains("id 50"), "{e}");
    // positions 4 and 5 fit max_len 6, a third does not
    m.decode_step(&[0], &[3], lora).unwrap();
    m.decode_step(&[0], &[3], lora).unwrap();
    let e = err(m.decode_step(&[0], &[3], lora));
    assert!(e.contains("slot 0 is full (6 positions)"), "{e}");
    m.decode_step(&[1], &[3], lora).unwrap();
    // an adapter of another model
    let other = tiny_config(Arch::Llama, 3, false);
    let l3 = LoraState::upload(
        &Cpu::new(),
        &random_lora(&other, &lora_config(4, 0.0), 1, 0.1),
    );
    let e = err(m.decode_step(&[1], &[3], Some(&l3.unwrap())));
    assert!(e.contains("adapter has 3 layers"), "{e}");
}

#[test]
fn smollm2_cached_decoding_equals_the_full_forward() {
    let path = match assets::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIP: SmolLM2-135M GGUF unavailable: {why}");
            return;
        }
    };
    let lm = load_model(&path).expect("the SmolLM2 GGUF loads");
    let tok = lm.tokenizer.as_ref().expect("the GGUF carries a tokenizer");
    let text = tok
        .render_chat(&[ChatMessage::new("user", "What is 7 + 5?")], true)
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let mut m = Llama::new(Cpu::new(), &lm.config, &lm.weights).unwrap();
    let eos = tok.eos_id();
    let greedy = m.greedy(&prompt, 10, eos, None).unwrap();
    let want = reference(&mut m, &prompt, 10, eos, None, &Sampling::greedy(), [0, 0]);
    assert_eq!(greedy, want.ids);
    let s = samplings()[1];
    let keys = [[1, 0], [1, 1], [1, 2]];
    let many = m.generate_many(&prompt, 6, eos, None, &s, &keys).unwrap();
    for (key, got) in keys.iter().zip(&many) {
        let want = reference(&mut m, &prompt, 6, eos, None, &s, *key);
        assert_eq!(got, &want, "key {key:?}");
    }
    eprintln!(
        "greedy: {:?}; sampled: {:?}",
        tok.decode(&greedy).unwrap(),
        many.iter()
            .map(|c| tok.decode(&c.ids).unwrap())
            .collect::<Vec<_>>()
    );
}
