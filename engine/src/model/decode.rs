//! The logits of a whole sequence ([`Llama::logits_last`], [`Llama::logits_from`]: one full
//! forward, the reference of what follows) and KV-cached decoding: [`Llama::prefill`] runs
//! the ordinary forward over a prompt (llama.rs `forward_into`, the same block code as
//! training) while every block writes its keys (after RoPE) and values into a [`KvCache`],
//! copied into each of `slots` sequences; [`Llama::decode_step`] then runs the blocks on one
//! new token per listed sequence only (`n` rows: `copy_rows` of the token's key and value into
//! the cache, `attention_decode` against the sequence's cached positions `0..=pos`), then the
//! final norm and the lm_head for those rows. generate.rs drives them (`generate_many`: one
//! prefill per prompt, a decode batch of its samples that shrinks as samples end).
//!
//! Memory: the cache (per block `[slots·max_len, kv]` keys and values, sequence `s`'s position
//! `p` at row `s·max_len + p`) is allocated by [`KvCache::new`] only, when a prefill needs more
//! sequences or positions than the cache holds (grow-only; lengths rounded up to
//! [`CACHE_ROUND`]), and kept in the model with the decode steps' buffers (an activation plan
//! of `n` rows plus `[n, vocab]` logits, for the widest step and for the last narrower one).
//! Numerics: the same ops as the full forward on fewer rows; the GEMMs' row counts differ, so
//! logits agree with [`Llama::logits_last`] within float rounding, not bit for bit.

use super::batch::{Batch, Sample, IGNORE};
use super::llama::{Llama, StepOptions};
use super::llama_forward::Ctx;
use super::plan::{Plan, PlanKey};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::LoraState;

/// Cache lengths are rounded up to a multiple of this (capped at the model's context), so
/// prompts of similar lengths reuse one cache.
pub const CACHE_ROUND: usize = 64;

/// Every block's cached keys and values: sequence `s`, position `p` at row `s·max_len + p`.
pub(crate) struct KvCache<B: Backend> {
    /// Per block `[slots·max_len, kv]` keys after RoPE.
    k: Vec<B::Buf>,
    /// Per block `[slots·max_len, kv]` values.
    v: Vec<B::Buf>,
    /// Sequences held.
    slots: usize,
    /// Positions per sequence.
    max_len: usize,
}

impl<B: Backend> KvCache<B> {
    /// The one place the cache is allocated: `layers` blocks of `slots·max_len` rows of `kv`
    /// values for keys and for values, in the backend's compute precision.
    fn new(be: &B, layers: usize, slots: usize, max_len: usize, kv: usize) -> Result<Self> {
        let rows = slots
            .checked_mul(max_len)
            .filter(|&r| r <= i32::MAX as usize)
            .ok_or_else(|| {
                Error::shape(
                    "kv cache",
                    format!(
                        "{slots} sequences × {max_len} positions exceed the kernels' int32 rows"
                    ),
                )
            })?;
        let len = rows
            .checked_mul(kv)
            .ok_or_else(|| Error::shape("kv cache", format!("{rows} rows × {kv} overflows")))?;
        // in the compute precision, like the plan's keys and values they are copied from
        let bufs = || {
            (0..layers)
                .map(|_| be.alloc_compute(len))
                .collect::<Result<Vec<_>>>()
        };
        Ok(KvCache {
            k: bufs()?,
            v: bufs()?,
            slots,
            max_len,
        })
    }

    fn empty() -> Self {
        KvCache {
            k: Vec::new(),
            v: Vec::new(),
            slots: 0,
            max_len: 0,
        }
    }
}

/// What one forward does with the cache: the cache rows its tokens' keys and values go to
/// (one list per copy, one row per token), and, when decoding, the key range of each query.
pub(crate) struct KvStep<'a, B: Backend> {
    cache: &'a mut KvCache<B>,
    rows: &'a [Vec<u32>],
    /// `(first, last)`: query `i` attends cache rows `first[i] ..= first[i] + last[i]`.
    decode: Option<(&'a [u32], &'a [u32])>,
}

