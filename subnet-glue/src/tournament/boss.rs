//! The boss round (SPEC §5): the bracket's last winner (the challenger) against the
//! defending champion, task by task, and the rules that decide each task and the round.
//!
//! Per task, in order:
//! 1. failures: a side whose loss is missing or not finite failed; one side failed → the
//!    other wins; both failed → the champion wins ([`Rule::Failure`]);
//! 2. the margin: the challenger wins only if `loss_c < loss_boss · (1 − t)` with
//!    `t = max(0.03, 0.10 · 0.8^(wins − 1))`, `wins` = the champion's consecutive defences
//!    (a champion with no defence yet uses wins = 1, t = 0.10: the formula's exponent would
//!    otherwise go negative and make the first defence the hardest) ([`Rule::Margin`]);
//! 3. the significance gate (bootstrap.rs) on the per-sample losses: a challenger that
//!    cleared the margin must also pass it ([`Rule::Significance`]), unless fewer than 100
//!    samples are decided, when the margin alone decides ([`Rule::MarginGateSkipped`]).
//!
//! The challenger takes the round with more than half of the tasks; otherwise the champion
//! defends (and its defences count up). Neighbours: bracket.rs (the knockout before),
//! run.rs (supplies the losses and records every decision).

use serde::{Deserialize, Serialize};

use super::bootstrap::{significance_gate, GateConfig, GateResult};
use super::Result;

/// The margin `t` a challenger must beat the champion by, for a champion with `wins`
/// consecutive defences: `max(0.03, 0.10 · 0.8^(max(wins, 1) − 1))`.
pub fn margin(wins: u32) -> f64 {
    let w = wins.max(1) - 1;
    (0.10 * 0.8f64.powi(w.min(1000) as i32)).max(0.03)
}

/// Which side took a task or match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The defending champion's method.
    Champion,
    /// The bracket's winner.
    Challenger,
}

/// The rule that decided a boss-round task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// One or both sides failed (missing or non-finite loss).
    Failure,
    /// The challenger did not beat the boss by the margin.
    Margin,
    /// The challenger cleared the margin; fewer than 100 decided samples, gate skipped.
    MarginGateSkipped,
    /// The challenger cleared the margin; the significance gate passed or failed it.
    Significance,
}

impl Rule {
    /// The lowercase name printed and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Failure => "failure",
            Rule::Margin => "margin",
            Rule::MarginGateSkipped => "margin (gate skipped: < 100 decided samples)",
            Rule::Significance => "significance gate",
        }
    }
}

/// One side's result on a boss-round task: `None` loss = failed.
#[derive(Clone, Copy, Debug)]
pub struct SideResult<'a> {
    /// The ranking loss (max(test, synth)); `None` or non-finite = failed.
    pub loss: Option<f64>,
    /// Per-sample hidden-test losses, paired across sides by position.
    pub per_sample: &'a [f64],
}

impl SideResult<'_> {
    fn valid(&self) -> Option<f64> {
        self.loss.filter(|l| l.is_finite())
    }
}

/// How a boss-round task was decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDecision {
    /// Who took it.
    pub winner: Side,
    /// The rule that decided.
    pub rule: Rule,
    /// The margin `t` in force.
    pub margin: f64,
    /// The gate's numbers when it ran (skipped or judged); `None` when the margin or a
    /// failure decided first.
    pub gate: Option<GateResult>,
}

/// Decide one boss-round task for a champion with `wins` consecutive defences.
pub fn decide_task(
    champion: SideResult<'_>,
    challenger: SideResult<'_>,
    wins: u32,
    gate: &GateConfig,
) -> Result<TaskDecision> {
    let t = margin(wins);
    let decision = |winner, rule, gate| TaskDecision {
        winner,
        rule,
        margin: t,
        gate,
    };
    let (b, c) = match (champion.valid(), challenger.valid()) {
        (None, None) | (Some(_), None) => return Ok(decision(Side::Champion, Rule::Failure, None)),
        (None, Some(_)) => return Ok(decision(Side::Challenger, Rule::Failure, None)),
        (Some(b), Some(c)) => (b, c),
    };
    if c >= b * (1.0 - t) {
        return Ok(decision(Side::Champion, Rule::Margin, None));
    }
    let g = significance_gate(champion.per_sample, challenger.per_sample, gate)?;
    Ok(if g.skipped {
        decision(Side::Challenger, Rule::MarginGateSkipped, Some(g))
    } else if g.passed {
        decision(Side::Challenger, Rule::Significance, Some(g))
    } else {
        decision(Side::Champion, Rule::Significance, Some(g))
    })
}

/// The round's outcome from its task decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BossOutcome {
    /// Tasks the challenger took.
    pub challenger_tasks: usize,
    /// Tasks the champion kept.
    pub champion_tasks: usize,
    /// The round's winner: the challenger needs more than half of the tasks.
    pub winner: Side,
}

