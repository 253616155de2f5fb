//! AdamW of the CPU backend, as torch.optim.AdamW computes it (single-tensor path,
//! `foreach=False`, not fused), elementwise in rayon chunks.
//!
//! Scalars are computed in f64 from the f64 arguments, as Python computes them, then rounded
//! to `T`: `decay = 1 − lr·wd`, `bc1 = 1 − β1^step`, `bc2 = 1 − β2^step`,
//! `step_size = lr / bc1`, `bc2_sqrt = sqrt(bc2)`. Then per element, in `T`:
//! ```text
//! p ← p · decay
//! m ← lerp(m, g, 1 − β1)           // torch's lerp: w < 0.5 ? m + w·(g − m) : g − (g − m)·(1 − w),
//!                                  // each as one fused multiply-add, like torch's vector kernel
//! v ← v · β2 + ((1 − β2) · g) · g  // mul_ then addcmul_
//! denom = sqrt(v) / bc2_sqrt + eps
//! p ← p + ((−step_size) · m) / denom   // addcdiv_
//! ```
//! which is `m ← β1 m + (1−β1) g` and `p ← p − step_size·m/denom` up to rounding.

use rayon::prelude::*;

use super::Real;

/// Elements per rayon work item.
const CHUNK: usize = 1 << 14;

/// The per-step scalars of one AdamW update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hyper {
    pub(crate) decay: f64,
    pub(crate) lerp_w: f64,
    pub(crate) beta2: f64,
    pub(crate) one_minus_beta2: f64,
    pub(crate) bc2_sqrt: f64,
    pub(crate) neg_step_size: f64,
    pub(crate) eps: f64,
}

impl Hyper {
    /// The scalars for the 1-based `step`.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, step: u32) -> Self {
        let (b1, b2) = (beta1, beta2);
        let step = i32::try_from(step).unwrap_or(i32::MAX);
        let bc1 = 1.0 - b1.powi(step);
        let bc2 = 1.0 - b2.powi(step);
        Hyper {
            decay: 1.0 - lr * weight_decay,
            lerp_w: 1.0 - b1,
            beta2: b2,
            one_minus_beta2: 1.0 - b2,
            bc2_sqrt: bc2.sqrt(),
            neg_step_size: -(lr / bc1),
            eps,
        }
    }
}

/// One AdamW step over `param`, with moments `m`, `v`, for gradient `grad`.
pub(crate) fn adamw<T: Real>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], h: &Hyper) {
    let decay = T::from_f64(h.decay);
    let w = T::from_f64(h.lerp_w);
    let small = h.lerp_w.abs() < 0.5;
    let w_minus_1 = T::from_f64(h.lerp_w) - T::ONE;
    let beta2 = T::from_f64(h.beta2);
    let omb2 = T::from_f64(h.one_minus_beta2);
    let bc2_sqrt = T::from_f64(h.bc2_sqrt);
    let nss = T::from_f64(h.neg_step_size);
    let eps = T::from_f64(h.eps);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i];
                let pi = p[i] * decay;
                let diff = gi - m[i];
                let mi = if small {
                    w.mul_add(diff, m[i])
                } else {
                    w_minus_1.mul_add(diff, gi)
                };
                let vi = v[i] * beta2 + (omb2 * gi) * gi;
                let denom = vi.sqrt() / bc2_sqrt + eps;
                p[i] = pi + (nss * mi) / denom;
                m[i] = mi;
                v[i] = vi;
            }
        });
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::testutil::{randn_f32, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// Textbook AdamW in f64 (decoupled decay, bias-corrected moments).
    #[allow(clippy::too_many_arguments)]
    fn scalar_adamw(
        p: &mut f64,
        g: f64,
        m: &mut f64,
        v: &mut f64,
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        wd: f64,
        step: i32,
    ) {
        *p *= 1.0 - lr * wd;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let bc1 = 1.0 - b1.powi(step);
        let bc2 = 1.0 - b2.powi(step);
        let denom = v.sqrt() / bc2.sqrt() + eps;
        *p -= lr / bc1 * *m / denom;
    }

    #[test]
    fn matches_scalar_formula_over_steps() {
        let be = CpuBackend::<f32>::new();
        let n = 40_000;
        let mut rng = Rng(9);
        let mut p = randn_f32(&mut rng, n);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut rp: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
        let (mut rm, mut rv) = (vec![0.0f64; n], vec![0.0f64; n]);
        let (lr, b1, b2, eps, wd) = (1e-2f64, 0.9f64, 0.999f64, 1e-8f64, 0.1f64);
        for step in 1..=3u32 {
            let g = randn_f32(&mut rng, n);
            be.adamw(&mut p, &g, &mut m, &mut v, lr, b1, b2, eps, wd, step)
                .unwrap();
            for i in 0..n {
                scalar_adamw(
                    &mut rp[i],
                    f64::from(g[i]),
                    &mut rm[i],
                    &mut rv[i],
                    lr,
                    b1,
                    b2,
                    eps,
                    wd,
                    step as i32,
                );
            }
        }
        for i in 0..n {
            assert!(
                (f64::from(p[i]) - rp[i]).abs() < 2e-6 * rp[i].abs().max(1.0),
                "p[{i}]"
            );
            assert!(
                (f64::from(m[i]) - rm[i]).abs() < 1e-6 * rm[i].abs().max(0.1),
                "m[{i}]"
            );
            assert!(
                (f64::from(v[i]) - rv[i]).abs() < 1e-5 * rv[i].abs().max(1e-3),
                "v[{i}]"
            );
        }
        // The first step moves every parameter by about lr (Adam's normalised step).
        let mut p1 = vec![0.0f32; 4];
        let (mut m1, mut v1) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        be.adamw(
            &mut p1,
            &vec![1.0, -2.0, 3.0, -4.0],
            &mut m1,
            &mut v1,
            0.1,
            0.9,
            0.999,
            1e-8,
            0.0,
            1,
        )
        .unwrap();
        for (x, s) in p1.iter().zip([-1.0f32, 1.0, -1.0, 1.0]) {
            assert!((x - 0.1 * s).abs() < 1e-6, "{x}");
        }
        assert!(be
            .adamw(
                &mut p1,
                &vec![0.0; 3],
                &mut m1,
                &mut v1,
                0.1,
                0.9,
                0.999,
                1e-8,
                0.0,
                1
            )
            .is_err());
        assert!(be
            .adamw(
                &mut p1,
                &vec![0.0; 4],
                &mut m1,
                &mut v1,
                0.1,
                0.9,
                0.999,
                1e-8,
                0.0,
                0
            )
            .is_err());
    }
}
