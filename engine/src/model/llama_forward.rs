//! One Llama block's forward with LoRA, llm.c style: [`Ctx::linear_forward`] (an adapted
//! Linear, `y = x·Wᵀ (+b) + s·(drop(x)·Aᵀ)·Bᵀ`, saving the `[n, r]` bottleneck) and
//! [`Ctx::layer_forward`] (norm, q/k/v, RoPE, attention, o, residual, norm, SwiGLU MLP,
//! residual), plus the block's frozen weights on the backend. The model API that drives it
//! is in `llama.rs`, the backward in `llama_backward.rs`, the buffers in `plan.rs`; with a
//! [`LayerKv`] the block also writes its keys and values into the KV cache and, when decoding,
//! attends to the cache (`decode.rs`).

use super::decode::LayerKv;
use super::plan::{Dims, DropScratch, LayerActs, Recomputed};
use crate::backend::{Backend, RopeTable};
use crate::error::Result;
use crate::lora::{counter_hash, LoraState, Target};

/// Frozen weights of one block on the backend (shapes as in [`super::LayerWeights`]).
pub(crate) struct DeviceLayer<B: Backend> {
    /// `[h]`.
    pub attn_norm: B::Buf,
    /// `[qd, h]`.
    pub wq: B::Weight,
    /// `[kv, h]`.
    pub wk: B::Weight,
    /// `[kv, h]`.
    pub wv: B::Weight,
    /// `[h, qd]`.
    pub wo: B::Weight,
    /// `[qd]`, `[kv]`, `[kv]` (Qwen2).
    pub bias: Option<[B::Buf; 3]>,
    /// `[h]`.
    pub mlp_norm: B::Buf,
    /// `[f, h]`.
    pub w_gate: B::Weight,
    /// `[f, h]`.
    pub w_up: B::Weight,
    /// `[h, f]`.
    pub w_down: B::Weight,
}

/// Everything a block's forward and backward read besides its buffers.
pub(crate) struct Ctx<'a, B: Backend> {
    /// The backend running the ops.
    pub be: &'a B,
    /// Sizes of the step.
    pub d: Dims,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// cos/sin `[max_pos, hd/2]`.
    pub rope: &'a RopeTable<B>,
    /// `[n]` RoPE positions.
    pub positions: &'a [u32],
    /// `[n]` in-row sample starts (attention mask).
    pub starts: &'a [u32],
    /// The adapter, if any.
    pub lora: Option<&'a LoraState<B>>,
    /// Dropout probability in effect (0 in eval).
    pub p: f32,
    /// Dropout seed.
    pub seed: u64,
    /// Dropout step counter.
    pub step: u64,
    /// The backward adds into the LoRA gradients instead of overwriting them.
    pub accumulate: bool,
}

