//! The explicit backward of one Llama block with LoRA (the forward is in `llama.rs`).
//!
//! Contracts through the rank first, never forming `B·A`. For an adapted Linear
//! `Y = X·Wᵀ + s·(X_d·Aᵀ)·Bᵀ` with `X_d = drop(X)` and the saved `U = X_d·Aᵀ [n, r]`:
//! `dB = s·dYᵀ·U` `[out, r]`, `T = dY·B` `[n, r]`, `dA = s·Tᵀ·X_d` `[r, in]`,
//! `dX (+)= dY·W + drop(s·T·A)` (dropout's backward is the same mask applied to the
//! gradient, i.e. the same `Backend::dropout` call with the same key).
//!
//! Overwrite/accumulate: `dA`, `dB` overwrite (accumulate with `StepOptions::accumulate`);
//! the residual gradient `dres` accumulates (`+=`) through both norms of the block; `dxn`,
//! `datt`, `dact` overwrite on their first contribution (q, gate) and accumulate the others
//! (k, v, up).
//!
//! What the forward does not keep is rebuilt here into `Recomputed` by the forward's own ops:
//! the attention output and its log-sum-exp (always: the attention backward reads them), the
//! two normed inputs and the SwiGLU product (only where a Linear they feed is adapted; frozen
//! Linears never read their input here).

use super::llama_forward::{Ctx, DeviceLayer};
use super::plan::{DropScratch, GradScratch, LayerActs, Recomputed};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lora::{LoraGrads, Target};

impl<B: Backend> Ctx<'_, B> {
    /// Whether any of `targets` of `layer` is adapted (its backward reads the Linear's input).
    fn adapted(&self, layer: usize, targets: &[Target]) -> bool {
        self.lora
            .is_some_and(|s| targets.iter().any(|&t| s.get(layer, t).is_some()))
    }

    /// Backward of [`Ctx::linear_forward`]: `dx = dx_beta·dx + ∂/∂X`, LoRA grads of `(layer, t)`
    /// overwritten (or `+=` when `self.accumulate`). `u` is the saved `[n, r]` bottleneck, `t_r`
    /// an `[n, r]` scratch.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dx: &mut B::Buf,
        dx_beta: f32,
        grads: &mut LoraGrads<B>,
        t_r: Option<&mut B::Buf>,
        drop: Option<&mut DropScratch<B>>,
        dy: &B::Buf,
        x: &B::Buf,
        w: &B::Weight,
        u: Option<&B::Buf>,
        layer: usize,
        t: Target,
    ) -> Result<()> {
        let (be, d) = (self.be, &self.d);
        let (n, out, inp) = (d.n, d.out_dim(t), d.in_dim(t));
        be.gemm_weight(dx, dy, w, n, false, 1.0, dx_beta)?;
        let Some(state) = self.lora else {
            return Ok(());
        };
        let Some(pair) = state.get_compute(layer, t) else {
            return Ok(());
        };
        let missing = |what: &str| {
            Error::shape(
                "llama backward",
                format!("layers.{layer}.{}: {what} missing", t.module_path()),
            )
        };
        let (Some(u), Some(t_r)) = (u, t_r) else {
            return Err(missing("saved lora activation or scratch"));
        };
        let g = grads
            .get_mut(layer, t)
            .ok_or_else(|| missing("gradient buffer"))?;
        let (r, s) = (state.config.rank, state.scaling);
        let beta = if self.accumulate { 1.0 } else { 0.0 };
        be.gemm(&mut g.b, dy, u, out, r, n, true, false, s, beta)?;
        be.gemm(t_r, dy, &pair.b, n, r, out, false, false, 1.0, 0.0)?;
        match drop {
            Some(scr) if self.p > 0.0 => {
                let key = self.key(layer, t);
                let [s0, s1] = scr.for_width(d, inp);
                be.dropout(s0, x, self.p, key)?;
                be.gemm(&mut g.a, t_r, s0, r, inp, n, true, false, s, beta)?;
                be.gemm(s0, t_r, &pair.a, n, inp, r, false, false, s, 0.0)?;
                be.dropout(s1, s0, self.p, key)?;
                be.axpy(dx, 1.0, s1)
            }
            _ => {
                be.gemm(&mut g.a, t_r, x, r, inp, n, true, false, s, beta)?;
                be.gemm(dx, t_r, &pair.a, n, inp, r, false, false, s, 1.0)
            }
        }
    }
}

