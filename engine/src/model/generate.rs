//! Deterministic decoding for GRPO: greedy, or seeded sampling (temperature, optional top-k
//! and top-p) whose random draw for a token is a pure function of
//! `(seed, prompt index, sample index, position)` (`counter_hash`), so a completion never
//! depends on thread counts or on the order prompts are processed in.
//!
//! [`pick`] turns one logit vector into a token: with `temperature = 0` the argmax (first
//! index on ties, exactly [`Llama::greedy`]'s rule); otherwise candidates are ordered by
//! logit (descending, lower index first on ties), cut to the `top_k` best (0: all), given
//! probabilities `exp((l − l_max)/T)` in f64 summed in that order, cut to the smallest prefix
//! whose mass reaches `top_p` of the total (1: all), and the draw `u ∈ [0, 1)` selects the
//! first candidate whose cumulative mass exceeds `u·mass`. [`Llama::generate_many`] draws
//! several completions of one prompt with the KV cache of decode.rs: one prefill of the
//! prompt, then one decode step per new token for all samples still running (each stops at
//! its end token, `max_new` or the context by itself), so a completion of `n` tokens after a
//! prompt of `p` costs one `p`-token forward and `n − 1` one-token steps. The draw of a token
//! depends only on its key and position, never on the batch, so a sample's completion is the
//! one [`Llama::generate`] gives alone, and (up to float rounding of the logits, which differ
//! from the full forward's in the last bits) the one of a full forward per token over
//! [`Llama::logits_last`] (tests/kv_cache.rs checks both). eval/grpo.rs, the GRPO trainer and
//! `gradients generate` (through [`Llama::greedy`]) use them.

use super::llama::Llama;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{counter_hash, LoraState};

/// How to choose each token.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// 0: greedy; otherwise the softmax temperature (in (0, 10]).
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens holding this much probability (in
    /// (0, 1]; 1: all).
    pub top_p: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Sampling::default()
    }

    /// Check the bounds; errors name the field.
    pub fn validate(&self, source: &str) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && (0.0..=10.0).contains(&t)) {
            return Err(Error::config(
                source,
                "temperature",
                format!("must be in [0, 10], got {t}"),
            ));
        }
        let p = self.top_p;
        if !(p.is_finite() && p > 0.0 && p <= 1.0) {
            return Err(Error::config(
                source,
                "top_p",
                format!("must be in (0, 1], got {p}"),
            ));
        }
        Ok(())
    }
}

/// The uniform draw in `[0, 1)` of token `position` of sample `sample` of prompt `prompt`:
/// the top 53 bits of `counter_hash([seed, prompt, sample, position])`.
pub fn uniform(seed: u64, prompt: u64, sample: u64, position: u64) -> f64 {
    (counter_hash(&[seed, prompt, sample, position]) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The first index of the largest logit.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best
}

/// The token `s` picks from `logits` with the draw `u ∈ [0, 1)` (see the module doc).
pub fn pick(logits: &[f32], s: &Sampling, u: f64) -> u32 {
    if s.temperature == 0.0 || logits.len() < 2 {
        return argmax(logits) as u32;
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if s.top_k > 0 && s.top_k < order.len() {
        order.truncate(s.top_k);
    }
    let top = logits[order[0] as usize] as f64;
    let probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i as usize] as f64 - top) / s.temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        for (j, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= s.top_p * total {
                keep = j + 1;
                break;
            }
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let target = u * mass;
    let mut cum = 0.0;
    for (j, p) in probs[..keep].iter().enumerate() {
        cum += p;
        if cum > target {
            return order[j];
        }
    }
    order[keep - 1]
}

/// A generated completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The new tokens (without the end token).
    pub ids: Vec<u32>,
    /// Whether the model produced the end token (false: cut at `max_new` or the context).
    pub ended: bool,
}

