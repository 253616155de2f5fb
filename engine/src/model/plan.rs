//! The activation plan of the Llama model: every buffer a step needs, allocated once per
//! (batch, seq, LoRA layout) and reused across steps, like llm.c's `ActivationTensors`.
//!
//! Shapes use `n = batch*seq` tokens, `h` hidden, `qd = heads*head_dim`, `kv = kv_heads*head_dim`,
//! `f` intermediate, `r` LoRA rank. Neighbours: `llama.rs` (forward, fills the plan),
//! `llama_backward.rs` (backward, reads it and uses the gradient scratch).

use crate::backend::Backend;
use crate::error::Result;
use crate::lora::Target;

/// Sizes of one step, in the notation of the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub n: usize,
    pub h: usize,
    pub qd: usize,
    pub kv: usize,
    pub f: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
    pub vocab: usize,
}

impl Dims {
    /// Input width of the Linear that `t` adapts.
    pub fn in_dim(&self, t: Target) -> usize {
        match t {
            Target::O => self.qd,
            Target::Down => self.f,
            _ => self.h,
        }
    }

    /// Output width of the Linear that `t` adapts.
    pub fn out_dim(&self, t: Target) -> usize {
        match t {
            Target::Q => self.qd,
            Target::K | Target::V => self.kv,
            Target::O | Target::Down => self.h,
            Target::Gate | Target::Up => self.f,
        }
    }
}

/// What a plan was allocated for; a step whose key differs reallocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlanKey {
    pub dims: Dims,
    /// LoRA rank and adapted targets, when a LoRA path runs.
    pub lora: Option<(usize, Vec<Target>)>,
    /// Dropout scratch needed.
    pub dropout: bool,
    /// Number of [`LayerActs`] kept: `num_layers`, or 1 when recomputing / evaluating.
    pub saved: usize,
    /// Gradient scratch needed.
    pub grads: bool,
}

impl PlanKey {
    /// True when a plan allocated for `self` can run a step that needs `need`: a plan with more
    /// buffers serves a step that needs fewer (all blocks' activations serve a recompute step,
    /// LoRA buffers a base-model pass such as DPO's reference, dropout scratch a step without
    /// dropout, a training plan an evaluation).
    pub fn serves(&self, need: &PlanKey) -> bool {
        self.dims == need.dims
            && self.saved >= need.saved
            && (self.lora == need.lora || need.lora.is_none())
            && self.dropout >= need.dropout
            && self.grads >= need.grads
    }
}

/// The activations of one decoder block that its backward reads. What is cheap to recompute
/// is not kept: the normed inputs of q/k/v and gate/up (one rmsnorm pass each), the attention
/// output (one attention forward from the kept q, k, v) and the SwiGLU product (one
/// elementwise pass) are rebuilt in [`Recomputed`] by the backward, with the same ops on the
/// same inputs, hence the same bits.
pub(crate) struct LayerActs<B: Backend> {
    /// `[n]` 1/rms of the block input.
    pub rstd1: B::Buf,
    /// `[n, qd]` queries after RoPE.
    pub q: B::Buf,
    /// `[n, kv]` keys after RoPE.
    pub k: B::Buf,
    /// `[n, kv]` values.
    pub v: B::Buf,
    /// `[n, h]` residual after attention.
    pub x_mid: B::Buf,
    /// `[n]` 1/rms of `x_mid`.
    pub rstd2: B::Buf,
    /// `[n, f]` gate projection.
    pub gate: B::Buf,
    /// `[n, f]` up projection.
    pub up: B::Buf,
    /// `[n, r]` per adapted target: `drop(X)·Aᵀ`, the LoRA bottleneck.
    pub lora_u: [Option<B::Buf>; 7],
}

/// The block intermediates that are recomputed instead of saved, one set for all layers: the
/// forward writes them and uses them at once, the backward rebuilds them per layer.
pub(crate) struct Recomputed<B: Backend> {
    /// `[n, h]` an rmsnorm output: the input of q/k/v, then of gate/up.
    pub xn: B::Buf,
    /// `[n]` its 1/rms when rebuilt by the backward (equal to the saved one).
    pub rstd: B::Buf,
    /// `[n, qd]` attention output (input of o_proj).
    pub att: B::Buf,
    /// `[n, heads]` log-sum-exp of the attention scores.
    pub lse: B::Buf,
    /// `[n, f]` silu(gate)·up (input of down_proj).
    pub act: B::Buf,
}

/// Two `[n, in]` scratch buffers per LoRA input width, for dropout (forward: `drop(X)`;
/// backward: `drop(X)` for dA, then `s·(dY·B)·A` and its dropped copy).
pub(crate) struct DropScratch<B: Backend> {
    /// `2 × [n, h]`.
    pub h: [B::Buf; 2],
    /// `2 × [n, qd]`.
    pub qd: [B::Buf; 2],
    /// `2 × [n, f]`.
    pub f: [B::Buf; 2],
}

impl<B: Backend> DropScratch<B> {
    /// The pair of buffers of width `in_dim` (one of h, qd, f).
    pub fn for_width(&mut self, d: &Dims, in_dim: usize) -> &mut [B::Buf; 2] {
        if in_dim == d.h {
            &mut self.h
        } else if in_dim == d.qd {
            &mut self.qd
        } else {
            &mut self.f
        }
    }
}

