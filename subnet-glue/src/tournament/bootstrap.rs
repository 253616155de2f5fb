//! The significance gate of the boss round (SPEC §5, the newest live rules): on top of the
//! margin rule, a challenger takes a task only if its per-sample advantage is unlikely to be
//! noise.
//!
//! For paired per-sample test losses `(boss_i, challenger_i)`, `d_i = boss_i − challenger_i`:
//! - a sample is *decided* when `|d_i| > 0.01` nats; with fewer than 100 decided samples the
//!   gate is skipped and the margin rule alone decides;
//! - otherwise 10,000 bootstrap resamples (fixed seed, all n pairs drawn with replacement,
//!   numpy's PCG64 `integers(0, n)`) give two statistics per resample: the challenger's share
//!   of the decided samples it wins, and its lead on mean loss `mean(boss) − mean(challenger)`;
//! - the gate passes when both one-sided 99% lower bounds (the 1st percentile: the value at
//!   index ⌊0.01·10,000⌋ = 100 of the sorted resample statistics) clear their bars: win share
//!   ≥ 0.55 and lead ≥ max(0.01, 1% of the boss's mean loss).
//!
//! Pairs where either loss is not finite are left out. Neighbours: boss.rs (calls this after
//! the margin rule), run.rs (supplies per-sample losses from the validator).

use gradients_engine::data::rng::Pcg64;

use super::{terr, Result};

/// The gate's parameters; [`GateConfig::default`] holds the live rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateConfig {
    /// Bootstrap resamples (10,000).
    pub resamples: usize,
    /// The bootstrap generator's seed (fixed: 42).
    pub seed: u64,
    /// Below this many decided samples the gate is skipped (100).
    pub min_decided: usize,
    /// A sample is decided when the losses differ by more than this (0.01 nats).
    pub epsilon: f64,
    /// The least share of decided samples the challenger must win, at the lower bound (0.55).
    pub min_win_share: f64,
    /// The least mean-loss lead in nats (0.01) …
    pub min_lead_abs: f64,
    /// … or this fraction of the boss's mean loss if larger (0.01).
    pub min_lead_rel: f64,
    /// One-sided level: the lower bound is the `alpha` quantile (0.01, i.e. 99%).
    pub alpha: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            resamples: 10_000,
            seed: 42,
            min_decided: 100,
            epsilon: 0.01,
            min_win_share: 0.55,
            min_lead_abs: 0.01,
            min_lead_rel: 0.01,
            alpha: 0.01,
        }
    }
}

/// What the gate saw and decided.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateResult {
    /// Paired samples used (finite on both sides).
    pub samples: usize,
    /// Samples whose losses differ by more than epsilon.
    pub decided: usize,
    /// Fewer than `min_decided` decided samples: the gate did not judge.
    pub skipped: bool,
    /// The challenger's share of decided samples it wins (full sample).
    pub win_share: f64,
    /// Its mean-loss lead `mean(boss) − mean(challenger)` (full sample).
    pub lead: f64,
    /// The lower bound of the win share (`None` when skipped).
    pub win_share_lb: Option<f64>,
    /// The lower bound of the lead (`None` when skipped).
    pub lead_lb: Option<f64>,
    /// The lead required: max(min_lead_abs, min_lead_rel · mean boss loss).
    pub required_lead: f64,
    /// Both lower bounds clear their bars (false when skipped).
    pub passed: bool,
}

/// The win share and mean lead of the pairs `idx` selects.
fn stats(d: &[f64], idx: impl Iterator<Item = usize>, eps: f64) -> (f64, f64) {
    let (mut wins, mut decided, mut sum_d, mut n) = (0usize, 0usize, 0.0f64, 0usize);
    for i in idx {
        let di = d[i];
        if di.abs() > eps {
            decided += 1;
            if di > 0.0 {
                wins += 1;
            }
        }
        sum_d += di;
        n += 1;
    }
    let share = if decided == 0 {
        0.0
    } else {
        wins as f64 / decided as f64
    };
    (share, if n == 0 { 0.0 } else { sum_d / n as f64 })
}

/// The `alpha` quantile of `v` (sorted in place): the value at index ⌊alpha·len⌋.
fn lower_bound(v: &mut [f64], alpha: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((alpha * v.len() as f64).floor() as usize).min(v.len() - 1);
    v[i]
}

