//! Shared helpers of the model tests: tiny random Llama/Qwen2 models built in code, random
//! LoRA adapters, batches, and a naive host-side f64 reference forward (written from HF's
//! `LlamaForCausalLM` semantics, independent of the engine's model code).
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;

use gradients_engine::data::TextTokenizer;
use gradients_engine::lora::{counter_hash, LoraConfig, LoraWeights, Target};
use gradients_engine::model::load::{load_model, LoadedModel};
use gradients_engine::model::{Arch, Batch, LayerWeights, ModelConfig, ModelWeights, Sample};
use gradients_engine::train::{train_model, RunOptions, TrainConfig, TrainSummary};
use gradients_engine::{Result, Tensor};

/// Uniform in [-1, 1) from a counter hash.
pub fn unif(words: &[u64]) -> f32 {
    let u = (counter_hash(words) >> 40) as f32 / (1u64 << 24) as f32;
    2.0 * u - 1.0
}

fn rand_tensor(shape: Vec<usize>, scale: f32, seed: u64, id: u64) -> Tensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|i| scale * unif(&[seed, id, i as u64]))
        .collect();
    Tensor::new(shape, data).unwrap()
}

fn norm_weight(h: usize, seed: u64, id: u64) -> Tensor {
    let data = (0..h)
        .map(|i| 1.0 + 0.2 * unif(&[seed, id, i as u64]))
        .collect();
    Tensor::new(vec![h], data).unwrap()
}

/// A tiny config: hidden 32, heads 4, kv heads 2, head_dim 8, intermediate 48, vocab 50.
pub fn tiny_config(arch: Arch, layers: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        tie_word_embeddings: tied,
        attention_bias: arch == Arch::Qwen2,
        max_position_embeddings: 128,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Random frozen weights for `cfg` (Linear entries `U(−1,1)/√in`, norms near 1).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> ModelWeights {
    let (h, qd, kv, f, v) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let lin = |out: usize, inp: usize, id: u64| {
        rand_tensor(vec![out, inp], 1.0 / (inp as f32).sqrt(), seed, id)
    };
    let layers = (0..cfg.num_layers as u64)
        .map(|l| {
            let id = 100 * (l + 1);
            let bias = |d: usize, k: u64| {
                cfg.attention_bias
                    .then(|| rand_tensor(vec![d], 0.3, seed, id + k))
            };
            LayerWeights {
                attn_norm: norm_weight(h, seed, id),
                wq: lin(qd, h, id + 1).into(),
                wk: lin(kv, h, id + 2).into(),
                wv: lin(kv, h, id + 3).into(),
                wo: lin(h, qd, id + 4).into(),
                bq: bias(qd, 5),
                bk: bias(kv, 6),
                bv: bias(kv, 7),
                mlp_norm: norm_weight(h, seed, id + 8),
                w_gate: lin(f, h, id + 9).into(),
                w_up: lin(f, h, id + 10).into(),
                w_down: lin(h, f, id + 11).into(),
            }
        })
        .collect();
    ModelWeights {
        embed: rand_tensor(vec![v, h], 1.0, seed, 1),
        layers,
        final_norm: norm_weight(h, seed, 2),
        lm_head: (!cfg.tie_word_embeddings).then(|| lin(v, h, 3)),
    }
}

/// A LoRA config over all seven targets.
pub fn lora_config(rank: usize, dropout: f32) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        dropout,
        targets: Target::ALL.to_vec(),
        use_rslora: false,
    }
}

/// PEFT-initialised adapter with `B` set to `U(−b_scale, b_scale)` (non-zero, so `dA ≠ 0`).
pub fn random_lora(cfg: &ModelConfig, lcfg: &LoraConfig, seed: u64, b_scale: f32) -> LoraWeights {
    let mut w = LoraWeights::init(cfg, lcfg, seed).unwrap();
    for p in w.pairs_mut() {
        for (i, v) in p.b.data.iter_mut().enumerate() {
            *v = b_scale * unif(&[seed, 7, p.layer as u64, p.target as u64, i as u64]);
        }
    }
    w
}

/// Random ids in `2..vocab` for `len` tokens.
pub fn random_ids(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..len)
        .map(|i| 2 + (counter_hash(&[seed, 99, i as u64]) % (vocab as u64 - 2)) as u32)
        .collect()
}

