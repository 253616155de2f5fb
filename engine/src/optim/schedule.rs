//! Learning-rate schedules exactly as HF transformers computes them through torch's
//! `LambdaLR`: `lr = base_lr * lambda(step)` in f64, with `lambda` from
//! `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//! `get_cosine_schedule_with_warmup` (num_cycles 0.5, min_lr_rate 0).
//!
//! `step` is 0-based as `LambdaLR` sees it: the update of the k-th optimiser step (the HF
//! Trainer calls `optimizer.step()` then `scheduler.step()`) uses `lr_at(k)`. The trainer
//! (train/) casts the result to f32 for `Backend::adamw` (see adamw.rs).

use std::f64::consts::PI;

use crate::error::{Error, Result};

/// Which HF schedule; all three ramp linearly from 0 over `warmup_steps` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `get_constant_schedule_with_warmup`: `base_lr` after the warmup.
    Constant,
    /// `get_linear_schedule_with_warmup`: linear decay to 0 at `total_steps`, 0 after.
    Linear,
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`: half a cosine from
    /// `base_lr` to 0 at `total_steps`. Past `total_steps` it rises again, as HF's does.
    Cosine,
}

impl ScheduleKind {
    /// Parse HF's `lr_scheduler_type` names: `"constant_with_warmup"`, `"linear"`, `"cosine"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "constant_with_warmup" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(Error::config(
                "lr schedule",
                "lr_scheduler_type",
                format!(
                    "unknown schedule `{other}` (expected constant_with_warmup, linear or cosine)"
                ),
            )),
        }
    }

    /// HF's `lr_scheduler_type` name of this kind.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant_with_warmup",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        }
    }
}

/// A learning-rate schedule: `lr_at(step)` for the 0-based optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// The schedule's shape.
    pub kind: ScheduleKind,
    /// Peak learning rate (the optimiser's `lr`).
    pub base_lr: f64,
    /// Steps of linear warmup from 0 to `base_lr`.
    pub warmup_steps: u64,
    /// Total optimiser steps of the run (unused by `Constant`).
    pub total_steps: u64,
}

