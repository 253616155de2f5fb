//! One Yuma epoch (SPEC §7) in I32F32 fixed point, ported from subtensor's dense epoch
//! (`pallets/subtensor/src/epoch/run_epoch.rs::epoch_dense_mechanism`, helpers from
//! `epoch/math.rs`): active stake, masked and row-normalised weights, stake-weighted
//! median consensus (κ), clipping, validator trust, incentive, bonds (Yuma 3: an EMA of
//! the bond-penalised weights, optionally with liquid alpha; or the original Yuma with
//! column-normalised stake-weighted bonds), dividends and emission.
//!
//! Pure: [`run_epoch`] takes the chain state as plain vectors ([`EpochInput`]) and returns
//! what the chain stores ([`EpochOutput`]); chain/local/ reads and writes SQLite around
//! it. Not ported: the commit-reveal column mask (weights revealed here are always from a
//! commit older than the target's registration) and the subnet-owner self-weight exception.

use substrate_fixed::transcendental::exp;
use substrate_fixed::types::{I32F32, I64F64, I96F32};

/// The fixed-point type of the epoch.
pub type Fx = I32F32;

fn zero() -> Fx {
    Fx::from_num(0)
}

fn one() -> Fx {
    Fx::from_num(1)
}

fn sdiv(a: Fx, b: Fx) -> Fx {
    a.checked_div(b).unwrap_or(zero())
}

/// `u16 / 65535` as a fixed-point proportion.
pub fn u16_proportion(x: u16) -> Fx {
    sdiv(Fx::from_num(x), Fx::from_num(u16::MAX))
}

/// A proportion in [0, 1] as u16 (`x·65535`, truncated, saturating), as the chain stores it.
pub fn proportion_to_u16(x: Fx) -> u16 {
    x.saturating_mul(Fx::from_num(u16::MAX))
        .saturating_to_num::<u16>()
}

/// Consensus parameters of a subnet (subtensor's storage items of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct YumaParams {
    /// Blocks between epochs.
    pub tempo: u64,
    /// A validator whose last weights are older than this many blocks is inactive.
    pub activity_cutoff: u64,
    /// Consensus majority as u16 proportion (32767 ≈ 0.5).
    pub kappa: u16,
    /// How much bonds follow clipped weights (65535 = fully), u16 proportion.
    pub bonds_penalty: u16,
    /// Bonds EMA memory in millionths: α = 1 − bonds_moving_average/10⁶ (900000 → 0.1).
    pub bonds_moving_average: u64,
    /// Liquid alpha (per-bond α from a sigmoid of the weight/consensus gap).
    pub liquid_alpha: bool,
    /// Liquid alpha low bound, u16 proportion.
    pub alpha_low: u16,
    /// Liquid alpha high bound, u16 proportion.
    pub alpha_high: u16,
    /// Liquid alpha sigmoid steepness.
    pub alpha_sigmoid_steepness: i16,
    /// Yuma 3 bonds (true) or the original Yuma bonds (false).
    pub yuma3: bool,
    /// Validator permits go to the top this-many non-zero stakes.
    pub max_allowed_validators: u16,
}

impl Default for YumaParams {
    /// Subtensor's runtime defaults, Yuma 3 on, liquid alpha off.
    fn default() -> Self {
        YumaParams {
            tempo: 360,
            activity_cutoff: 5000,
            kappa: 32_767,
            bonds_penalty: u16::MAX,
            bonds_moving_average: 900_000,
            liquid_alpha: false,
            alpha_low: 45_875,
            alpha_high: 58_982,
            alpha_sigmoid_steepness: 1000,
            yuma3: true,
            max_allowed_validators: 64,
        }
    }
}

/// The chain state one epoch reads; every vector is indexed by uid (length n).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochInput {
    /// The block the epoch runs at.
    pub current_block: u64,
    /// Block of the previous epoch (0: none yet, then `current_block − tempo` is used).
    pub last_epoch_block: u64,
    /// Stake per uid.
    pub stake: Vec<u64>,
    /// Validator permits from the previous epoch.
    pub validator_permit: Vec<bool>,
    /// Block of each uid's last weights (0: never).
    pub last_update: Vec<u64>,
    /// Block each uid (most recently) registered at.
    pub block_at_registration: Vec<u64>,
    /// Weight rows as set on chain: `(uid, value)` (values max-upscaled u16).
    pub weights: Vec<Vec<(u16, u16)>>,
    /// Bond rows as stored: `(uid, value)` u16.
    pub bonds: Vec<Vec<(u16, u16)>>,
    /// Emission (rao) to distribute in this epoch (after the owner's cut).
    pub emission: u64,
}