impl<B: Backend> KvStep<'_, B> {
    /// Block `l`'s share.
    pub fn layer(&mut self, l: usize) -> LayerKv<'_, B> {
        LayerKv {
            k: &mut self.cache.k[l],
            v: &mut self.cache.v[l],
            rows: self.rows,
            decode: self.decode,
        }
    }
}

/// One block's KV cache and what the step does with it (see [`KvStep`]).
pub(crate) struct LayerKv<'a, B: Backend> {
    k: &'a mut B::Buf,
    v: &'a mut B::Buf,
    rows: &'a [Vec<u32>],
    decode: Option<(&'a [u32], &'a [u32])>,
}

/// The cache's keys and values and each query's `(first, last)`, for `attention_decode`.
pub(crate) type Cached<'a, B> = (
    &'a <B as Backend>::Buf,
    &'a <B as Backend>::Buf,
    &'a [u32],
    &'a [u32],
);

impl<'a, B: Backend> LayerKv<'a, B> {
    /// Write the step's keys and values `[n, width]` into the cache rows; returns what
    /// `attention_decode` reads when the step decodes (None: attend within the step).
    pub fn store(
        self,
        be: &B,
        key: &B::Buf,
        value: &B::Buf,
        width: usize,
    ) -> Result<Option<Cached<'a, B>>> {
        for rows in self.rows {
            be.copy_rows(self.k, key, rows, width)?;
            be.copy_rows(self.v, value, rows, width)?;
        }
        let (k, v): (&'a B::Buf, &'a B::Buf) = (self.k, self.v);
        Ok(self.decode.map(|(first, last)| (k, v, first, last)))
    }
}

/// A decode step's buffers for `n` rows: the activation plan and `[n, vocab]` logits.
struct StepBufs<B: Backend> {
    plan: Plan<B>,
    logits: B::Buf,
}

/// The decoding state kept in the model between calls (see the module doc).
pub(crate) struct DecodeState<B: Backend> {
    cache: KvCache<B>,
    /// Positions filled per sequence of the current prefill (its length: the sequence count).
    lens: Vec<usize>,
    /// Positions a sequence may fill (the prefill's `max_len`).
    limit: usize,
    /// Buffers of the widest decode step seen, and of the last narrower one.
    wide: Option<StepBufs<B>>,
    narrow: Option<StepBufs<B>>,
}

/// The step buffers serving `key` (reused, or allocated in the wide slot when wider than any
/// seen, else in the narrow one).
fn step_bufs<'s, B: Backend>(
    be: &B,
    wide: &'s mut Option<StepBufs<B>>,
    narrow: &'s mut Option<StepBufs<B>>,
    key: PlanKey,
    layers: usize,
) -> Result<&'s mut StepBufs<B>> {
    let serves = |b: &Option<StepBufs<B>>| b.as_ref().is_some_and(|b| b.plan.key.serves(&key));
    let slot = if serves(wide) || wide.as_ref().is_none_or(|w| w.plan.key.dims.n < key.dims.n) {
        wide
    } else {
        narrow
    };
    if !serves(slot) {
        *slot = None; // free the old buffers first
        let logits = be.alloc(key.dims.n * key.dims.vocab)?;
        let plan = Plan::new(be, key, layers)?;
        *slot = Some(StepBufs { plan, logits });
    }
    slot.as_mut()
        .ok_or_else(|| Error::unsupported("decode: step buffers missing"))
}

impl<B: Backend> Llama<B> {
    /// Logits `[vocab]` at the last position of the single sequence `ids` (one full forward:
    /// the reference the KV-cached decoding of `decode.rs` is tested against).
    pub fn logits_last(&mut self, ids: &[u32], lora: Option<&LoraState<B>>) -> Result<Vec<f32>> {
        self.seq_logits(ids, ids.len().saturating_sub(1), lora, None)
    }

