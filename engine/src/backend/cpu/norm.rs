//! RMSNorm of the CPU backend, one rayon item per token row of width `h`.
//!
//! Forward: `r = 1/sqrt((Σⱼ xⱼ²)/h + eps)`, `outⱼ = (xⱼ·r)·wⱼ` (HF's order: normalise, then
//! scale by the weight); saves `r` per row.
//! Backward (accumulates): with `g = Σₖ wₖ·doutₖ·xₖ`,
//! `dxⱼ += r·wⱼ·doutⱼ − (r³/h)·g·xⱼ`. The weight is frozen, so it gets no gradient.
//! Sums are lane-ordered dot products (`simd.rs`), so they do not depend on threads.
//! Lengths are checked by the caller (`mod.rs`).

use rayon::prelude::*;

use super::simd::dot;
use super::Real;

/// `out = x · rstd · w` per row; `rstd[t] = 1/sqrt(mean(x[t]²) + eps)`.
pub(crate) fn rmsnorm_forward<T: Real>(
    out: &mut [T],
    rstd: &mut [T],
    x: &[T],
    w: &[T],
    h: usize,
    eps: T,
) {
    if h == 0 {
        return;
    }
    let hf = T::from_f64(h as f64);
    out.par_chunks_mut(h)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(h))
        .for_each(|((out, r), x)| {
            let ss = dot(x, x);
            let rs = T::ONE / (ss / hf + eps).sqrt();
            *r = rs;
            for ((o, &v), &wj) in out.iter_mut().zip(x).zip(w) {
                *o = (v * rs) * wj;
            }
        });
}

/// `dx += ∂out/∂x · dout` given the saved `rstd`.
pub(crate) fn rmsnorm_backward<T: Real>(
    dx: &mut [T],
    dout: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    h: usize,
) {
    if h == 0 {
        return;
    }
    let inv_h = T::ONE / T::from_f64(h as f64);
    dx.par_chunks_mut(h)
        .zip(dout.par_chunks(h))
        .zip(x.par_chunks(h))
        .zip(rstd.par_iter())
        .for_each_init(Vec::new, |wdy, (((dx, dy), x), &r)| {
            wdy.clear();
            wdy.extend(dy.iter().zip(w).map(|(&dyj, &wj)| wj * dyj));
            let g = dot(wdy, x);
            let c = r * r * r * inv_h * g;
            for (((d, &dyj), &xj), &wj) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                *d += r * wj * dyj - c * xj;
            }
        });
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::testutil::{check_grad, dot, randn, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    #[test]
    fn forward_matches_definition() {
        let be = CpuBackend::<f64>::new();
        let (n, h) = (3, 7);
        let mut rng = Rng(3);
        let x = randn(&mut rng, n * h);
        let w = randn(&mut rng, h);
        let mut out = vec![0.0; n * h];
        let mut rstd = vec![0.0; n];
        be.rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, h, 1e-5)
            .unwrap();
        for t in 0..n {
            let ms: f64 = x[t * h..(t + 1) * h].iter().map(|v| v * v).sum::<f64>() / h as f64;
            let r = 1.0 / (ms + 1e-5f32 as f64).sqrt();
            assert!((rstd[t] - r).abs() < 1e-12);
            for j in 0..h {
                assert!((out[t * h + j] - x[t * h + j] * r * w[j]).abs() < 1e-12);
            }
        }
        let mut bad = vec![0.0; n];
        assert!(be
            .rmsnorm_forward(&mut out, &mut bad, &x, &w, n, h + 1, 1e-5)
            .is_err());
    }

    #[test]
    fn backward_matches_finite_differences_and_accumulates() {
        let be = CpuBackend::<f64>::new();
        let (n, h) = (4, 9);
        let mut rng = Rng(4);
        let x = randn(&mut rng, n * h);
        let w = randn(&mut rng, h);
        let dy = randn(&mut rng, n * h);
        let eps = 1e-5f32;
        let loss = |x: &[f64]| {
            let mut out = vec![0.0; n * h];
            let mut rstd = vec![0.0; n];
            be.rmsnorm_forward(&mut out, &mut rstd, &x.to_vec(), &w, n, h, eps)
                .unwrap();
            dot(&dy, &out)
        };
        let mut out = vec![0.0; n * h];
        let mut rstd = vec![0.0; n];
        be.rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, h, eps)
            .unwrap();
        let base = randn(&mut rng, n * h);
        let mut dx = base.clone();
        be.rmsnorm_backward(&mut dx, &dy, &x, &w, &rstd, n, h)
            .unwrap();
        let grad: Vec<f64> = dx.iter().zip(&base).map(|(a, b)| a - b).collect();
        check_grad("rmsnorm dx", &x, &grad, None, 1e-7, loss);
    }
}