/// A batch of two rows: row 0 packs two samples (prompt tokens masked), row 1 holds one
/// shorter, right-padded sample.
pub fn mixed_batch(seq: usize, vocab: usize, seed: u64) -> Batch {
    let a = random_ids(5, vocab, seed);
    let b = random_ids(seq - 6, vocab, seed + 1);
    let c = random_ids(seq - 2, vocab, seed + 2);
    let lab = |ids: &[u32], masked: usize| -> Vec<i32> {
        ids.iter()
            .enumerate()
            .map(|(i, &t)| if i < masked { -100 } else { t as i32 })
            .collect()
    };
    let (la, lb, lc) = (lab(&a, 1), lab(&b, 2), lab(&c, 0));
    let rows = vec![
        vec![
            Sample {
                input_ids: &a,
                labels: &la,
            },
            Sample {
                input_ids: &b,
                labels: &lb,
            },
        ],
        vec![Sample {
            input_ids: &c,
            labels: &lc,
        }],
    ];
    Batch::packed(&rows, seq, vocab).unwrap()
}

fn matvec_t(w: &Tensor, x: &[f64]) -> Vec<f64> {
    // y = W x for W [out, in]
    let inp = x.len();
    w.data
        .chunks(inp)
        .map(|row| row.iter().zip(x).map(|(&a, &b)| a as f64 * b).sum())
        .collect()
}

fn rmsnorm(x: &[f64], w: &Tensor, eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(&w.data)
        .map(|(v, &g)| v * r * g as f64)
        .collect()
}

fn linear(
    x: &[f64],
    w: &Tensor,
    b: Option<&Tensor>,
    lora: Option<&LoraWeights>,
    layer: usize,
    t: Target,
) -> Vec<f64> {
    let mut y = matvec_t(w, x);
    if let Some(b) = b {
        y.iter_mut().zip(&b.data).for_each(|(y, &b)| *y += b as f64);
    }
    if let Some(p) = lora.and_then(|l| l.get(layer, t)) {
        let s = lora.unwrap().config.scaling() as f64;
        let u = matvec_t(&p.a, x);
        let d = matvec_t(&p.b, &u);
        y.iter_mut().zip(d).for_each(|(y, d)| *y += s * d);
    }
    y
}

fn rope(x: &mut [f64], heads: usize, hd: usize, pos: u32, theta: f32) {
    for hh in 0..heads {
        let v = &mut x[hh * hd..(hh + 1) * hd];
        for i in 0..hd / 2 {
            let inv = 1.0f32 / theta.powf((2 * i) as f32 / hd as f32);
            let ang = (pos as f32 * inv) as f64;
            let (c, s) = (ang.cos(), ang.sin());
            let (a, b) = (v[i], v[i + hd / 2]);
            v[i] = a * c - b * s;
            v[i + hd / 2] = b * c + a * s;
        }
    }
}