/// Count the task winners: the challenger wins the round with strictly more than half.
pub fn boss_outcome(winners: &[Side]) -> BossOutcome {
    let c = winners.iter().filter(|w| **w == Side::Challenger).count();
    BossOutcome {
        challenger_tasks: c,
        champion_tasks: winners.len() - c,
        winner: if 2 * c > winners.len() {
            Side::Challenger
        } else {
            Side::Champion
        },
    }
}

/// A knockout match between two players (or a player and the champion's method, which
/// plays as `b`): the lower ranking loss wins; one failed → the other; both failed or an
/// exact tie → `a`, the side listed first (the earlier of the two in the shuffled bracket).
pub fn knockout_winner(a: Option<f64>, b: Option<f64>) -> bool {
    let ok = |x: Option<f64>| x.filter(|v| v.is_finite());
    match (ok(a), ok(b)) {
        (Some(x), Some(y)) => x <= y,
        (None, Some(_)) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(loss: Option<f64>) -> SideResult<'static> {
        SideResult {
            loss,
            per_sample: &[],
        }
    }

    #[test]
    fn margin_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(margin(0), 0.10));
        assert!(close(margin(1), 0.10));
        assert!(close(margin(2), 0.08));
        assert!(close(margin(3), 0.064));
        assert!(close(margin(5), 0.04096));
        assert!(close(margin(6), 0.032768));
        assert!(close(margin(7), 0.03)); // 0.0262 floored
        assert!(close(margin(u32::MAX), 0.03));
    }

    #[test]
    fn challenger_needs_the_margin() {
        let g = GateConfig::default();
        // t = 0.10: needs < 1.8 against 2.0.
        let d = decide_task(side(Some(2.0)), side(Some(1.85)), 1, &g).unwrap();
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Margin));
        let d = decide_task(side(Some(2.0)), side(Some(1.79)), 1, &g).unwrap();
        assert_eq!(
            (d.winner, d.rule),
            (Side::Challenger, Rule::MarginGateSkipped)
        );
        // Three defences: t = 0.064, 1.85 < 2.0 · 0.936 = 1.872 now wins.
        let d = decide_task(side(Some(2.0)), side(Some(1.85)), 3, &g).unwrap();
        assert_eq!(d.winner, Side::Challenger);
        // Exactly at the margin is not enough.
        let d = decide_task(side(Some(2.0)), side(Some(2.0 * 0.9)), 1, &g).unwrap();
        assert_eq!(d.winner, Side::Champion);
    }

    #[test]
    fn failure_rules() {
        let g = GateConfig::default();
        let d = decide_task(side(None), side(Some(9.0)), 1, &g).unwrap();
        assert_eq!((d.winner, d.rule), (Side::Challenger, Rule::Failure));
        let d = decide_task(side(Some(1.0)), side(Some(f64::NAN)), 1, &g).unwrap();
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Failure));
        let d = decide_task(side(Some(f64::INFINITY)), side(None), 1, &g).unwrap();
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Failure));
    }

    #[test]
    fn the_gate_can_overrule_the_margin() {
        // Mean 2.0 vs 1.7 clears t = 0.10, but the challenger's lead comes from 20 huge wins
        // among 200 decided samples it mostly loses: the gate sends the task to the champion.
        let boss: Vec<f64> = vec![2.0; 200];
        let chall: Vec<f64> = (0..200)
            .map(|i| if i < 20 { 2.0 - 4.0 } else { 2.0 + 0.1 })
            .collect();
        let mb = 2.0;
        let mc = chall.iter().sum::<f64>() / 200.0;
        assert!(mc < mb * 0.9);
        let d = decide_task(
            SideResult {
                loss: Some(mb),
                per_sample: &boss,
            },
            SideResult {
                loss: Some(mc),
                per_sample: &chall,
            },
            1,
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Significance));
        let g = d.gate.unwrap();
        assert!(!g.passed && g.decided == 200 && g.win_share < 0.55, "{g:?}");
    }

    #[test]
    fn the_round_needs_more_than_half() {
        use Side::*;
        let three_three = [
            Challenger, Champion, Challenger, Champion, Challenger, Champion,
        ];
        let o = boss_outcome(&three_three);
        assert_eq!(
            (o.challenger_tasks, o.champion_tasks, o.winner),
            (3, 3, Champion)
        );
        let four = [
            Challenger, Champion, Challenger, Challenger, Challenger, Champion,
        ];
        assert_eq!(boss_outcome(&four).winner, Challenger);
        assert_eq!(boss_outcome(&[]).winner, Champion);
    }

    #[test]
    fn knockout_lower_loss_wins_and_failures() {
        assert!(knockout_winner(Some(1.0), Some(2.0)));
        assert!(!knockout_winner(Some(2.0), Some(1.0)));
        assert!(knockout_winner(Some(1.0), Some(1.0)));
        assert!(!knockout_winner(None, Some(5.0)));
        assert!(!knockout_winner(Some(f64::NAN), Some(5.0)));
        assert!(knockout_winner(Some(5.0), None));
        assert!(knockout_winner(None, None));
    }
}
