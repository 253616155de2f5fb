//! Tournament results → chain weights (SPEC §6): the text pool and its boost, participation,
//! rank decay and burn ([`tournament_pools`], [`tournament_weights`]), then the u16
//! quantisation the Bittensor SDK applies before `set_weights` ([`quantize_u16`]).
//!
//! Neighbours: the tournament (tourney) produces the [`PoolInput`]; the chain
//! ([`crate::chain`]) checks and stores the quantised vector and runs Yuma on it.
//!
//! Semantics follow the live validator (rayonlabs/G.O.D `validator/core/weight_setting.py`,
//! `validator/evaluation/tournament_scoring.py`, `validator/tournament/performance_calculator.py`);
//! where SPEC is terse we read it as the live code does:
//! - `perf_diff` is the median over boss-round tasks of `(boss − challenger)/challenger`
//!   (0 for a task whose challenger loss is ≤ 0; 0 when there are no tasks). Tasks where
//!   either side failed carry no difference and must be left out by the caller. GRPO scores
//!   are "higher is better": pass them as `(challenger, boss)` so the same formula gives the
//!   live `(challenger − boss)/boss`. When the champion defended, the live code reuses the
//!   difference from the tournament where it first won: pass those pairs.
//! - `boost = max(0, (perf_diff − 0.05)·2) − defences·0.01`, floored at 0, where
//!   `defences` = [`PoolInput::champion_defences`] is the number of tournaments the champion
//!   defended in a row (0 for a new champion). The live code counts `wins` = the champion's
//!   streak *including* the tournament it first won and subtracts `max(0, wins − 1)·0.01`,
//!   which is the same number.
//! - Text pool `w = min(0.15 + boost, 0.6)`. Every participant gets 0.0001 and the pools are
//!   scaled by `s = 1 − n·0.0001`. Rank r of the m ranked uids has share `0.3^(r−1)/Σ`; the
//!   champion (rank 1) gets its share of the *boosted* pool `w·s`, every other rank its share
//!   of the *base* pool `0.15·s`. What the pools do not hand out, and `(1 − w)·s`, goes to
//!   the burn uid. The live network also has an image pool (0.10); we have no image
//!   tournaments, so that share is burned, exactly as the live code does when the image
//!   tournament has no result.
//! - A uid that is both ranked and a participant gets both amounts; a burn uid that is also
//!   ranked or a participant gets the sum (the live code would overwrite). Ranks are strict
//!   (the live code averages tied scores; our tournament produces no ties).

use std::fmt;

/// The live text-tournament base pool.
pub const TEXT_BASE_WEIGHT: f64 = 0.15;
/// The cap of the boosted text pool.
pub const MAX_TEXT_WEIGHT: f64 = 0.6;
/// What every active participant receives.
pub const PARTICIPATION_WEIGHT: f64 = 0.0001;
/// Rank decay base: rank r gets `0.3^(r−1)` before normalisation.
pub const RANK_DECAY_BASE: f64 = 0.3;
/// `perf_diff` above this earns a boost.
pub const BOOST_THRESHOLD: f64 = 0.05;
/// Boost per unit of `perf_diff` above the threshold.
pub const BOOST_RATE: f64 = 2.0;
/// Boost lost per successful defence.
pub const BOOST_DECAY_PER_DEFENCE: f64 = 0.01;
/// The largest u16 weight value.
pub const U16_MAX_WEIGHT: u16 = u16::MAX;

/// Bad input to the weight computation, naming the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsError {
    /// The field or argument at fault (`ranked_uids`, `weights[3]`, ...).
    pub field: String,
    /// What is wrong with it.
    pub msg: String,
}

impl WeightsError {
    fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        WeightsError {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "weights: `{}`: {}", self.field, self.msg)
    }
}

impl std::error::Error for WeightsError {}