/// What an epoch produces, per uid.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochOutput {
    /// Set weights within the activity cutoff.
    pub active: Vec<bool>,
    /// Normalised stake, u16 proportion.
    pub stake_weight: Vec<u16>,
    /// Consensus weight per uid, u16 proportion.
    pub consensus: Vec<u16>,
    /// Incentive per uid, u16 proportion (sums to ~65535 when any is set).
    pub incentive: Vec<u16>,
    /// Dividends per uid, u16 proportion.
    pub dividends: Vec<u16>,
    /// Validator trust per uid, u16 proportion.
    pub validator_trust: Vec<u16>,
    /// Miner (server) emission, rao.
    pub server_emission: Vec<u64>,
    /// Validator emission, rao.
    pub validator_emission: Vec<u64>,
    /// Combined emission as the chain records it, rao.
    pub emission: Vec<u64>,
    /// Permits for the next epoch.
    pub new_validator_permit: Vec<bool>,
    /// New bond rows: `Some(row)` to store (possibly empty: clear), `None` to leave as is.
    pub bonds: Vec<Option<Vec<(u16, u16)>>>,
    /// Incentive as fixed point (for exact comparisons in tests and displays).
    pub incentive_fx: Vec<Fx>,
    /// Dividends as fixed point.
    pub dividends_fx: Vec<Fx>,
}

fn normalize(x: &mut [Fx]) {
    let s: Fx = x.iter().fold(zero(), |a, &b| a.saturating_add(b));
    if s == zero() {
        return;
    }
    for v in x.iter_mut() {
        *v = sdiv(*v, s);
    }
}

fn row_normalize(m: &mut [Vec<Fx>]) {
    for row in m.iter_mut() {
        let s: Fx = row.iter().fold(zero(), |a, &b| a.saturating_add(b));
        if s > zero() {
            for v in row.iter_mut() {
                *v = sdiv(*v, s);
            }
        }
    }
}

fn col_normalize(m: &mut [Vec<Fx>], n: usize) {
    let mut sums = vec![zero(); n];
    for row in m.iter() {
        for (s, v) in sums.iter_mut().zip(row) {
            *s = s.saturating_add(*v);
        }
    }
    for row in m.iter_mut() {
        for (v, s) in row.iter_mut().zip(&sums) {
            if *s != zero() {
                *v = sdiv(*v, *s);
            }
        }
    }
}

fn col_max_upscale(m: &mut [Vec<Fx>], n: usize) {
    let mut maxes = vec![zero(); n];
    for row in m.iter() {
        for (mx, v) in maxes.iter_mut().zip(row) {
            if *mx < *v {
                *mx = *v;
            }
        }
    }
    for row in m.iter_mut() {
        for (v, mx) in row.iter_mut().zip(&maxes) {
            if *mx != zero() {
                *v = sdiv(*v, *mx);
            }
        }
    }
}