/// Run the gate on paired per-sample losses (same order, same length).
pub fn significance_gate(boss: &[f64], challenger: &[f64], cfg: &GateConfig) -> Result<GateResult> {
    if boss.len() != challenger.len() {
        return Err(terr!(
            "per_sample_test",
            "significance gate: {} boss per-sample losses but {} challenger ones (they must pair up)",
            boss.len(),
            challenger.len()
        ));
    }
    if cfg.resamples == 0 || !(0.0..1.0).contains(&cfg.alpha) {
        return Err(terr!(
            "gate",
            "significance gate: resamples must be ≥ 1 and alpha in [0, 1)"
        ));
    }
    let pairs: Vec<(f64, f64)> = boss
        .iter()
        .zip(challenger)
        .filter(|(b, c)| b.is_finite() && c.is_finite())
        .map(|(&b, &c)| (b, c))
        .collect();
    let d: Vec<f64> = pairs.iter().map(|(b, c)| b - c).collect();
    let n = d.len();
    let mean_boss = if n == 0 {
        0.0
    } else {
        pairs.iter().map(|p| p.0).sum::<f64>() / n as f64
    };
    let required_lead = cfg.min_lead_abs.max(cfg.min_lead_rel * mean_boss);
    let decided = d.iter().filter(|x| x.abs() > cfg.epsilon).count();
    let (win_share, lead) = stats(&d, 0..n, cfg.epsilon);
    let mut out = GateResult {
        samples: n,
        decided,
        skipped: decided < cfg.min_decided,
        win_share,
        lead,
        win_share_lb: None,
        lead_lb: None,
        required_lead,
        passed: false,
    };
    if out.skipped {
        return Ok(out);
    }
    let mut rng = Pcg64::new(cfg.seed);
    let mut shares = Vec::with_capacity(cfg.resamples);
    let mut leads = Vec::with_capacity(cfg.resamples);
    let mut idx = vec![0usize; n];
    for _ in 0..cfg.resamples {
        for slot in idx.iter_mut() {
            *slot = rng.interval(n as u64 - 1) as usize;
        }
        let (s, l) = stats(&d, idx.iter().copied(), cfg.epsilon);
        shares.push(s);
        leads.push(l);
    }
    let (share_lb, lead_lb) = (
        lower_bound(&mut shares, cfg.alpha),
        lower_bound(&mut leads, cfg.alpha),
    );
    out.win_share_lb = Some(share_lb);
    out.lead_lb = Some(lead_lb);
    out.passed = share_lb >= cfg.min_win_share && lead_lb >= required_lead;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradients_engine::lora::counter_hash;

    /// A deterministic noise value in [-1, 1).
    fn noise(i: usize, stream: u64) -> f64 {
        (counter_hash(&[stream, i as u64]) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn boss(n: usize) -> Vec<f64> {
        (0..n).map(|i| 2.0 + 0.5 * noise(i, 1)).collect()
    }

    #[test]
    fn a_clearly_better_challenger_passes() {
        let b = boss(300);
        let c: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(i, x)| x - 0.15 + 0.1 * noise(i, 2))
            .collect();
        let g = significance_gate(&b, &c, &GateConfig::default()).unwrap();
        assert!(!g.skipped && g.passed, "{g:?}");
        assert!(
            g.win_share_lb.unwrap() > 0.9 && g.lead_lb.unwrap() > 0.12,
            "{g:?}"
        );
        assert!((g.required_lead - 0.02).abs() < 0.002, "{g:?}");
        // Deterministic: the fixed seed gives the same bounds again.
        assert_eq!(
            g,
            significance_gate(&b, &c, &GateConfig::default()).unwrap()
        );
    }

    #[test]
    fn an_equal_challenger_fails() {
        let b = boss(300);
        let c: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(i, x)| x + 0.2 * noise(i, 3))
            .collect();
        let g = significance_gate(&b, &c, &GateConfig::default()).unwrap();
        assert!(!g.skipped && !g.passed, "{g:?}");
        assert!(
            g.win_share_lb.unwrap() < 0.55 && g.lead_lb.unwrap() < g.required_lead,
            "{g:?}"
        );
    }

    #[test]
    fn a_small_mean_lead_from_many_tiny_wins_fails_the_lead_bar() {
        // Wins most samples but by a lead far below max(0.01, 1% of 2.0 = 0.02).
        let b = boss(400);
        let c: Vec<f64> = b.iter().map(|x| x - 0.012).collect();
        let g = significance_gate(&b, &c, &GateConfig::default()).unwrap();
        assert!(!g.skipped, "{g:?}");
        assert!(g.win_share_lb.unwrap() >= 0.55 && !g.passed, "{g:?}");
    }

    #[test]
    fn fewer_than_100_decided_samples_skip_the_gate() {
        let b = boss(500);
        // 99 samples clearly better, the rest within 0.01 nats.
        let c: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(i, x)| if i < 99 { x - 1.0 } else { x - 0.005 })
            .collect();
        let g = significance_gate(&b, &c, &GateConfig::default()).unwrap();
        assert_eq!(g.decided, 99);
        assert!(g.skipped && !g.passed && g.lead_lb.is_none(), "{g:?}");
        let mut c2 = c.clone();
        c2[99] -= 1.0;
        assert!(
            !significance_gate(&b, &c2, &GateConfig::default())
                .unwrap()
                .skipped
        );
    }

    #[test]
    fn mismatched_lengths_are_an_error_and_non_finite_pairs_are_dropped() {
        assert!(significance_gate(&[1.0, 2.0], &[1.0], &GateConfig::default()).is_err());
        let g = significance_gate(
            &[1.0, f64::NAN, 2.0],
            &[0.5, 1.0, f64::INFINITY],
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!((g.samples, g.decided), (1, 1));
    }
}
