//! SwiGLU of the CPU backend, elementwise over `[n, f]` flattened, in rayon chunks.
//!
//! Forward: `σ(g) = 1/(1 + e^(−g))`, `silu(g) = g·σ(g)`, `out = silu(g)·up`.
//! Backward (overwrites): `dup = dout·silu(g)`,
//! `dgate = dout·up·σ(g)·(1 + g·(1 − σ(g)))`.

use rayon::prelude::*;

use super::Real;

/// Elements per rayon work item.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp())
}

/// `out = silu(gate) · up`.
pub(crate) fn forward<T: Real>(out: &mut [T], gate: &[T], up: &[T]) {
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        });
}

/// `dgate`, `dup` = gradients of [`forward`] for `dout`.
pub(crate) fn backward<T: Real>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dy), (gate, up))| {
            for i in 0..dg.len() {
                let (g, u, d) = (gate[i], up[i], dy[i]);
                let s = sigmoid(g);
                du[i] = d * (g * s);
                dg[i] = d * u * s * (T::ONE + g * (T::ONE - s));
            }
        });
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