impl<B: Backend> Ctx<'_, B> {
    /// Dropout key of `(layer, target)` for this step.
    pub fn key(&self, layer: usize, t: Target) -> u64 {
        counter_hash(&[self.seed, self.step, layer as u64, t as u64])
    }

    /// `y = x·Wᵀ (+bias) + s·(drop(x)·Aᵀ)·Bᵀ`, saving `u = drop(x)·Aᵀ [n, r]` when the target is
    /// adapted. With `y = None` only `u` is computed (recompute of the last Linear).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_forward(
        &self,
        y: Option<&mut B::Buf>,
        u: Option<&mut B::Buf>,
        x: &B::Buf,
        w: &B::Weight,
        bias: Option<&B::Buf>,
        layer: usize,
        t: Target,
        drop: Option<&mut DropScratch<B>>,
    ) -> Result<()> {
        let (be, d) = (self.be, &self.d);
        let (out, inp) = (d.out_dim(t), d.in_dim(t));
        let mut y = y;
        if let Some(y) = y.as_deref_mut() {
            be.gemm_weight(y, x, w, d.n, true, 1.0, 0.0)?;
            if let Some(b) = bias {
                be.add_bias(y, b, d.n, out)?;
            }
        }
        let (Some(state), Some(u)) = (self.lora, u) else {
            return Ok(());
        };
        let Some(pair) = state.get_compute(layer, t) else {
            return Ok(());
        };
        let r = state.config.rank;
        match drop {
            Some(scr) if self.p > 0.0 => {
                let xd = &mut scr.for_width(d, inp)[0];
                be.dropout(xd, x, self.p, self.key(layer, t))?;
                be.gemm(u, xd, &pair.a, d.n, r, inp, false, true, 1.0, 0.0)?;
            }
            _ => be.gemm(u, x, &pair.a, d.n, r, inp, false, true, 1.0, 0.0)?,
        }
        if let Some(y) = y {
            be.gemm(y, u, &pair.b, d.n, out, r, false, true, state.scaling, 1.0)?;
        }
        Ok(())
    }

    /// One block: `x_in [n, h]` → `x_out [n, h]`, filling `a` (the normed inputs, the attention
    /// output and the SwiGLU product go to the scratch `rc`, not kept). With `x_out = None` the
    /// block stops after the last Linear's LoRA bottleneck (all its backward needs). With `kv`
    /// the keys (after RoPE) and values are also written into the block's KV cache, and a
    /// decoding step attends to the cache instead of to its own tokens.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward(
        &self,
        x_out: Option<&mut B::Buf>,
        a: &mut LayerActs<B>,
        rc: &mut Recomputed<B>,
        proj: &mut B::Buf,
        mut drop: Option<&mut DropScratch<B>>,
        x_in: &B::Buf,
        w: &DeviceLayer<B>,
        layer: usize,
        kv: Option<LayerKv<'_, B>>,
    ) -> Result<()> {
        let (be, d) = (self.be, &self.d);
        be.rmsnorm_forward(
            &mut rc.xn,
            &mut a.rstd1,
            x_in,
            &w.attn_norm,
            d.n,
            d.h,
            self.eps,
        )?;
        let [bq, bk, bv] = match &w.bias {
            Some([q, k, v]) => [Some(q), Some(k), Some(v)],
            None => [None, None, None],
        };
        let [uq, uk, uv, uo, ug, uu, ud] = &mut a.lora_u;
        let (wq, wk, wv) = (&w.wq, &w.wk, &w.wv);
        self.linear_forward(
            Some(&mut a.q),
            uq.as_mut(),
            &rc.xn,
            wq,
            bq,
            layer,
            Target::Q,
            drop.as_deref_mut(),
        )?;
        self.linear_forward(
            Some(&mut a.k),
            uk.as_mut(),
            &rc.xn,
            wk,
            bk,
            layer,
            Target::K,
            drop.as_deref_mut(),
        )?;
        self.linear_forward(
            Some(&mut a.v),
            uv.as_mut(),
            &rc.xn,
            wv,
            bv,
            layer,
            Target::V,
            drop.as_deref_mut(),
        )?;
        be.rope(&mut a.q, self.rope, self.positions, d.n, d.heads, false)?;
        be.rope(&mut a.k, self.rope, self.positions, d.n, d.kv_heads, false)?;
        let cached = match kv {
            Some(kv) => kv.store(be, &a.k, &a.v, d.kv)?,
            None => None,
        };
        match cached {
            Some((kc, vc, first, last)) => be.attention_decode(
                &mut rc.att,
                &a.q,
                kc,
                vc,
                first,
                last,
                d.heads,
                d.kv_heads,
                d.hd,
            )?,
            None => be.attention_forward(
                &mut rc.att,
                &mut rc.lse,
                &a.q,
                &a.k,
                &a.v,
                self.starts,
                d.batch,
                d.seq,
                d.heads,
                d.kv_heads,
                d.hd,
            )?,
        }
        self.linear_forward(
            Some(proj),
            uo.as_mut(),
            &rc.att,
            &w.wo,
            None,
            layer,
            Target::O,
            drop.as_deref_mut(),
        )?;
        be.copy(&mut a.x_mid, x_in)?;
        be.axpy(&mut a.x_mid, 1.0, proj)?;
        be.rmsnorm_forward(
            &mut rc.xn,
            &mut a.rstd2,
            &a.x_mid,
            &w.mlp_norm,
            d.n,
            d.h,
            self.eps,
        )?;
        self.linear_forward(
            Some(&mut a.gate),
            ug.as_mut(),
            &rc.xn,
            &w.w_gate,
            None,
            layer,
            Target::Gate,
            drop.as_deref_mut(),
        )?;
        self.linear_forward(
            Some(&mut a.up),
            uu.as_mut(),
            &rc.xn,
            &w.w_up,
            None,
            layer,
            Target::Up,
            drop.as_deref_mut(),
        )?;
        be.swiglu_forward(&mut rc.act, &a.gate, &a.up)?;
        match x_out {
            Some(x_out) => {
                self.linear_forward(
                    Some(proj),
                    ud.as_mut(),
                    &rc.act,
                    &w.w_down,
                    None,
                    layer,
                    Target::Down,
                    drop,
                )?;
                be.copy(x_out, &a.x_mid)?;
                be.axpy(x_out, 1.0, proj)
            }
            None => self.linear_forward(
                None,
                ud.as_mut(),
                &rc.act,
                &w.w_down,
                None,
                layer,
                Target::Down,
                drop,
            ),
        }
    }
}