/// Gradient scratch shared by all layers (the backward walks them one at a time).
pub(crate) struct GradScratch<B: Backend> {
    /// `[n, h]` gradient of the residual stream (accumulates through the layers).
    pub dres: B::Buf,
    /// `[n, h]` gradient of a norm's output (final, mlp, attention norm in turn).
    pub dxn: B::Buf,
    /// `[n, qd]` gradient of the attention output.
    pub datt: B::Buf,
    /// `[n, qd]` gradient of the queries.
    pub dq: B::Buf,
    /// `[n, kv]` gradient of the keys.
    pub dk: B::Buf,
    /// `[n, kv]` gradient of the values.
    pub dv: B::Buf,
    /// `[n, f]` gradient of silu(gate)·up.
    pub dact: B::Buf,
    /// `[n, f]` gradient of gate.
    pub dgate: B::Buf,
    /// `[n, f]` gradient of up.
    pub dup: B::Buf,
    /// `[n, r]` `dY·B` for the LoRA backward (None without LoRA).
    pub t_r: Option<B::Buf>,
}

/// Every buffer of a step.
pub(crate) struct Plan<B: Backend> {
    /// What it was allocated for.
    pub key: PlanKey,
    /// `(num_layers + 1) × [n, h]`: the embedding, then each block's output; only two (used
    /// in turn, see [`Plan::res`]) in a plan without gradients.
    pub residual: Vec<B::Buf>,
    /// `saved × LayerActs`.
    pub acts: Vec<LayerActs<B>>,
    /// Normed inputs and the SwiGLU product, rebuilt rather than saved.
    pub recomp: Recomputed<B>,
    /// `[n, h]` output of o_proj / down_proj before the residual add.
    pub proj: B::Buf,
    /// `[n, h]` final normed hidden (input of the lm_head).
    pub xf: B::Buf,
    /// `[n]` 1/rms of the last residual.
    pub rstd_f: B::Buf,
    /// Dropout scratch (only when LoRA dropout is on).
    pub drop: Option<DropScratch<B>>,
    /// Gradient scratch (only for training steps).
    pub grads: Option<GradScratch<B>>,
}

impl<B: Backend> Plan<B> {
    /// Allocate everything `key` asks for on `be`, for a model of `num_layers` blocks.
    pub fn new(be: &B, key: PlanKey, num_layers: usize) -> Result<Self> {
        let d = key.dims;
        let n = d.n;
        let rank = key.lora.as_ref().map(|(r, _)| *r);
        // activations and their gradients in the compute precision; 1/rms and the
        // log-sum-exp in f32
        let alloc = |len: usize| be.alloc_compute(len);
        let alloc_f32 = |len: usize| be.alloc(len);
        let mut acts = Vec::with_capacity(key.saved);
        for _ in 0..key.saved {
            let mut lora_u: [Option<B::Buf>; 7] = std::array::from_fn(|_| None);
            if let Some((r, targets)) = &key.lora {
                for &t in targets {
                    lora_u[t as usize] = Some(alloc(n * r)?);
                }
            }
            acts.push(LayerActs {
                rstd1: alloc_f32(n)?,
                q: alloc(n * d.qd)?,
                k: alloc(n * d.kv)?,
                v: alloc(n * d.kv)?,
                x_mid: alloc(n * d.h)?,
                rstd2: alloc_f32(n)?,
                gate: alloc(n * d.f)?,
                up: alloc(n * d.f)?,
                lora_u,
            });
        }
        // a forward-only pass needs the current block's input and output only
        let kept = if key.grads { num_layers + 1 } else { 2 };
        let residual = (0..kept)
            .map(|_| alloc(n * d.h))
            .collect::<Result<Vec<_>>>()?;
        let drop = if key.dropout {
            Some(DropScratch {
                h: [alloc(n * d.h)?, alloc(n * d.h)?],
                qd: [alloc(n * d.qd)?, alloc(n * d.qd)?],
                f: [alloc(n * d.f)?, alloc(n * d.f)?],
            })
        } else {
            None
        };
        let grads = if key.grads {
            Some(GradScratch {
                dres: alloc(n * d.h)?,
                dxn: alloc(n * d.h)?,
                datt: alloc(n * d.qd)?,
                dq: alloc(n * d.qd)?,
                dk: alloc(n * d.kv)?,
                dv: alloc(n * d.kv)?,
                dact: alloc(n * d.f)?,
                dgate: alloc(n * d.f)?,
                dup: alloc(n * d.f)?,
                t_r: rank.map(|r| alloc(n * r)).transpose()?,
            })
        } else {
            None
        };
        Ok(Plan {
            residual,
            acts,
            recomp: Recomputed {
                xn: alloc(n * d.h)?,
                rstd: alloc_f32(n)?,
                att: alloc(n * d.qd)?,
                lse: alloc_f32(n * d.heads)?,
                act: alloc(n * d.f)?,
            },
            proj: alloc(n * d.h)?,
            xf: alloc(n * d.h)?,
            rstd_f: alloc_f32(n)?,
            drop,
            grads,
            key,
        })
    }

    /// Index in [`Plan::residual`] of the input of block `l` (`l = num_layers`: the last
    /// block's output): `l` when every residual is kept, else `l mod 2`.
    pub fn res(&self, l: usize) -> usize {
        if self.residual.len() > 2 {
            l
        } else {
            l % 2
        }
    }
}