/// Top-k of the non-zero entries (ties: the lower index loses, as subtensor's stable sort).
fn is_topk_nonzero(v: &[Fx], k: usize) -> Vec<bool> {
    let n = v.len();
    let mut out: Vec<bool> = v.iter().map(|&x| x != zero()).collect();
    if n < k {
        return out;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by_key(|&i| v[i]);
    for &i in idx.iter().take(n - k) {
        out[i] = false;
    }
    out
}

/// Stake-weighted median by mid-pivot partitioning (subtensor's `weighted_median`).
fn weighted_median(
    stake: &[Fx],
    score: &[Fx],
    partition: &[usize],
    minority: Fx,
    mut lo: Fx,
    mut hi: Fx,
) -> Fx {
    let mut current: Vec<usize> = partition.to_vec();
    let limit = partition.len();
    let mut iterations = 0usize;
    loop {
        let n = current.len();
        if n == 0 {
            return zero();
        }
        if n == 1 {
            return score[current[0]];
        }
        let pivot = score[current[n / 2]];
        let (mut lo_stake, mut hi_stake) = (zero(), zero());
        let (mut lower, mut upper) = (Vec::new(), Vec::new());
        for &i in &current {
            if score[i] == pivot {
                continue;
            }
            if score[i] < pivot {
                lo_stake = lo_stake.saturating_add(stake[i]);
                lower.push(i);
            } else {
                hi_stake = hi_stake.saturating_add(stake[i]);
                upper.push(i);
            }
        }
        if minority < lo.saturating_add(lo_stake) && !lower.is_empty() {
            current = lower;
            hi = lo.saturating_add(lo_stake);
        } else if hi.saturating_sub(hi_stake) <= minority && !upper.is_empty() {
            current = upper;
            lo = hi.saturating_sub(hi_stake);
        } else {
            return pivot;
        }
        iterations += 1;
        if iterations > limit {
            return zero();
        }
    }
}

/// Column-wise stake-weighted median over the rows with stake (`weighted_median_col`).
fn weighted_median_col(stake: &[Fx], w: &[Vec<Fx>], kappa: Fx, n: usize) -> Vec<Fx> {
    let mut out = vec![zero(); n];
    for (c, cell) in out.iter_mut().enumerate() {
        let mut use_stake = Vec::new();
        let mut use_score = Vec::new();
        for (r, &s) in stake.iter().enumerate() {
            if s > zero() {
                use_stake.push(s);
                use_score.push(w[r][c]);
            }
        }
        if !use_stake.is_empty() {
            normalize(&mut use_stake);
            let total: Fx = use_stake.iter().fold(zero(), |a, &b| a.saturating_add(b));
            let minority = total.saturating_sub(kappa);
            let idx: Vec<usize> = (0..use_stake.len()).collect();
            *cell = weighted_median(&use_stake, &use_score, &idx, minority, zero(), total);
        }
    }
    out
}

fn exp_safe(x: Fx) -> Fx {
    let x = x.max(Fx::from_num(-20)).min(Fx::from_num(20));
    match exp::<Fx, Fx>(x) {
        Ok(v) => v,
        Err(()) if x <= zero() => zero(),
        Err(()) => Fx::max_value(),
    }
}

fn alpha_sigmoid(c: Fx, w: Fx, b: Fx, low: Fx, high: Fx, steepness: Fx) -> Fx {
    let diff_buy = w.saturating_sub(c).max(zero()).min(one());
    let diff_sell = b.saturating_sub(w).max(zero()).min(one());
    let combined = if w >= b { diff_buy } else { diff_sell };
    let e = exp_safe(
        steepness
            .saturating_div(Fx::from_num(-100))
            .saturating_mul(combined.saturating_sub(Fx::from_num(0.5))),
    );
    let sigmoid = one().saturating_div(one().saturating_add(e));
    let alpha = low.saturating_add(sigmoid.saturating_mul(high.saturating_sub(low)));
    alpha.min(high).max(low)
}

fn dense(rows: &[Vec<(u16, u16)>], n: usize, proportion: bool) -> Vec<Vec<Fx>> {
    let mut m = vec![vec![zero(); n]; n];
    for (i, row) in rows.iter().enumerate().take(n) {
        for &(j, v) in row {
            if (j as usize) < n {
                m[i][j as usize] = if proportion {
                    u16_proportion(v)
                } else {
                    Fx::from_num(v)
                };
            }
        }
    }
    m
}

/// Run one epoch over `input` with `params` (see the module doc).
pub fn run_epoch(input: &EpochInput, params: &YumaParams) -> EpochOutput {
    let n = input.stake.len();
    let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    let current = input.current_block;

    // Active & updated.
    let active: Vec<bool> = (0..n)
        .map(|i| get(&input.last_update, i).saturating_add(params.activity_cutoff) >= current)
        .collect();
    let last_tempo = if input.last_epoch_block == 0 {
        current.saturating_sub(params.tempo)
    } else {
        input.last_epoch_block.saturating_add(1)
    };
    let recently_registered: Vec<bool> = (0..n)
        .map(|j| last_tempo <= get(&input.block_at_registration, j))
        .collect();

    // Stake, normalised in I64F64 then narrowed.
    let mut stake64: Vec<I64F64> = input.stake.iter().map(|&s| I64F64::from_num(s)).collect();
    let total64: I64F64 = stake64
        .iter()
        .fold(I64F64::from_num(0), |a, &b| a.saturating_add(b));
    if total64 != I64F64::from_num(0) {
        for s in stake64.iter_mut() {
            *s = s.checked_div(total64).unwrap_or(I64F64::from_num(0));
        }
    }
    let stake: Vec<Fx> = stake64
        .iter()
        .map(|&s| Fx::saturating_from_num(s))
        .collect();

    // Permits.
    let permit: Vec<bool> = (0..n)
        .map(|i| input.validator_permit.get(i).copied().unwrap_or(false))
        .collect();
    let new_permit = is_topk_nonzero(&stake, params.max_allowed_validators as usize);

    // Active stake.
    let mut active_stake: Vec<Fx> = (0..n)
        .map(|i| {
            if active[i] && permit[i] {
                stake[i]
            } else {
                zero()
            }
        })
        .collect();
    normalize(&mut active_stake);

    // Weights: permit rows, no self weight, no weight set before the target registered.
    let mut weights = dense(&input.weights, n, false);
    for (i, row) in weights.iter_mut().enumerate() {
        for (j, w) in row.iter_mut().enumerate() {
            let outdated = get(&input.last_update, i) <= get(&input.block_at_registration, j);
            if !permit[i] || i == j || outdated {
                *w = zero();
            }
        }
    }
    row_normalize(&mut weights);

    // Consensus, clipping, validator trust, incentive.
    let kappa = u16_proportion(params.kappa);
    let consensus = weighted_median_col(&active_stake, &weights, kappa, n);
    let clipped: Vec<Vec<Fx>> = weights
        .iter()
        .map(|row| row.iter().zip(&consensus).map(|(w, c)| *w.min(c)).collect())
        .collect();
    let validator_trust: Vec<Fx> = clipped
        .iter()
        .map(|row| row.iter().fold(zero(), |a, &b| a.saturating_add(b)))
        .collect();
    let mut incentive = vec![zero(); n];
    for (i, row) in clipped.iter().enumerate() {
        for (j, w) in row.iter().enumerate() {
            incentive[j] = incentive[j].saturating_add(active_stake[i].saturating_mul(*w));
        }
    }
    normalize(&mut incentive);

    // Bonds.
    let penalty = u16_proportion(params.bonds_penalty);
    let weights_for_bonds: Vec<Vec<Fx>> = if penalty == zero() {
        weights.clone()
    } else if penalty == one() {
        clipped.clone()
    } else {
        weights
            .iter()
            .zip(&clipped)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| x.saturating_add(penalty.saturating_mul(y.saturating_sub(*x))))
                    .collect()
            })
            .collect()
    };
    let bma = I64F64::from_num(params.bonds_moving_average)
        .checked_div(I64F64::from_num(1_000_000))
        .unwrap_or(I64F64::from_num(0));
    let fixed_alpha = one().saturating_sub(Fx::saturating_from_num(bma));

    let mut dividends: Vec<Fx>;
    let mut ema: Vec<Vec<Fx>>;
    if params.yuma3 {
        let mut bonds = dense(&input.bonds, n, true);
        for row in bonds.iter_mut() {
            for (j, b) in row.iter_mut().enumerate() {
                if recently_registered[j] {
                    *b = zero();
                }
            }
        }
        let liquid = params.liquid_alpha && consensus.iter().any(|&c| c != zero());
        let (low, high) = (
            u16_proportion(params.alpha_low),
            u16_proportion(params.alpha_high),
        );
        let steep = Fx::from_num(params.alpha_sigmoid_steepness);
        ema = vec![vec![zero(); n]; n];
        for (i, row) in ema.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                let (w, b) = (weights_for_bonds[i][j], bonds[i][j]);
                *cell = if liquid {
                    let a = alpha_sigmoid(consensus[j], w, b, low, high, steep);
                    let decayed = one().saturating_sub(a).saturating_mul(b);
                    decayed
                        .saturating_add(a.saturating_mul(w).max(zero()))
                        .min(one())
                } else {
                    fixed_alpha
                        .saturating_mul(w)
                        .saturating_add(one().saturating_sub(fixed_alpha).saturating_mul(b))
                };
            }
        }
        let mut ema_norm = ema.clone();
        col_normalize(&mut ema_norm, n);
        dividends = (0..n)
            .map(|i| {
                let tb = (0..n).fold(zero(), |a, j| {
                    a.saturating_add(ema_norm[i][j].checked_mul(incentive[j]).unwrap_or(zero()))
                });
                tb.checked_mul(active_stake[i]).unwrap_or(zero())
            })
            .collect();
        normalize(&mut dividends);
    } else {
        let mut bonds = dense(&input.bonds, n, false);
        for row in bonds.iter_mut() {
            for (j, b) in row.iter_mut().enumerate() {
                if recently_registered[j] {
                    *b = zero();
                }
            }
        }
        col_normalize(&mut bonds, n);
        let mut delta: Vec<Vec<Fx>> = weights_for_bonds
            .iter()
            .zip(&active_stake)
            .map(|(row, s)| row.iter().map(|w| s.saturating_mul(*w)).collect())
            .collect();
        col_normalize(&mut delta, n);
        ema = delta
            .iter()
            .zip(&bonds)
            .map(|(d, b)| {
                d.iter()
                    .zip(b)
                    .map(|(x, y)| {
                        fixed_alpha
                            .saturating_mul(*x)
                            .saturating_add(one().saturating_sub(fixed_alpha).saturating_mul(*y))
                    })
                    .collect()
            })
            .collect();
        col_normalize(&mut ema, n);
        dividends = ema
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&incentive)
                    .fold(zero(), |a, (b, i)| a.saturating_add(b.saturating_mul(*i)))
            })
            .collect();
        normalize(&mut dividends);
        col_max_upscale(&mut ema, n);
    }

    // Emission: incentive and dividends normalised by their joint sum; stake when both are 0.
    let emission_sum: Fx = incentive
        .iter()
        .zip(&dividends)
        .fold(zero(), |a, (i, d)| a.saturating_add(i.saturating_add(*d)));
    let mut n_server = incentive.clone();
    let mut n_validator = dividends.clone();
    let mut n_combined: Vec<Fx> = incentive
        .iter()
        .zip(&dividends)
        .map(|(i, d)| i.saturating_add(*d))
        .collect();
    if emission_sum != zero() {
        for v in n_server.iter_mut().chain(n_validator.iter_mut()) {
            *v = sdiv(*v, emission_sum);
        }
    }
    normalize(&mut n_combined);
    if emission_sum == zero() {
        let fallback = if active_stake.iter().all(|&s| s == zero()) {
            &stake
        } else {
            &active_stake
        };
        n_validator.clone_from(fallback);
        n_combined.clone_from(fallback);
    }
    let rao = I96F32::saturating_from_num(input.emission);
    let to_rao = |v: &[Fx]| -> Vec<u64> {
        v.iter()
            .map(|x| {
                I96F32::saturating_from_num(*x)
                    .saturating_mul(rao)
                    .saturating_to_num::<u64>()
            })
            .collect()
    };

    let bonds_out: Vec<Option<Vec<(u16, u16)>>> = (0..n)
        .map(|i| {
            if new_permit[i] {
                Some(
                    (0..n)
                        .filter_map(|j| {
                            let v = proportion_to_u16(ema[i][j]);
                            (v != 0).then_some((j as u16, v))
                        })
                        .collect(),
                )
            } else if permit[i] {
                Some(Vec::new())
            } else {
                None
            }
        })
        .collect();

    let u16s = |v: &[Fx]| {
        v.iter()
            .map(|x| proportion_to_u16(*x))
            .collect::<Vec<u16>>()
    };
    EpochOutput {
        active,
        stake_weight: u16s(&stake),
        consensus: u16s(&consensus),
        incentive: u16s(&incentive),
        dividends: u16s(&dividends),
        validator_trust: u16s(&validator_trust),
        server_emission: to_rao(&n_server),
        validator_emission: to_rao(&n_validator),
        emission: to_rao(&n_combined),
        new_validator_permit: new_permit,
        bonds: bonds_out,
        incentive_fx: incentive,
        dividends_fx: dividends,
    }
}

/// Max-upscale weight values so the largest becomes 65535, as subtensor stores set weights
/// (`vec_u16_max_upscale_to_u16`: fixed-point, rounding half away from zero).
pub fn max_upscale_u16(values: &[u16]) -> Vec<u16> {
    let u16_max = Fx::from_num(u16::MAX);
    let threshold = Fx::from_num(32768);
    let v: Vec<Fx> = values.iter().map(|&x| Fx::from_num(x)).collect();
    let Some(&max) = v.iter().max() else {
        return Vec::new();
    };
    if max == zero() {
        return values.to_vec();
    }
    v.iter()
        .map(|e| {
            let x = if max > threshold {
                e.saturating_mul(sdiv(u16_max, max))
            } else {
                sdiv(e.saturating_mul(u16_max), max)
            };
            x.round().saturating_to_num::<u16>()
        })
        .collect()
}