/// Result alias of this module.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// What the tournament hands to the weight computation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolInput {
    /// Final ranking, rank 1 (the tournament winner, i.e. the champion after the boss round)
    /// first. Strict: no uid twice.
    pub ranked_uids: Vec<u16>,
    /// Every uid that took part (each gets [`PARTICIPATION_WEIGHT`]); no uid twice.
    pub participants: Vec<u16>,
    /// Boss-round task losses `(boss, challenger)` of the tasks both sides completed
    /// (see the module doc for GRPO and for a defended champion).
    pub boss_losses: Vec<(f64, f64)>,
    /// Tournaments the champion has defended in a row (0 for a new champion).
    pub champion_defences: u32,
    /// The uid that receives burned weight.
    pub burn_uid: u16,
}

/// The pools of one weight computation, for display and audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Pools {
    /// Median relative boss-round improvement.
    pub perf_diff: f64,
    /// Boost added to the text pool (after the defence decay, ≥ 0).
    pub boost: f64,
    /// `min(0.15 + boost, 0.6)` before participation scaling.
    pub text_weight: f64,
    /// `1 − n·0.0001`.
    pub scale: f64,
    /// Total weight sent to the burn uid.
    pub burn: f64,
    /// Final weights per uid, ascending uid, summing to 1.
    pub weights: Vec<(u16, f64)>,
}

/// Median over tasks of `(boss − challenger)/challenger` (0 for a non-positive challenger
/// loss, 0 with no tasks). Non-finite losses are rejected.
pub fn perf_diff(boss_losses: &[(f64, f64)]) -> Result<f64> {
    let mut diffs = Vec::with_capacity(boss_losses.len());
    for (i, &(boss, challenger)) in boss_losses.iter().enumerate() {
        if !boss.is_finite() || !challenger.is_finite() {
            return Err(WeightsError::new(
                format!("boss_losses[{i}]"),
                format!("losses must be finite, got boss {boss}, challenger {challenger}"),
            ));
        }
        diffs.push(if challenger > 0.0 {
            (boss - challenger) / challenger
        } else {
            0.0
        });
    }
    if diffs.is_empty() {
        return Ok(0.0);
    }
    diffs.sort_by(f64::total_cmp);
    let m = diffs.len();
    Ok(if !m.is_multiple_of(2) {
        diffs[m / 2]
    } else {
        (diffs[m / 2 - 1] + diffs[m / 2]) / 2.0
    })
}

/// `max(0, (perf_diff − 0.05)·2) − defences·0.01`, floored at 0.
pub fn boost(perf_diff: f64, champion_defences: u32) -> f64 {
    let increase = if perf_diff <= BOOST_THRESHOLD {
        0.0
    } else {
        (perf_diff - BOOST_THRESHOLD) * BOOST_RATE
    };
    let decay = f64::from(champion_defences) * BOOST_DECAY_PER_DEFENCE;
    (increase - decay).max(0.0)
}

/// Normalised rank shares `0.3^(r−1)/Σ` for ranks 1..=m.
pub fn rank_shares(m: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..m).map(|r| RANK_DECAY_BASE.powi(r as i32)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|x| x / total).collect()
}

fn check_unique(field: &str, uids: &[u16]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, uid) in uids.iter().enumerate() {
        if !seen.insert(*uid) {
            return Err(WeightsError::new(
                format!("{field}[{i}]"),
                format!("uid {uid} appears twice"),
            ));
        }
    }
    Ok(())
}

/// The full pool computation of the module doc.
pub fn tournament_pools(input: &PoolInput) -> Result<Pools> {
    check_unique("ranked_uids", &input.ranked_uids)?;
    check_unique("participants", &input.participants)?;
    let perf = perf_diff(&input.boss_losses)?;
    let boost = boost(perf, input.champion_defences);
    let text_weight = (TEXT_BASE_WEIGHT + boost).min(MAX_TEXT_WEIGHT);
    let participation_total = input.participants.len() as f64 * PARTICIPATION_WEIGHT;
    if participation_total >= 1.0 {
        return Err(WeightsError::new(
            "participants",
            format!(
                "{} participants leave nothing for the pools (at most {} allowed)",
                input.participants.len(),
                (1.0 / PARTICIPATION_WEIGHT) as usize - 1
            ),
        ));
    }
    let scale = 1.0 - participation_total;
    let scaled_text = text_weight * scale;
    let scaled_base = TEXT_BASE_WEIGHT * scale;
    let scaled_burn = (1.0 - text_weight) * scale;

    let mut acc: std::collections::BTreeMap<u16, f64> = std::collections::BTreeMap::new();
    let mut distributed = 0.0;
    for (rank, (uid, share)) in input
        .ranked_uids
        .iter()
        .zip(rank_shares(input.ranked_uids.len()))
        .enumerate()
    {
        let amount = share * if rank == 0 { scaled_text } else { scaled_base };
        *acc.entry(*uid).or_insert(0.0) += amount;
        distributed += amount;
    }
    for uid in &input.participants {
        *acc.entry(*uid).or_insert(0.0) += PARTICIPATION_WEIGHT;
    }
    let burn = scaled_burn + (scaled_text - distributed);
    *acc.entry(input.burn_uid).or_insert(0.0) += burn;
    Ok(Pools {
        perf_diff: perf,
        boost,
        text_weight,
        scale,
        burn,
        weights: acc.into_iter().collect(),
    })
}

