//! GRPO tasks in tournament matches: SPEC §3's score, normalised over the submissions a
//! match compares, turned into a loss so that the knockout, the group round, the boss
//! round's margin rule, its significance gate and the weights' `perf_diff` all apply
//! unchanged (lower is better).
//!
//! For the compared valid results (not failed, with GRPO detail; validator/mod.rs) and the
//! task's reward weights `w` (total `W = Σ w_k`), on each evaluation set:
//! `score = Σ_k w_k·norm_k − 0.5·KL` with `norm_k = (r_k − min_k)/max_j(r_jk − min_k)` over
//! the compared results' means (0 when they all have the same mean) — the engine's
//! `grpo_scores`, which scoring.rs uses for a whole task. The match loss is the **regret**
//! `W − score = Σ_k w_k·(1 − norm_k) + 0.5·KL ≥ 0`: 0 for a result best on every reward with
//! no KL. The ranking loss is the worse set's, `max(regret_test, regret_synth)` (= `W −
//! min(score_test, score_synth)`, scoring.rs's "worse of the two"); the test loss is
//! `regret_test`.
//!
//! Decisions (SPEC §5 written for losses, applied to GRPO through the regret):
//! - knockout and group round: the lower regret wins / advances (normalised over the pair or
//!   the group); a failed side loses; both failed → the first listed, as for losses;
//! - boss round margin: the challenger takes the task only if
//!   `regret_c < regret_boss·(1 − t)`. Since the regret is `W − score`, this is
//!   `score_c > score_boss + t·(W − score_boss)`: the challenger must close the fraction `t`
//!   of the boss's gap to a perfect score. On two results each reward normalises to 1 for
//!   the better and 0 for the worse, so a challenger better on every reward (and not paying
//!   for it in KL) wins, and one equal on every reward must beat the boss's regret
//!   `W + 0.5·KL` by the fraction `t` through KL alone (ties keep the champion);
//! - significance gate: on the paired per-prompt regrets of the test prompts,
//!   `Σ_k w_k·(1 − norm_k(r_ik)) + 0.5·KL_i` with the same per-reward maps as the means
//!   (so their mean is `regret_test`); "decided" means they differ by more than the gate's
//!   epsilon, and the lead bar is `max(0.01, 1% of the boss's mean regret)`. Test prompts are
//!   few (≤ 400), so with fewer than 100 decided prompts the margin alone decides, as for
//!   losses.

use crate::validator::{GrpoSet, MethodResult};

/// One side's standing in a GRPO match.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoStanding {
    /// max(test, synth) regret; `None` when the side failed.
    pub loss: Option<f64>,
    /// Test regret; `None` when the side failed.
    pub test_loss: Option<f64>,
    /// Per test prompt regret (empty when failed).
    pub per_prompt: Vec<f64>,
}

/// Per reward, the affine map `x ↦ (x − min)/range` over the compared means (`None`: all
/// equal, every value maps to 0).
fn maps(sets: &[&GrpoSet], k: usize) -> Vec<Option<(f64, f64)>> {
    (0..k)
        .map(|j| {
            let min = sets
                .iter()
                .map(|s| s.mean_rewards[j])
                .fold(f64::INFINITY, f64::min);
            let range = sets
                .iter()
                .map(|s| s.mean_rewards[j] - min)
                .fold(0.0f64, f64::max);
            (range > 0.0).then_some((min, range))
        })
        .collect()
}

/// The regret of one vector of raw rewards and a KL under `maps` and `w`.
fn regret(rewards: &[f64], kl: f64, maps: &[Option<(f64, f64)>], w: &[f64]) -> f64 {
    let reward: f64 = w
        .iter()
        .zip(rewards)
        .zip(maps)
        .map(|((wk, r), m)| match m {
            Some((min, range)) => wk * (1.0 - (r - min) / range),
            None => *wk,
        })
        .sum();
    reward + gradients_engine::eval::grpo::KL_COEF * kl
}