    /// Logits `[(len − start) · vocab]` at positions `start..len` of the single sequence
    /// `ids` (one full forward; row `i` predicts the token after `ids[start + i]`).
    pub fn logits_from(
        &mut self,
        ids: &[u32],
        start: usize,
        lora: Option<&LoraState<B>>,
    ) -> Result<Vec<f32>> {
        self.seq_logits(ids, start, lora, None)
    }

    /// [`Llama::logits_from`], writing the keys and values into the KV cache when `kv` is
    /// given (the prefill).
    fn seq_logits(
        &mut self,
        ids: &[u32],
        start: usize,
        lora: Option<&LoraState<B>>,
        kv: Option<KvStep<'_, B>>,
    ) -> Result<Vec<f32>> {
        if start >= ids.len() {
            return Err(Error::shape(
                "llama logits",
                format!("start {start} outside a sequence of {} tokens", ids.len()),
            ));
        }
        let labels = vec![IGNORE; ids.len()];
        let sample = Sample {
            input_ids: ids,
            labels: &labels,
        };
        let batch = Batch::unpacked(&[sample], ids.len(), self.config().vocab_size)?;
        let opts = StepOptions::default();
        let used = self.forward_into(false, &batch, lora, &opts, kv)?;
        let (h, vocab) = (self.config().hidden_size, self.config().vocab_size);
        let rows = ids.len() - start;
        let plan = self.used_plan(used)?;
        let xf = self.backend().download(&plan.xf)?;
        let tail = self
            .backend()
            .upload_compute(&xf[start * h..ids.len() * h])?;
        let mut logits = self.backend().alloc(rows * vocab)?;
        self.head(&mut logits, &tail, rows)?;
        self.backend().download(&logits)
    }

    /// `logits [rows, vocab] = x [rows, h] · lm_headᵀ`.
    fn head(&self, logits: &mut B::Buf, x: &B::Buf, rows: usize) -> Result<()> {
        let (h, vocab) = (self.config().hidden_size, self.config().vocab_size);
        self.backend().gemm(
            logits,
            x,
            self.lm_head(),
            rows,
            vocab,
            h,
            false,
            true,
            1.0,
            0.0,
        )
    }

    /// Start decoding `slots` sequences that all begin with `prompt`: one forward over the
    /// prompt (as [`Llama::logits_last`]) that writes every block's keys and values into the
    /// KV cache for each sequence. Returns the logits `[vocab]` of the last prompt position
    /// (shared by all sequences). Sequences may then grow to `max_len` positions (at most
    /// the model's context) with [`Llama::decode_step`], with the same adapter.
    pub fn prefill(
        &mut self,
        prompt: &[u32],
        slots: usize,
        max_len: usize,
        lora: Option<&LoraState<B>>,
    ) -> Result<Vec<f32>> {
        let (p, max_pos) = (prompt.len(), self.config().max_position_embeddings);
        if p == 0 || slots == 0 || max_len < p || max_len > max_pos {
            return Err(Error::shape(
                "prefill",
                format!(
                    "needs a prompt (got {p} tokens) of at most max_len = {max_len} <= the \
                     context ({max_pos}) and at least one sequence (got {slots})"
                ),
            ));
        }
        let mut st = self.decode.take().unwrap_or_else(|| DecodeState {
            cache: KvCache::empty(),
            lens: Vec::new(),
            limit: 0,
            wide: None,
            narrow: None,
        });
        let c = &st.cache;
        if c.slots < slots || c.max_len < max_len {
            let want_len = max_len.next_multiple_of(CACHE_ROUND).min(max_pos);
            let (s, len) = (c.slots.max(slots), c.max_len.max(want_len));
            st.cache = KvCache::empty(); // free the old cache first
            let cfg = self.config();
            st.cache = KvCache::new(self.backend(), cfg.num_layers, s, len, cfg.kv_dim())?;
        }
        let stride = st.cache.max_len;
        let rows: Vec<Vec<u32>> = (0..slots)
            .map(|s| (0..p).map(|t| (s * stride + t) as u32).collect())
            .collect();
        self.ensure_rope(max_len)?;
        let kv = KvStep {
            cache: &mut st.cache,
            rows: &rows,
            decode: None,
        };
        let logits = self.seq_logits(prompt, p - 1, lora, Some(kv));
        (st.lens, st.limit) = match logits {
            Ok(_) => (vec![p; slots], max_len),
            Err(_) => (Vec::new(), 0), // nothing valid to continue
        };
        self.decode = Some(st);
        logits
    }

