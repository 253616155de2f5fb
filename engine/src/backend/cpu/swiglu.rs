//! SwiGLU of the CPU backend, elementwise over `[n, f]` flattened, in rayon chunks.
//!
//! Forward: `silu(g) = g/(1 + e^(−g))` (torch's form), `out = silu(g)·up`.
//! Backward (overwrites), with `σ(g) = 1/(1 + e^(−g))`: `dup = dout·(g·σ(g))`,
//! `dgate = dout·up·σ(g)·(1 + g·(1 − σ(g)))`. `e^x` is `simd.rs`'s vectorisable exp.

use rayon::prelude::*;

use super::simd::dispatch;
use super::Real;

/// Elements per rayon work item.
const CHUNK: usize = 1 << 14;

/// σ(g) with the vectorisable exp (`simd.rs`).
#[inline(always)]
fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp_fast())
}

#[inline(always)]
fn forward_impl<T: Real>(out: &mut [T], gate: &[T], up: &[T]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (T::ONE + (-g).exp_fast()) * u;
    }
}

#[inline(always)]
fn backward_impl<T: Real>(dg: &mut [T], du: &mut [T], dy: &[T], gate: &[T], up: &[T]) {
    let n = dg
        .len()
        .min(du.len())
        .min(dy.len())
        .min(gate.len())
        .min(up.len());
    let (dg, du, dy, gate, up) = (&mut dg[..n], &mut du[..n], &dy[..n], &gate[..n], &up[..n]);
    for i in 0..n {
        let (g, u, d) = (gate[i], up[i], dy[i]);
        let s = sigmoid(g);
        du[i] = d * (g * s);
        dg[i] = d * u * s * (T::ONE + g * (T::ONE - s));
    }
}

dispatch!(
    /// One chunk of the forward.
    forward_chunk, forward_chunk_avx2, forward_impl,
    (out: &mut [T], gate: &[T], up: &[T]) -> ()
);
dispatch!(
    /// One chunk of the backward.
    backward_chunk, backward_chunk_avx2, backward_impl,
    (dg: &mut [T], du: &mut [T], dy: &[T], gate: &[T], up: &[T]) -> ()
);

/// `out = silu(gate) · up`.
pub(crate) fn forward<T: Real>(out: &mut [T], gate: &[T], up: &[T]) {
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| forward_chunk(out, gate, up));
}

/// `dgate`, `dup` = gradients of [`forward`] for `dout`.
pub(crate) fn backward<T: Real>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dy), (gate, up))| backward_chunk(dg, du, dy, gate, up));
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::testutil::{check_grad, dot, randn, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    #[test]
    fn forward_and_backward_match_definition_and_finite_differences() {
        let be = CpuBackend::<f64>::new();
        let n = 37;
        let mut rng = Rng(8);
        let gate: Vec<f64> = randn(&mut rng, n).iter().map(|v| 3.0 * v).collect();
        let up = randn(&mut rng, n);
        let dy = randn(&mut rng, n);
        let mut out = vec![0.0; n];
        be.swiglu_forward(&mut out, &gate, &up).unwrap();
        for i in 0..n {
            let want = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
            assert!((out[i] - want).abs() < 1e-14);
        }
        let (mut dg, mut du) = (vec![f64::NAN; n], vec![f64::NAN; n]);
        be.swiglu_backward(&mut dg, &mut du, &dy, &gate, &up)
            .unwrap();
        let fwd = |g: &[f64], u: &[f64]| {
            let mut o = vec![0.0; n];
            be.swiglu_forward(&mut o, &g.to_vec(), &u.to_vec()).unwrap();
            dot(&dy, &o)
        };
        check_grad("swiglu dgate", &gate, &dg, None, 1e-7, |g| fwd(g, &up));
        check_grad("swiglu dup", &up, &du, None, 1e-7, |u| fwd(&gate, u));
        assert!(be
            .swiglu_forward(&mut out, &gate, &up[1..].to_vec())
            .is_err());
    }
}
