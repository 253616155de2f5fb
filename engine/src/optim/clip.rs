//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` (norm type 2):
//! `total = sqrt(Σ_params Σ g²)`, `coef = max_norm / (total + 1e-6)`, every gradient scaled
//! by `min(coef, 1)`.
//!
//! The sums of squares come from `Backend::sum_squares_each` (f64, fixed order; one device
//! sync for all tensors) and are added in the order the gradients are given, so the norm is
//! deterministic. torch accumulates in f32;
//! the f64 norm here agrees with it to f32 rounding. Used by the trainer (train/) between the
//! backward and [`AdamW::step`](super::AdamW::step).

use crate::backend::Backend;
use crate::error::{Error, Result};

/// torch's guard against division by zero in the clip coefficient.
const CLIP_EPS: f64 = 1e-6;

/// The global L2 norm of `grads` viewed as one vector, in f64: the per-tensor sums of
/// squares from one [`Backend::sum_squares_each`] call (one device sync), added on the host
/// from 0 in the order given.
pub fn global_norm<B: Backend>(backend: &B, grads: &[&B::Buf]) -> Result<f64> {
    let sums = backend.sum_squares_each(grads)?;
    Ok(sums.iter().fold(0.0f64, |acc, &s| acc + s).sqrt())
}

/// Clip `grads` in place to a global L2 norm of at most `max_norm`; returns the norm before
/// clipping (what HF logs as `grad_norm`).
///
/// When the norm is not finite the gradients are left as they are (torch would scale them by
/// NaN) and the norm is returned, so the caller can skip the step. Errors when `max_norm` is
/// not a positive finite number.
pub fn clip_grad_norm<B: Backend>(
    backend: &B,
    grads: &mut [&mut B::Buf],
    max_norm: f32,
) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::config(
            "gradient clipping",
            "max_grad_norm",
            format!("must be a positive finite number, got {max_norm}"),
        ));
    }
    let refs: Vec<&B::Buf> = grads.iter().map(|g| &**g).collect();
    let total = global_norm(backend, &refs)?;
    if !total.is_finite() {
        return Ok(total);
    }
    let coef = f64::from(max_norm) / (total + CLIP_EPS);
    if coef < 1.0 {
        // Scaling by the clamped 1.0 would be the identity, so only scale below it.
        for g in grads.iter_mut() {
            backend.scale(g, coef as f32)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::optim::tests_support::{load_fixture, vecs};

    /// tests/fixtures/clip_torch.json, from tools/make_optim_fixtures.py (torch 2.15).
    #[test]
    fn matches_torch_clip_grad_norm() {
        let fx = load_fixture("clip_torch.json");
        let be: CpuBackend = CpuBackend::new();
        let cases = fx["cases"].as_array().unwrap();
        let mut clipped_any = false;
        let mut unclipped_any = false;
        for case in cases {
            let max_norm = case["max_norm"].as_f64().unwrap() as f32;
            let grads = vecs(&case["grads"]);
            let want = vecs(&case["clipped"]);
            let want_norm = case["total_norm"].as_f64().unwrap();
            let mut bufs: Vec<_> = grads.iter().map(|g| be.upload(g).unwrap()).collect();
            let mut refs: Vec<&mut _> = bufs.iter_mut().collect();
            let norm = clip_grad_norm(&be, &mut refs, max_norm).unwrap();
            assert!(
                (norm - want_norm).abs() <= 1e-6 * want_norm,
                "norm {norm} vs torch {want_norm}"
            );
            if want_norm > f64::from(max_norm) {
                clipped_any = true;
            } else {
                unclipped_any = true;
            }
            for (i, (b, w)) in bufs.iter().zip(&want).enumerate() {
                let got = be.download(b).unwrap();
                for (j, (g, w)) in got.iter().zip(w).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs() + 1e-9,
                        "max_norm {max_norm} tensor {i}[{j}]: {g} vs torch {w}"
                    );
                }
            }
        }
        assert!(
            clipped_any && unclipped_any,
            "fixture must cover both branches"
        );
    }

    #[test]
    fn global_norm_is_the_norm_of_the_concatenation() {
        let be: CpuBackend = CpuBackend::new();
        let a = be.upload(&[3.0, 0.0]).unwrap();
        let b = be.upload(&[4.0]).unwrap();
        assert_eq!(global_norm(&be, &[&a, &b]).unwrap(), 5.0);
        assert_eq!(global_norm::<CpuBackend>(&be, &[]).unwrap(), 0.0);
    }

    #[test]
    fn non_finite_norm_leaves_grads_and_bad_max_norm_errors() {
        let be: CpuBackend = CpuBackend::new();
        let mut a = be.upload(&[f32::NAN, 1.0]).unwrap();
        let norm = clip_grad_norm(&be, &mut [&mut a], 1.0).unwrap();
        assert!(norm.is_nan());
        assert_eq!(be.download(&a).unwrap()[1], 1.0);
        for bad in [0.0, -1.0, f32::INFINITY, f32::NAN] {
            let e = clip_grad_norm(&be, &mut [&mut a], bad).unwrap_err();
            assert!(e.to_string().contains("max_grad_norm"), "{e}");
        }
    }
}