    /// One decoding step: token `tokens[i]` is appended to sequence `slots[i]` of the last
    /// [`Llama::prefill`] (at its next position), and the logits of those `n` positions are
    /// returned, `[n, vocab]` in the order given. The slots must be distinct sequences that
    /// have not reached the prefill's `max_len`.
    pub fn decode_step(
        &mut self,
        slots: &[usize],
        tokens: &[u32],
        lora: Option<&LoraState<B>>,
    ) -> Result<Vec<f32>> {
        self.check_lora(lora)?;
        let mut st = self
            .decode
            .take()
            .ok_or_else(|| Error::shape("decode_step", "no prefill to continue"))?;
        let out = self.step_in(&mut st, slots, tokens, lora);
        self.decode = Some(st);
        out
    }

    fn step_in(
        &mut self,
        st: &mut DecodeState<B>,
        slots: &[usize],
        tokens: &[u32],
        lora: Option<&LoraState<B>>,
    ) -> Result<Vec<f32>> {
        let n = slots.len();
        let bad = |msg: String| Err(Error::shape("decode_step", msg));
        if n == 0 || tokens.len() != n {
            return bad(format!("{n} slots and {} tokens", tokens.len()));
        }
        let mut seen = vec![false; st.lens.len()];
        let mut pos = Vec::with_capacity(n);
        for &s in slots {
            if s >= st.lens.len() {
                return bad(format!(
                    "slot {s} of a prefill of {} sequences",
                    st.lens.len()
                ));
            }
            if std::mem::replace(&mut seen[s], true) {
                return bad(format!("slot {s} is listed twice"));
            }
            if st.lens[s] >= st.limit {
                return bad(format!("slot {s} is full ({} positions)", st.limit));
            }
            pos.push(st.lens[s] as u32);
        }
        let stride = st.cache.max_len;
        let first: Vec<u32> = slots.iter().map(|&s| (s * stride) as u32).collect();
        let rows = vec![first.iter().zip(&pos).map(|(f, p)| f + p).collect()];
        self.ensure_rope(st.limit)?;
        let d = self.dims(n, 1);
        let key = PlanKey {
            dims: d,
            lora: lora.map(|l| (l.config.rank, l.config.targets.clone())),
            dropout: false,
            saved: 1,
            grads: false,
        };
        let layers = self.config().num_layers;
        let bufs = step_bufs(self.backend(), &mut st.wide, &mut st.narrow, key, layers)?;
        let starts = vec![0u32; n];
        let cx = Ctx {
            be: self.backend(),
            d,
            eps: self.config().rms_norm_eps,
            rope: self.rope()?,
            positions: &pos,
            starts: &starts,
            lora,
            p: 0.0,
            seed: 0,
            step: 0,
            accumulate: false,
        };
        let kv = KvStep {
            cache: &mut st.cache,
            rows: &rows,
            decode: Some((&first, &pos)),
        };
        self.forward_rows(&mut bufs.plan, &cx, tokens, 1, Some(kv))?;
        self.head(&mut bufs.logits, &bufs.plan.xf, n)?;
        let logits = self.backend().download(&bufs.logits)?;
        for &s in slots {
            st.lens[s] += 1;
        }
        Ok(logits)
    }
}