/// Backward of block `layer`: reads `g.dres` (∂loss/∂block output), leaves ∂loss/∂block
/// input in it, and overwrites the block's LoRA gradients in `grads`. `a` holds the block's
/// forward activations, `x_in` its input; `rc` is scratch for what the forward did not keep.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_backward<B: Backend>(
    cx: &Ctx<'_, B>,
    g: &mut GradScratch<B>,
    grads: &mut LoraGrads<B>,
    mut drop: Option<&mut DropScratch<B>>,
    rc: &mut Recomputed<B>,
    a: &LayerActs<B>,
    x_in: &B::Buf,
    w: &DeviceLayer<B>,
    layer: usize,
) -> Result<()> {
    let (be, d) = (cx.be, &cx.d);
    let u = |t: Target| a.lora_u[t as usize].as_ref();
    // MLP: x_out = x_mid + down(silu(gate(xn2))·up(xn2)), xn2 = rmsnorm(x_mid)
    if cx.adapted(layer, &[Target::Down]) {
        be.swiglu_forward(&mut rc.act, &a.gate, &a.up)?;
    }
    cx.linear_backward(
        &mut g.dact,
        0.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dres,
        &rc.act,
        &w.w_down,
        u(Target::Down),
        layer,
        Target::Down,
    )?;
    be.swiglu_backward(&mut g.dgate, &mut g.dup, &g.dact, &a.gate, &a.up)?;
    if cx.adapted(layer, &[Target::Gate, Target::Up]) {
        let eps = cx.eps;
        be.rmsnorm_forward(
            &mut rc.xn,
            &mut rc.rstd,
            &a.x_mid,
            &w.mlp_norm,
            d.n,
            d.h,
            eps,
        )?;
    }
    cx.linear_backward(
        &mut g.dxn,
        0.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dgate,
        &rc.xn,
        &w.w_gate,
        u(Target::Gate),
        layer,
        Target::Gate,
    )?;
    cx.linear_backward(
        &mut g.dxn,
        1.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dup,
        &rc.xn,
        &w.w_up,
        u(Target::Up),
        layer,
        Target::Up,
    )?;
    be.rmsnorm_backward(
        &mut g.dres,
        &g.dxn,
        &a.x_mid,
        &w.mlp_norm,
        &a.rstd2,
        d.n,
        d.h,
    )?;
    // attention: x_mid = x_in + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))), xn1 = rmsnorm(x_in)
    be.attention_forward(
        &mut rc.att,
        &mut rc.lse,
        &a.q,
        &a.k,
        &a.v,
        cx.starts,
        d.batch,
        d.seq,
        d.heads,
        d.kv_heads,
        d.hd,
    )?;
    cx.linear_backward(
        &mut g.datt,
        0.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dres,
        &rc.att,
        &w.wo,
        u(Target::O),
        layer,
        Target::O,
    )?;
    be.attention_backward(
        &mut g.dq, &mut g.dk, &mut g.dv, &g.datt, &a.q, &a.k, &a.v, &rc.att, &rc.lse, cx.starts,
        d.batch, d.seq, d.heads, d.kv_heads, d.hd,
    )?;
    be.rope(&mut g.dq, cx.rope, cx.positions, d.n, d.heads, true)?;
    be.rope(&mut g.dk, cx.rope, cx.positions, d.n, d.kv_heads, true)?;
    if cx.adapted(layer, &[Target::Q, Target::K, Target::V]) {
        let eps = cx.eps;
        be.rmsnorm_forward(&mut rc.xn, &mut rc.rstd, x_in, &w.attn_norm, d.n, d.h, eps)?;
    }
    cx.linear_backward(
        &mut g.dxn,
        0.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dq,
        &rc.xn,
        &w.wq,
        u(Target::Q),
        layer,
        Target::Q,
    )?;
    cx.linear_backward(
        &mut g.dxn,
        1.0,
        grads,
        g.t_r.as_mut(),
        drop.as_deref_mut(),
        &g.dk,
        &rc.xn,
        &w.wk,
        u(Target::K),
        layer,
        Target::K,
    )?;
    cx.linear_backward(
        &mut g.dxn,
        1.0,
        grads,
        g.t_r.as_mut(),
        drop,
        &g.dv,
        &rc.xn,
        &w.wv,
        u(Target::V),
        layer,
        Target::V,
    )?;
    be.rmsnorm_backward(&mut g.dres, &g.dxn, x_in, &w.attn_norm, &a.rstd1, d.n, d.h)
}