impl<B: Backend> Llama<B> {
    /// Extend `prompt` one picked token at a time until `eos`, `max_new` new tokens or the
    /// model's context length. `key = [prompt index, sample index]` keys the draws with
    /// `sampling.seed`; with `temperature = 0` this is [`Llama::greedy`].
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        eos: Option<u32>,
        lora: Option<&LoraState<B>>,
        sampling: &Sampling,
        key: [u64; 2],
    ) -> Result<Completion> {
        let mut c = self.generate_many(prompt, max_new, eos, lora, sampling, &[key])?;
        c.pop()
            .ok_or_else(|| Error::unsupported("generate: no completion"))
    }

    /// One completion of `prompt` per key in `keys` (as [`Llama::generate`] gives for that
    /// key), decoded together: the prompt is prefilled once and the samples still running
    /// form one decode batch per token.
    pub fn generate_many(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        eos: Option<u32>,
        lora: Option<&LoraState<B>>,
        sampling: &Sampling,
        keys: &[[u64; 2]],
    ) -> Result<Vec<Completion>> {
        sampling.validate("sampling")?;
        if prompt.is_empty() {
            return Err(Error::config(
                "generate",
                "prompt",
                "needs at least one token",
            ));
        }
        let (p, max_pos) = (prompt.len(), self.config().max_position_embeddings);
        let vocab = self.config().vocab_size;
        let mut out = vec![
            Completion {
                ids: Vec::new(),
                ended: false,
            };
            keys.len()
        ];
        // a sample with `c` new tokens picks another while this holds
        let room = |c: usize| c < max_new && p + c < max_pos;
        if keys.is_empty() || !room(0) {
            return Ok(out);
        }
        let mut logits = self.prefill(prompt, keys.len(), (p + max_new).min(max_pos), lora)?;
        let mut active: Vec<usize> = (0..keys.len()).collect();
        let mut shared = true; // every sample reads the prefill's one row
        loop {
            let mut next = Vec::with_capacity(active.len());
            let mut tokens = Vec::with_capacity(active.len());
            for (r, &s) in active.iter().enumerate() {
                let row = if shared { 0 } else { r };
                let c = &mut out[s];
                let u = uniform(sampling.seed, keys[s][0], keys[s][1], c.ids.len() as u64);
                let tok = pick(&logits[row * vocab..(row + 1) * vocab], sampling, u);
                if Some(tok) == eos {
                    c.ended = true;
                    continue;
                }
                c.ids.push(tok);
                if room(c.ids.len()) {
                    next.push(s);
                    tokens.push(tok);
                }
            }
            if next.is_empty() {
                return Ok(out);
            }
            logits = self.decode_step(&next, &tokens, lora)?;
            (active, shared) = (next, false);
        }
    }

    /// Greedy decoding: extends `prompt` one argmax token at a time (the first index on
    /// ties) until `eos`, `max_new` new tokens, or the model's context length; returns the
    /// new tokens only (without the eos). KV-cached ([`Llama::generate`] at temperature 0).
    pub fn greedy(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        eos: Option<u32>,
        lora: Option<&LoraState<B>>,
    ) -> Result<Vec<u32>> {
        let c = self.generate(prompt, max_new, eos, lora, &Sampling::greedy(), [0, 0])?;
        Ok(c.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(t: f64, k: usize, p: f64) -> Sampling {
        Sampling {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: 1,
        }
    }

    #[test]
    fn greedy_is_the_first_argmax() {
        let l = [0.5f32, 2.0, 2.0, -1.0];
        assert_eq!(pick(&l, &Sampling::greedy(), 0.99), 1);
    }

    #[test]
    fn draws_follow_the_cut_distribution() {
        // logits ln(4), ln(3), ln(2), ln(1): probabilities 0.4, 0.3, 0.2, 0.1 at T = 1
        let l: Vec<f32> = [4.0f32, 3.0, 2.0, 1.0].iter().map(|x| x.ln()).collect();
        let s = sampling(1.0, 0, 1.0);
        assert_eq!(pick(&l, &s, 0.0), 0);
        assert_eq!(pick(&l, &s, 0.39), 0);
        assert_eq!(pick(&l, &s, 0.41), 1);
        assert_eq!(pick(&l, &s, 0.71), 2);
        assert_eq!(pick(&l, &s, 0.95), 3);
        // top-k 2: 4/7, 3/7
        let k2 = sampling(1.0, 2, 1.0);
        assert_eq!(pick(&l, &k2, 0.56), 0);
        assert_eq!(pick(&l, &k2, 0.58), 1);
        assert_eq!(pick(&l, &k2, 0.999), 1);
        // top-p 0.65: 0.4 + 0.3 reaches it, so {0, 1}
        let p = sampling(1.0, 0, 0.65);
        assert_eq!(pick(&l, &p, 0.999), 1);
        // a high temperature flattens: u = 0.5 picks index 1 at T = 100 (≈ 0.25 each)
        assert_eq!(pick(&l, &sampling(100.0, 0, 1.0), 0.5), 1);
        // uniform draws are in [0, 1) and keyed by every word
        let u = uniform(3, 1, 2, 4);
        assert!((0.0..1.0).contains(&u));
        assert_ne!(u, uniform(3, 1, 2, 5));
        assert_ne!(u, uniform(3, 2, 1, 4));
    }

    #[test]
    fn bounds_are_checked() {
        for (t, p) in [(-1.0, 1.0), (f64::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
            assert!(sampling(t, 0, p).validate("s").is_err());
        }
        assert!(sampling(0.7, 50, 0.9).validate("s").is_ok());
    }
}
