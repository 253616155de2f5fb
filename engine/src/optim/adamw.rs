//! AdamW over a fixed list of parameter buffers, as `torch.optim.AdamW` (decoupled weight
//! decay, bias correction, no amsgrad): the per-element update is `Backend::adamw`; this file
//! owns the moments `m`, `v` (one buffer per parameter, allocated once), the step counter and
//! the checkpoint state.
//!
//! The caller (train/) passes the parameters and gradients in the same order at every step
//! (the order the moments were allocated in) and takes the learning rate from the schedule
//! (schedule.rs). [`AdamWState`] holds the moments and step as host f32 vectors so a trainer
//! can write them next to the adapter and resume bit-identically.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// AdamW hyper-parameters other than the learning rate (which comes from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Decay of the first moment (torch `betas[0]`).
    pub beta1: f32,
    /// Decay of the second moment (torch `betas[1]`).
    pub beta2: f32,
    /// Added to `sqrt(v̂)` in the denominator.
    pub eps: f32,
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` before the Adam update.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// The ranges torch accepts: `0 <= beta < 1`, `eps >= 0`, `weight_decay >= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        const SRC: &str = "adamw";
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::config(
                    SRC,
                    field,
                    format!("must be in [0, 1), got {beta}"),
                ));
            }
        }
        for (field, x) in [("eps", self.eps), ("weight_decay", self.weight_decay)] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(Error::config(
                    SRC,
                    field,
                    format!("must be a non-negative finite number, got {x}"),
                ));
            }
        }
        Ok(())
    }
}

/// The optimiser's state on the host, for checkpoints: `m[i]`, `v[i]` are the moments of
/// parameter `i` (torch's `exp_avg`, `exp_avg_sq`), `step` the number of updates taken.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    /// Updates taken so far (torch's `state["step"]`).
    pub step: u32,
    /// First moments, one vector per parameter, in parameter order.
    pub m: Vec<Vec<f32>>,
    /// Second moments, one vector per parameter, in parameter order.
    pub v: Vec<Vec<f32>>,
}

/// AdamW for a fixed list of parameters on backend `B`.
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    /// Per parameter `i`: first moment, `[len(param i)]`.
    m: Vec<B::Buf>,
    /// Per parameter `i`: second moment, `[len(param i)]`.
    v: Vec<B::Buf>,
    /// Per parameter: its number of values.
    lens: Vec<usize>,
    /// Updates taken so far; the next update uses `step + 1` for bias correction.
    step: u32,
}