/// Naive f64 forward of `batch`: per-token losses (0 where ignored) and every token's logits.
pub fn reference_forward(
    cfg: &ModelConfig,
    w: &ModelWeights,
    lora: Option<&LoraWeights>,
    batch: &Batch,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (h, hd, nh, nkv) = (
        cfg.hidden_size,
        cfg.head_dim,
        cfg.num_heads,
        cfg.num_kv_heads,
    );
    let eps = cfg.rms_norm_eps as f64;
    let n = batch.batch * batch.seq;
    let mut x: Vec<Vec<f64>> = batch
        .input_ids
        .iter()
        .map(|&id| {
            w.embed.data[id as usize * h..(id as usize + 1) * h]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    for (l, lw) in w.layers.iter().enumerate() {
        let xn: Vec<Vec<f64>> = x.iter().map(|r| rmsnorm(r, &lw.attn_norm, eps)).collect();
        let mut q = Vec::new();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for (t, r) in xn.iter().enumerate() {
            let mut qt = linear(r, &lw.wq.dense(), lw.bq.as_ref(), lora, l, Target::Q);
            let mut kt = linear(r, &lw.wk.dense(), lw.bk.as_ref(), lora, l, Target::K);
            rope(&mut qt, nh, hd, batch.positions[t], cfg.rope_theta);
            rope(&mut kt, nkv, hd, batch.positions[t], cfg.rope_theta);
            q.push(qt);
            k.push(kt);
            v.push(linear(
                r,
                &lw.wv.dense(),
                lw.bv.as_ref(),
                lora,
                l,
                Target::V,
            ));
        }
        for t in 0..n {
            let (row, i) = (t / batch.seq, t % batch.seq);
            let mut att = vec![0.0; nh * hd];
            for hh in 0..nh {
                let g = hh / (nh / nkv);
                let js: Vec<usize> = (batch.starts[t] as usize..=i)
                    .map(|j| row * batch.seq + j)
                    .collect();
                let scores: Vec<f64> = js
                    .iter()
                    .map(|&j| {
                        (0..hd)
                            .map(|e| q[t][hh * hd + e] * k[j][g * hd + e])
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (&j, s) in js.iter().zip(&scores) {
                    let p = (s - m).exp() / z;
                    for e in 0..hd {
                        att[hh * hd + e] += p * v[j][g * hd + e];
                    }
                }
            }
            let o = linear(&att, &lw.wo.dense(), None, lora, l, Target::O);
            x[t].iter_mut().zip(o).for_each(|(a, b)| *a += b);
            let xn2 = rmsnorm(&x[t], &lw.mlp_norm, eps);
            let gate = linear(&xn2, &lw.w_gate.dense(), None, lora, l, Target::Gate);
            let up = linear(&xn2, &lw.w_up.dense(), None, lora, l, Target::Up);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = linear(&act, &lw.w_down.dense(), None, lora, l, Target::Down);
            x[t].iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    let head = w.lm_head.as_ref().unwrap_or(&w.embed);
    let targets = batch.targets();
    let mut losses = Vec::with_capacity(n);
    let mut logits = Vec::with_capacity(n);
    for t in 0..n {
        let xf = rmsnorm(&x[t], &w.final_norm, eps);
        let lg = matvec_t(head, &xf);
        let loss = if targets[t] < 0 {
            0.0
        } else {
            let m = lg.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + lg.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            lse - lg[targets[t] as usize]
        };
        losses.push(loss);
        logits.push(lg);
    }
    (losses, logits)
}

/// The tiny tokenizer of the training tests (train_loop, train_outputs, train_dpo).
/// Letters a–z are 0–25, space 26, '.' 27, anything else 28; eos 29.
pub struct LetterTok;

impl TextTokenizer for LetterTok {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text
            .chars()
            .map(|c| match c {
                'a'..='z' => c as u32 - 'a' as u32,
                ' ' => 26,
                '.' => 27,
                _ => 28,
            })
            .collect())
    }
    fn eos_id(&self) -> Option<u32> {
        Some(29)
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn token_text(&self, _id: u32) -> Option<String> {
        None
    }
    fn chat_template(&self) -> Option<&str> {
        None
    }
    /// Letters, space and '.' back; any other id (28, 29, and 30.. of the tiny models) '#'.
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| match i {
                0..=25 => (b'a' + i as u8) as char,
                26 => ' ',
                27 => '.',
                _ => '#',
            })
            .collect())
    }
}

/// `train_model` on the tiny model `(mcfg, w)` with [`LetterTok`], no event log.
pub fn train_tiny(
    cfg: &TrainConfig,
    mcfg: &ModelConfig,
    w: &ModelWeights,
    opts: &RunOptions,
) -> Result<TrainSummary> {
    train_model(cfg, mcfg, w, &LetterTok, "tiny", opts, &mut |_| {})
}

/// Load the real model at `model` and run `cfg` on it (every event printed to stderr);
/// returns the loaded model (to evaluate the adapter with), the summary and the start time.
pub fn train_real(cfg: &TrainConfig, model: &Path) -> (LoadedModel, TrainSummary, Instant) {
    let t0 = Instant::now();
    let m = load_model(model).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    let mut log = |e: gradients_engine::train::Event<'_>| eprintln!("{e:?}");
    let name = "SmolLM2-135M-Instruct";
    let opts = RunOptions::default();
    let s = train_model(cfg, &m.config, &m.weights, tok, name, &opts, &mut log).unwrap();
    (m, s, t0)
}