impl Schedule {
    /// A validated schedule (see [`Schedule::validate`]).
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Result<Self> {
        let s = Schedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
        };
        s.validate()?;
        Ok(s)
    }

    /// Check the fields: `base_lr` finite and positive; for the decaying kinds `total_steps`
    /// positive and `warmup_steps <= total_steps`.
    pub fn validate(&self) -> Result<()> {
        const SRC: &str = "lr schedule";
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(Error::config(
                SRC,
                "base_lr",
                format!("must be a positive finite number, got {}", self.base_lr),
            ));
        }
        if self.kind != ScheduleKind::Constant {
            if self.total_steps == 0 {
                return Err(Error::config(SRC, "total_steps", "must be positive"));
            }
            if self.warmup_steps > self.total_steps {
                return Err(Error::config(
                    SRC,
                    "warmup_steps",
                    format!(
                        "{} warmup steps exceed the {} total steps",
                        self.warmup_steps, self.total_steps
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The multiplier HF's `lr_lambda` returns at `step`, in f64 with HF's operation order.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_len = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let left = self.total_steps as f64 - step as f64;
                (left / decay_len).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress = (step - self.warmup_steps) as f64 / decay_len;
                // HF: 0.5 * (1 + cos(pi * num_cycles * 2 * progress)), num_cycles = 0.5.
                let factor = 0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos());
                factor.max(0.0)
            }
        }
    }

    /// The learning rate of the 0-based optimiser step `step`: `base_lr * factor(step)`.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Generated by tools/make_optim_fixtures.py (transformers 5.24, torch 2.15): the lr that
    /// torch's LambdaLR holds before each of the first `total_steps + 3` steps.
    /// (kind, base_lr, warmup_steps, total_steps, lr at steps 0..=total_steps+2)
    #[allow(clippy::type_complexity)]
    const HF_TABLE: &[(ScheduleKind, f64, u64, u64, &[f64])] = &[
        (
            ScheduleKind::Constant,
            0.0003,
            3,
            10,
            &[
                0.0,
                9.999999999999999e-05,
                0.00019999999999999998,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
                0.0003,
            ],
        ),
        (
            ScheduleKind::Constant,
            0.001,
            0,
            10,
            &[
                0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001,
                0.001,
            ],
        ),
        (
            ScheduleKind::Linear,
            0.0003,
            3,
            10,
            &[
                0.0,
                9.999999999999999e-05,
                0.00019999999999999998,
                0.0003,
                0.0002571428571428571,
                0.00021428571428571427,
                0.0001714285714285714,
                0.00012857142857142855,
                8.57142857142857e-05,
                4.285714285714285e-05,
                0.0,
                0.0,
                0.0,
            ],
        ),
        (
            ScheduleKind::Linear,
            2e-05,
            0,
            7,
            &[
                2e-05,
                1.7142857142857142e-05,
                1.4285714285714287e-05,
                1.1428571428571429e-05,
                8.571428571428571e-06,
                5.7142857142857145e-06,
                2.8571428571428573e-06,
                0.0,
                0.0,
                0.0,
            ],
        ),
        (
            ScheduleKind::Cosine,
            0.0003,
            3,
            10,
            &[
                0.0,
                9.999999999999999e-05,
                0.00019999999999999998,
                0.0003,
                0.0002851453301853628,
                0.00024352347027881003,
                0.00018337814009344714,
                0.00011662185990655284,
                5.6476529721189974e-05,
                1.4854669814637143e-05,
                0.0,
                1.4854669814637127e-05,
                5.647652972118994e-05,
            ],
        ),
        (
            ScheduleKind::Cosine,
            0.0001,
            0,
            9,
            &[
                0.0001,
                9.698463103929542e-05,
                8.83022221559489e-05,
                7.500000000000001e-05,
                5.868240888334653e-05,
                4.131759111665349e-05,
                2.500000000000001e-05,
                1.1697777844051105e-05,
                3.0153689607045845e-06,
                0.0,
                3.0153689607045785e-06,
                1.16977778440511e-05,
            ],
        ),
        (
            ScheduleKind::Cosine,
            0.0005,
            4,
            4,
            &[0.0, 0.000125, 0.00025, 0.000375, 0.0005, 0.0, 0.0005],
        ),
    ];

    #[test]
    fn matches_hf_lambda_lr() {
        for &(kind, base_lr, warmup, total, want) in HF_TABLE {
            let s = Schedule::new(kind, base_lr, warmup, total).unwrap();
            assert_eq!(want.len() as u64, total + 3);
            for (step, &w) in want.iter().enumerate() {
                let got = s.lr_at(step as u64);
                // Warmup and linear parts are bit-exact; cos may differ by an ulp across libms.
                let tol = 1e-15 * w.abs() + 1e-19;
                assert!(
                    (got - w).abs() <= tol,
                    "{kind:?} warmup {warmup} total {total} step {step}: got {got:e}, hf {w:e}"
                );
                if kind != ScheduleKind::Cosine {
                    assert_eq!(got.to_bits(), w.to_bits(), "{kind:?} step {step}");
                }
            }
        }
    }

    fn field_of(e: Error) -> String {
        match e.kind() {
            ErrorKind::Config { field, .. } => field.clone(),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let bad = [
            (ScheduleKind::Linear, 0.0, 0, 10, "base_lr"),
            (ScheduleKind::Linear, f64::NAN, 0, 10, "base_lr"),
            (ScheduleKind::Constant, -1e-3, 0, 10, "base_lr"),
            (ScheduleKind::Cosine, 1e-3, 0, 0, "total_steps"),
            (ScheduleKind::Linear, 1e-3, 11, 10, "warmup_steps"),
        ];
        for (kind, lr, w, t, field) in bad {
            let e = Schedule::new(kind, lr, w, t).unwrap_err();
            assert_eq!(field_of(e), field, "{kind:?} {lr} {w} {t}");
        }
        // Constant ignores total_steps, as HF does.
        assert!(Schedule::new(ScheduleKind::Constant, 1e-3, 5, 0).is_ok());
    }

    #[test]
    fn parses_hf_names() {
        for kind in [
            ScheduleKind::Constant,
            ScheduleKind::Linear,
            ScheduleKind::Cosine,
        ] {
            assert_eq!(ScheduleKind::parse(kind.name()).unwrap(), kind);
        }
        let e = ScheduleKind::parse("polynomial").unwrap_err();
        assert_eq!(field_of(e), "lr_scheduler_type");
    }
}