impl<B: Backend> AdamW<B> {
    /// An optimiser for parameters of the given lengths (in the order `step` will receive
    /// them), with zeroed moments and step 0.
    pub fn new(backend: &B, config: AdamWConfig, param_lens: &[usize]) -> Result<Self> {
        config.validate()?;
        let mut m = Vec::with_capacity(param_lens.len());
        let mut v = Vec::with_capacity(param_lens.len());
        for &len in param_lens {
            m.push(backend.alloc(len)?);
            v.push(backend.alloc(len)?);
        }
        Ok(AdamW {
            config,
            m,
            v,
            lens: param_lens.to_vec(),
            step: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Updates taken so far.
    pub fn steps_taken(&self) -> u32 {
        self.step
    }

    /// Number of parameters this optimiser was built for.
    pub fn num_params(&self) -> usize {
        self.lens.len()
    }

    /// One AdamW update of every parameter from its gradient, with learning rate `lr`.
    /// Checks the lengths and `lr` before touching anything.
    pub fn step(
        &mut self,
        backend: &B,
        params: &mut [&mut B::Buf],
        grads: &[&B::Buf],
        lr: f32,
    ) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::config(
                "adamw",
                "lr",
                format!("must be a non-negative finite number, got {lr}"),
            ));
        }
        if params.len() != self.lens.len() || grads.len() != self.lens.len() {
            return Err(Error::shape(
                "adamw",
                format!(
                    "optimiser built for {} parameters, got {} parameters and {} gradients",
                    self.lens.len(),
                    params.len(),
                    grads.len()
                ),
            ));
        }
        for (i, ((p, g), &len)) in params.iter().zip(grads).zip(&self.lens).enumerate() {
            let (pl, gl) = (backend.len(p), backend.len(g));
            if pl != len || gl != len {
                return Err(Error::shape(
                    "adamw",
                    format!("parameter {i}: expected {len} values, got param {pl}, grad {gl}"),
                ));
            }
        }
        let step = self
            .step
            .checked_add(1)
            .ok_or_else(|| Error::config("adamw", "step", "step counter overflowed u32"))?;
        let c = self.config;
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            backend.adamw(
                p,
                g,
                m,
                v,
                lr,
                c.beta1,
                c.beta2,
                c.eps,
                c.weight_decay,
                step,
            )?;
        }
        self.step = step;
        Ok(())
    }

    /// The moments and step counter on the host, for a checkpoint.
    pub fn state(&self, backend: &B) -> Result<AdamWState> {
        let m = self
            .m
            .iter()
            .map(|b| backend.download(b))
            .collect::<Result<Vec<_>>>()?;
        let v = self
            .v
            .iter()
            .map(|b| backend.download(b))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamWState {
            step: self.step,
            m,
            v,
        })
    }

    /// Restore the moments and step counter from a checkpoint; errors (changing nothing) when
    /// the number or lengths of the vectors do not match this optimiser's parameters.
    pub fn load_state(&mut self, backend: &B, state: &AdamWState) -> Result<()> {
        let n = self.lens.len();
        if state.m.len() != n || state.v.len() != n {
            return Err(Error::shape(
                "adamw load_state",
                format!(
                    "optimiser has {n} parameters, state has {} first and {} second moments",
                    state.m.len(),
                    state.v.len()
                ),
            ));
        }
        for (i, ((m, v), &len)) in state.m.iter().zip(&state.v).zip(&self.lens).enumerate() {
            if m.len() != len || v.len() != len {
                return Err(Error::shape(
                    "adamw load_state",
                    format!(
                        "parameter {i}: expected {len} values, state has m {}, v {}",
                        m.len(),
                        v.len()
                    ),
                ));
            }
        }
        // Copy into the existing buffers so their identity (and any captured pointer) stays.
        for (((dm, dv), m), v) in self
            .m
            .iter_mut()
            .zip(self.v.iter_mut())
            .zip(&state.m)
            .zip(&state.v)
        {
            backend.copy(dm, &backend.upload(m)?)?;
            backend.copy(dv, &backend.upload(v)?)?;
        }
        self.step = state.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::error::ErrorKind;
    use crate::optim::tests_support::{load_fixture, vec_f32, vecs};

    fn close(got: &[f32], want: &[f32], rtol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rtol * w.abs() + 1e-9,
                "{what}[{j}]: {g} vs torch {w}"
            );
        }
    }

    fn download_all(be: &CpuBackend, bufs: &[<CpuBackend as Backend>::Buf]) -> Vec<Vec<f32>> {
        bufs.iter().map(|b| be.download(b).unwrap()).collect()
    }

    /// tests/fixtures/adamw_torch.json, from tools/make_optim_fixtures.py (torch 2.15,
    /// torch.optim.AdamW(foreach=False), a different lr at each of 5 steps).
    #[test]
    fn matches_torch_adamw_over_five_steps() {
        let fx = load_fixture("adamw_torch.json");
        let betas = vec_f32(&fx["betas"]);
        let config = AdamWConfig {
            beta1: betas[0],
            beta2: betas[1],
            eps: fx["eps"].as_f64().unwrap() as f32,
            weight_decay: fx["weight_decay"].as_f64().unwrap() as f32,
        };
        let be: CpuBackend = CpuBackend::new();
        let init = vecs(&fx["init"]);
        let lens: Vec<usize> = init.iter().map(Vec::len).collect();
        let mut params: Vec<_> = init.iter().map(|p| be.upload(p).unwrap()).collect();
        let mut opt = AdamW::new(&be, config, &lens).unwrap();
        let lrs = vec_f32(&fx["lrs"]);
        let steps = fx["grads"].as_array().unwrap();
        assert_eq!(steps.len(), 5);
        for (s, (grads, want)) in steps
            .iter()
            .zip(fx["params"].as_array().unwrap())
            .enumerate()
        {
            let grads: Vec<_> = vecs(grads).iter().map(|g| be.upload(g).unwrap()).collect();
            let grad_refs: Vec<&_> = grads.iter().collect();
            let mut param_refs: Vec<&mut _> = params.iter_mut().collect();
            opt.step(&be, &mut param_refs, &grad_refs, lrs[s]).unwrap();
            for (i, (got, want)) in download_all(&be, &params)
                .iter()
                .zip(vecs(want))
                .enumerate()
            {
                close(got, &want, 1e-6, &format!("step {} param {i}", s + 1));
            }
        }
        assert_eq!(opt.steps_taken(), 5);
        let state = opt.state(&be).unwrap();
        for (i, (m, w)) in state.m.iter().zip(vecs(&fx["exp_avg"])).enumerate() {
            close(m, &w, 1e-6, &format!("exp_avg {i}"));
        }
        // The trait passes beta2 as f32: 1 - f32(0.999) = 0.00099998713 where torch's Python
        // double gives 0.001, a 1.3e-5 relative difference in each v increment (the params
        // above still agree to 1e-6 because v enters through sqrt next to the first moment).
        for (i, (v, w)) in state.v.iter().zip(vecs(&fx["exp_avg_sq"])).enumerate() {
            close(v, &w, 2e-5, &format!("exp_avg_sq {i}"));
        }
    }

    /// Deterministic pseudo-random values (no RNG dependency needed for a resume check).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 1.0) * 0.731 + seed as f32 * 1.37).sin())
            .collect()
    }

    #[test]
    fn resume_from_state_is_bit_identical() {
        let be: CpuBackend = CpuBackend::new();
        let lens = [7usize, 3, 12];
        let init: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| values(n, i as u32))
            .collect();
        let grads_at = |step: u32| -> Vec<_> {
            lens.iter()
                .enumerate()
                .map(|(i, &n)| be.upload(&values(n, 100 + 10 * step + i as u32)).unwrap())
                .collect()
        };
        let run =
            |opt: &mut AdamW<CpuBackend>, params: &mut Vec<_>, range: std::ops::Range<u32>| {
                for s in range {
                    let grads = grads_at(s);
                    let grad_refs: Vec<&_> = grads.iter().collect();
                    let mut param_refs: Vec<&mut _> = params.iter_mut().collect();
                    opt.step(&be, &mut param_refs, &grad_refs, 1e-2 / (s + 1) as f32)
                        .unwrap();
                }
            };
        let config = AdamWConfig::default();

        let mut full_params: Vec<_> = init.iter().map(|p| be.upload(p).unwrap()).collect();
        let mut full = AdamW::new(&be, config, &lens).unwrap();
        run(&mut full, &mut full_params, 0..5);

        let mut first_params: Vec<_> = init.iter().map(|p| be.upload(p).unwrap()).collect();
        let mut first = AdamW::new(&be, config, &lens).unwrap();
        run(&mut first, &mut first_params, 0..2);
        let saved = first.state(&be).unwrap();
        let saved_params = download_all(&be, &first_params);
        drop(first);

        let mut resumed_params: Vec<_> =
            saved_params.iter().map(|p| be.upload(p).unwrap()).collect();
        let mut resumed = AdamW::new(&be, config, &lens).unwrap();
        resumed.load_state(&be, &saved).unwrap();
        assert_eq!(resumed.steps_taken(), 2);
        run(&mut resumed, &mut resumed_params, 2..5);

        let bits = |v: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            v.into_iter()
                .map(|x| x.into_iter().map(f32::to_bits).collect())
                .collect()
        };
        assert_eq!(
            bits(download_all(&be, &resumed_params)),
            bits(download_all(&be, &full_params))
        );
        let (a, b) = (resumed.state(&be).unwrap(), full.state(&be).unwrap());
        assert_eq!(a.step, 5);
        assert_eq!((bits(a.m), bits(a.v)), (bits(b.m), bits(b.v)));
        // And the update did something: the parameters moved from their initial values.
        assert_ne!(bits(download_all(&be, &full_params)), bits(init));
    }

    fn field_of(e: Error) -> String {
        match e.kind() {
            ErrorKind::Config { field, .. } => field.clone(),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_hyper_parameters() {
        let be: CpuBackend = CpuBackend::new();
        let d = AdamWConfig::default();
        let bad = [
            (AdamWConfig { beta1: 1.0, ..d }, "beta1"),
            (AdamWConfig { beta1: -0.1, ..d }, "beta1"),
            (
                AdamWConfig {
                    beta2: f32::NAN,
                    ..d
                },
                "beta2",
            ),
            (AdamWConfig { eps: -1e-8, ..d }, "eps"),
            (
                AdamWConfig {
                    weight_decay: f32::INFINITY,
                    ..d
                },
                "weight_decay",
            ),
        ];
        for (config, field) in bad {
            let e = AdamW::new(&be, config, &[4]).err().expect("must fail");
            assert_eq!(field_of(e), field, "{config:?}");
        }
        let mut opt = AdamW::new(&be, d, &[4]).unwrap();
        let mut p = be.upload(&[1.0; 4]).unwrap();
        let g = be.upload(&[1.0; 4]).unwrap();
        for lr in [-1.0, f32::NAN] {
            let e = opt.step(&be, &mut [&mut p], &[&g], lr).unwrap_err();
            assert_eq!(field_of(e), "lr");
        }
        assert_eq!(opt.steps_taken(), 0);
    }

    #[test]
    fn rejects_mismatched_lists_without_changing_state() {
        let be: CpuBackend = CpuBackend::new();
        let mut opt = AdamW::new(&be, AdamWConfig::default(), &[4, 2]).unwrap();
        let mut p0 = be.upload(&[1.0; 4]).unwrap();
        let mut p1 = be.upload(&[1.0; 3]).unwrap();
        let g0 = be.upload(&[1.0; 4]).unwrap();
        let g1 = be.upload(&[1.0; 3]).unwrap();
        // Wrong count, then wrong length of the second parameter.
        let e = opt.step(&be, &mut [&mut p0], &[&g0], 1e-3).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Shape { .. }), "{e}");
        let e = opt
            .step(&be, &mut [&mut p0, &mut p1], &[&g0, &g1], 1e-3)
            .unwrap_err();
        assert!(e.to_string().contains("parameter 1"), "{e}");
        assert_eq!(opt.steps_taken(), 0);
        assert_eq!(be.download(&p0).unwrap(), vec![1.0; 4]);

        let mut state = opt.state(&be).unwrap();
        state.v[1].push(0.0);
        let e = opt.load_state(&be, &state).unwrap_err();
        assert!(e.to_string().contains("parameter 1"), "{e}");
        state.m.pop();
        assert!(opt.load_state(&be, &state).is_err());
    }
}