/// The standings of `results` (the sides of one match, any number) on a GRPO task; see the
/// module doc.
pub fn grpo_standings(results: &[&MethodResult]) -> Vec<GrpoStanding> {
    let failed = || GrpoStanding {
        loss: None,
        test_loss: None,
        per_prompt: Vec::new(),
    };
    let k = results
        .iter()
        .find_map(|r| r.grpo.as_ref().map(|g| g.weights.len()));
    let valid: Vec<bool> = results
        .iter()
        .map(|r| {
            r.failed.is_none()
                && r.grpo.as_ref().is_some_and(|g| {
                    Some(g.weights.len()) == k
                        && g.test.mean_rewards.len() == g.weights.len()
                        && g.synth.mean_rewards.len() == g.weights.len()
                        && g.test.is_finite()
                        && g.synth.is_finite()
                })
        })
        .collect();
    let details: Vec<_> = results
        .iter()
        .zip(&valid)
        .filter(|(_, &ok)| ok)
        .filter_map(|(r, _)| r.grpo.as_ref())
        .collect();
    let Some(first) = details.first() else {
        return results.iter().map(|_| failed()).collect();
    };
    let w = &first.weights;
    let k = w.len();
    let tests: Vec<&GrpoSet> = details.iter().map(|g| &g.test).collect();
    let synths: Vec<&GrpoSet> = details.iter().map(|g| &g.synth).collect();
    let (tm, sm) = (maps(&tests, k), maps(&synths, k));
    results
        .iter()
        .zip(&valid)
        .map(|(r, &ok)| match (&r.grpo, ok) {
            (Some(g), true) => {
                let t = regret(&g.test.mean_rewards, g.test.kl, &tm, w);
                let s = regret(&g.synth.mean_rewards, g.synth.kl, &sm, w);
                GrpoStanding {
                    loss: Some(t.max(s)),
                    test_loss: Some(t),
                    per_prompt: g
                        .test
                        .rewards
                        .iter()
                        .zip(&g.test.kls)
                        .map(|(rw, kl)| regret(rw, *kl, &tm, w))
                        .collect(),
                }
            }
            _ => failed(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::grpo_task_scores;
    use crate::tournament::bootstrap::GateConfig;
    use crate::tournament::boss::{decide_task, knockout_winner, Rule, Side, SideResult};
    use crate::validator::GrpoDetail;

    fn set(rewards: Vec<Vec<f64>>, kls: Vec<f64>) -> GrpoSet {
        let n = rewards.len() as f64;
        let k = rewards[0].len();
        GrpoSet {
            mean_rewards: (0..k)
                .map(|j| rewards.iter().map(|r| r[j]).sum::<f64>() / n)
                .collect(),
            kl: kls.iter().sum::<f64>() / n,
            rewards,
            kls,
        }
    }

    fn result(test: GrpoSet, synth: GrpoSet) -> MethodResult {
        MethodResult {
            task_id: "t".into(),
            method_hash: "m".into(),
            test_loss: 0.0,
            synth_loss: 0.0,
            rank_loss: 0.0,
            per_sample_test: Vec::new(),
            test_rows: Vec::new(),
            adapter_sha256: None,
            adapter_dir: None,
            failed: None,
            tokens: 1,
            wall_s: 0.0,
            search: Vec::new(),
            seq: 0,
            grpo: Some(GrpoDetail {
                weights: vec![2.0, 0.5],
                reward_kinds: vec!["contains".into(), "length".into()],
                test,
                synth,
            }),
        }
    }

    fn same(rw: &[f64], kl: f64) -> MethodResult {
        let s = set(vec![rw.to_vec(), rw.to_vec()], vec![kl, kl]);
        result(s.clone(), s)
    }

    #[test]
    fn regret_is_total_weight_minus_the_normalised_score() {
        let a = result(
            set(vec![vec![1.0, 0.5], vec![0.0, 0.5]], vec![0.2, 0.4]),
            set(vec![vec![1.0, 0.0]], vec![0.1]),
        );
        let b = result(
            set(vec![vec![0.0, 1.0], vec![0.0, 0.0]], vec![0.0, 0.2]),
            set(vec![vec![0.0, 1.0]], vec![0.3]),
        );
        let c = same(&[0.0, 0.25], 0.05);
        let all = [&a, &b, &c];
        let st = grpo_standings(&all);
        let scores = grpo_task_scores(&all);
        for (s, sc) in st.iter().zip(&scores) {
            // max regret = W − min score
            assert!((s.loss.unwrap() - (2.5 - sc)).abs() < 1e-12, "{s:?} {sc}");
            let mean = s.per_prompt.iter().sum::<f64>() / s.per_prompt.len() as f64;
            assert!((mean - s.test_loss.unwrap()).abs() < 1e-12);
        }
        // by hand, test set: reward 0 means 0.5, 0, 0 → a 1, b 0, c 0; reward 1 means
        // 0.5, 0.5, 0.25 → a 1, b 1, c 0; KL 0.3, 0.1, 0.05
        assert!((st[0].test_loss.unwrap() - (0.0 + 0.0 + 0.15)).abs() < 1e-12);
        assert!((st[1].test_loss.unwrap() - (2.0 + 0.0 + 0.05)).abs() < 1e-12);
        assert!((st[2].test_loss.unwrap() - (2.0 + 0.5 + 0.025)).abs() < 1e-12);
        // a's first prompt: reward 0 = 1 → norm 2, reward 1 = 0.5 → norm 1
        assert!((st[0].per_prompt[0] - (2.0 * (1.0 - 2.0) + 0.0 + 0.1)).abs() < 1e-12);
        // a failed side loses
        let mut f = same(&[1.0, 1.0], 0.0);
        f.failed = Some("boom".into());
        let st = grpo_standings(&[&f, &c]);
        assert_eq!(st[0].loss, None);
        assert!(st[1].per_prompt.len() == 2 && st[1].loss.is_some());
        assert!(!knockout_winner(st[0].loss, st[1].loss));
    }

    #[test]
    fn boss_margin_on_grpo_regrets() {
        let g = GateConfig::default();
        let decide = |boss: &MethodResult, ch: &MethodResult, wins: u32| {
            let st = grpo_standings(&[boss, ch]);
            decide_task(
                SideResult {
                    loss: st[0].loss,
                    per_sample: &st[0].per_prompt,
                },
                SideResult {
                    loss: st[1].loss,
                    per_sample: &st[1].per_prompt,
                },
                wins,
                &g,
            )
            .unwrap()
        };
        // better on every reward with a small KL: challenger (regrets 2.5 + 0.05 vs 0.1)
        let d = decide(&same(&[0.0, 0.0], 0.1), &same(&[1.0, 1.0], 0.2), 1);
        assert_eq!(
            (d.winner, d.rule),
            (Side::Challenger, Rule::MarginGateSkipped)
        );
        // better on the heavy reward only: regret 0.5 + 0.1 vs 2 + 0.1 → challenger
        let d = decide(&same(&[0.0, 1.0], 0.2), &same(&[1.0, 0.0], 0.2), 1);
        assert_eq!(d.winner, Side::Challenger);
        // better on the light reward only: 2.0 vs 0.5 → champion by the margin
        let d = decide(&same(&[1.0, 0.0], 0.2), &same(&[0.0, 1.0], 0.2), 1);
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Margin));
        // equal rewards: only KL, and it must cut the boss's regret 2.5 + 0.5·KL by t
        // boss KL 1.0 → regret 3.0; t = 0.10 needs < 2.7, i.e. KL_c < 0.4
        let boss = same(&[0.5, 0.5], 1.0);
        assert_eq!(
            decide(&boss, &same(&[0.5, 0.5], 0.5), 1).winner,
            Side::Champion
        );
        assert_eq!(
            decide(&boss, &same(&[0.5, 0.5], 0.3), 1).winner,
            Side::Challenger
        );
        // seven defences: t = 0.03 needs < 2.91, KL_c < 0.82
        assert_eq!(
            decide(&boss, &same(&[0.5, 0.5], 0.8), 7).winner,
            Side::Challenger
        );
        // both failed → champion
        let mut f = same(&[1.0, 1.0], 0.0);
        f.failed = Some("x".into());
        let d = decide(&f, &f.clone(), 1);
        assert_eq!((d.winner, d.rule), (Side::Champion, Rule::Failure));
    }

    #[test]
    fn gate_runs_on_per_prompt_regrets() {
        // 120 test prompts: the challenger wins the heavy reward on 100 of them, the boss on
        // none: the gate runs (≥ 100 decided) and passes
        let n = 120;
        let boss_rw: Vec<Vec<f64>> = (0..n).map(|_| vec![0.0, 0.5]).collect();
        let ch_rw: Vec<Vec<f64>> = (0..n)
            .map(|i| vec![if i < 100 { 1.0 } else { 0.0 }, 0.5])
            .collect();
        let boss = result(
            set(boss_rw.clone(), vec![0.0; n]),
            set(boss_rw, vec![0.0; n]),
        );
        let ch = result(set(ch_rw.clone(), vec![0.0; n]), set(ch_rw, vec![0.0; n]));
        let st = grpo_standings(&[&boss, &ch]);
        let d = decide_task(
            SideResult {
                loss: st[0].loss,
                per_sample: &st[0].per_prompt,
            },
            SideResult {
                loss: st[1].loss,
                per_sample: &st[1].per_prompt,
            },
            1,
            &GateConfig::default(),
        )
        .unwrap();
        assert_eq!((d.winner, d.rule), (Side::Challenger, Rule::Significance));
        let gate = d.gate.unwrap();
        assert!(!gate.skipped && gate.passed, "{gate:?}");
    }
}