/// Weights per uid (ascending uid, summing to 1) for the tournament described by `input`.
pub fn tournament_weights(input: &PoolInput) -> Result<Vec<(u16, f64)>> {
    Ok(tournament_pools(input)?.weights)
}

/// u16 quantisation exactly as the Bittensor SDK's `convert_weights_and_uids_for_emit`:
/// each value becomes `round(w / max(w) · 65535)` with round-half-to-even (Python's
/// `round`), entries that round to 0 are dropped, input order is kept. Negative, NaN or
/// infinite weights and duplicate uids are rejected (the chain would refuse duplicates);
/// a zero sum (or no entries) gives two empty vectors: nothing to set.
pub fn quantize_u16(w: &[(u16, f64)]) -> Result<(Vec<u16>, Vec<u16>)> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, &(uid, x)) in w.iter().enumerate() {
        if !x.is_finite() {
            return Err(WeightsError::new(
                format!("weights[{i}]"),
                format!("weight of uid {uid} is {x}, not a finite number"),
            ));
        }
        if x < 0.0 {
            return Err(WeightsError::new(
                format!("weights[{i}]"),
                format!("weight of uid {uid} is negative ({x}): cannot exist on chain"),
            ));
        }
        if !seen.insert(uid) {
            return Err(WeightsError::new(
                format!("weights[{i}]"),
                format!("uid {uid} appears twice"),
            ));
        }
    }
    let sum: f64 = w.iter().map(|&(_, x)| x).sum();
    if sum == 0.0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let max = w.iter().map(|&(_, x)| x).fold(0.0, f64::max);
    let mut uids = Vec::with_capacity(w.len());
    let mut vals = Vec::with_capacity(w.len());
    for &(uid, x) in w {
        let v = ((x / max) * f64::from(U16_MAX_WEIGHT)).round_ties_even();
        if v != 0.0 {
            uids.push(uid);
            vals.push(v as u16);
        }
    }
    Ok((uids, vals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn quantize_rounds_half_to_even_and_drops_zeros() {
        // 0.5/65535·65535 = 0.5 → 0 (even, dropped); 1.5 → 2; 2.5 → 2; max → 65535.
        let u = 1.0 / 65535.0;
        let w = [(0, 0.5 * u), (1, 1.5 * u), (2, 2.5 * u), (3, 1.0), (4, 0.0)];
        let (uids, vals) = quantize_u16(&w).unwrap();
        assert_eq!(uids, vec![1, 2, 3]);
        assert_eq!(vals, vec![2, 2, 65535]);
        // Scaling all weights (by a power of two, exact in binary) changes nothing.
        let w2: Vec<(u16, f64)> = w.iter().map(|&(u, x)| (u, x * 8.0)).collect();
        assert_eq!(quantize_u16(&w2).unwrap(), (uids, vals));
    }

    #[test]
    fn quantize_rejects_bad_input_and_zero_sum_sets_nothing() {
        assert!(quantize_u16(&[(0, -0.1), (1, 1.0)]).is_err());
        assert!(quantize_u16(&[(0, f64::NAN)]).is_err());
        assert!(quantize_u16(&[(0, f64::INFINITY)]).is_err());
        let dup = quantize_u16(&[(3, 0.5), (3, 0.5)]).unwrap_err();
        assert_eq!(dup.field, "weights[1]");
        assert_eq!(
            quantize_u16(&[(0, 0.0), (1, 0.0)]).unwrap(),
            (vec![], vec![])
        );
        assert_eq!(quantize_u16(&[]).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn perf_diff_is_the_median_relative_gain() {
        // (2−1)/1 = 1, (1.1−1)/1 = 0.1, (3−2)/2 = 0.5 → median 0.5
        assert!(close(
            perf_diff(&[(2.0, 1.0), (1.1, 1.0), (3.0, 2.0)]).unwrap(),
            0.5
        ));
        // even count: mean of the middle two; non-positive challenger → 0
        assert!(close(perf_diff(&[(2.0, 1.0), (1.0, 0.0)]).unwrap(), 0.5));
        assert_eq!(perf_diff(&[]).unwrap(), 0.0);
        assert!(perf_diff(&[(f64::NAN, 1.0)]).is_err());
    }

    #[test]
    fn boost_threshold_rate_and_decay() {
        assert_eq!(boost(0.05, 0), 0.0);
        assert!(close(boost(0.15, 0), 0.2));
        assert!(close(boost(0.15, 3), 0.17));
        assert_eq!(boost(0.06, 5), 0.0); // floored
        assert_eq!(boost(-1.0, 0), 0.0);
    }

    #[test]
    fn pools_follow_the_live_rules_and_sum_to_one() {
        // perf_diff 0.2 → boost 0.3 → text 0.45; 4 participants; 3 ranked.
        let input = PoolInput {
            ranked_uids: vec![5, 2, 7],
            participants: vec![2, 5, 7, 9],
            boss_losses: vec![(1.2, 1.0), (1.2, 1.0), (1.0, 1.0)],
            champion_defences: 0,
            burn_uid: 0,
        };
        let p = tournament_pools(&input).unwrap();
        assert!(close(p.perf_diff, 0.2));
        assert!(close(p.boost, 0.3));
        assert!(close(p.text_weight, 0.45));
        let s = 1.0 - 4.0 * 0.0001;
        assert!(close(p.scale, s));
        let sigma = 1.0 + 0.3 + 0.09;
        let get = |uid: u16| p.weights.iter().find(|(u, _)| *u == uid).unwrap().1;
        assert!(close(get(5), 0.45 * s / sigma + 0.0001));
        assert!(close(get(2), 0.15 * s * 0.3 / sigma + 0.0001));
        assert!(close(get(7), 0.15 * s * 0.09 / sigma + 0.0001));
        assert!(close(get(9), 0.0001));
        let distributed = (0.45 + 0.15 * 0.39) * s / sigma;
        assert!(close(get(0), (1.0 - 0.45) * s + 0.45 * s - distributed));
        let total: f64 = p.weights.iter().map(|(_, w)| w).sum();
        assert!(close(total, 1.0));
        // ascending uids
        assert!(p.weights.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(tournament_weights(&input).unwrap(), p.weights);
    }

    #[test]
    fn pool_is_capped_and_a_lone_champion_takes_the_boosted_pool() {
        let input = PoolInput {
            ranked_uids: vec![3],
            participants: vec![3],
            boss_losses: vec![(10.0, 1.0)],
            champion_defences: 0,
            burn_uid: 1,
        };
        let p = tournament_pools(&input).unwrap();
        assert!(close(p.text_weight, MAX_TEXT_WEIGHT));
        let s = 1.0 - 0.0001;
        assert_eq!(p.weights.len(), 2);
        assert!(close(p.weights[1].1, 0.6 * s + 0.0001));
        assert!(close(p.weights[0].1, 0.4 * s));
    }

    #[test]
    fn duplicate_or_too_many_entries_are_rejected() {
        let mut input = PoolInput {
            ranked_uids: vec![1, 1],
            ..Default::default()
        };
        assert_eq!(
            tournament_pools(&input).unwrap_err().field,
            "ranked_uids[1]"
        );
        input.ranked_uids = vec![1];
        input.participants = (0..10_000).map(|i| i as u16).collect();
        assert_eq!(tournament_pools(&input).unwrap_err().field, "participants");
    }
}
