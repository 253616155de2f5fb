//! Seeded brackets (SPEC §5): who meets whom, and on which task type.
//!
//! - ≤ [`KNOCKOUT_MAX`] players: a knockout round shuffles the players with a PCG64 seeded
//!   from `(seed, round)` and pairs neighbours; an odd player out meets the champion's
//!   method ([`Opponent::Champion`]), or advances on a bye when there is no champion yet.
//! - more: one group round first. The players are shuffled and dealt round-robin into
//!   `ceil(n / 32)` groups, so groups hold 15–32 players (one group for 15–32 entries, then
//!   groups of 16–32); the live network's "~20–32" cannot hold below 40 entries, and we
//!   prefer one full group to two thin ones. Each group plays one instruct task and its top
//!   [`GROUP_ADVANCE`] advance to the knockout.
//! - the task type of each match is drawn with the weights of [`TaskKind::weight`],
//!   renormalised over the kinds the runner supports.
//!
//! Every draw comes from its own generator, keyed by purpose, round and match, so one
//! round's draws never shift another's: a resumed tournament redraws the same bracket.
//! Neighbours: mod.rs (Entry, TaskKind), run.rs (plays the bracket).

use gradients_engine::data::rng::Pcg64;
use gradients_engine::lora::counter_hash;

use super::{terr, Result, TaskKind};

/// The most players a knockout starts from without a group round.
pub const KNOCKOUT_MAX: usize = 14;
/// The largest group of the group round.
pub const GROUP_MAX: usize = 32;
/// How many players of each group advance to the knockout.
pub const GROUP_ADVANCE: usize = 8;

/// Purpose tags mixed into the seed of each generator.
const TAG_KNOCKOUT: u64 = 0x6b6e_6f63_6b6f_7574; // "knockout"
const TAG_GROUPS: u64 = 0x6772_6f75_7073; // "groups"
const TAG_KIND: u64 = 0x6b69_6e64; // "kind"

/// A generator for one purpose: numpy's PCG64 seeded with `counter_hash(words)`.
fn rng(words: &[u64]) -> Pcg64 {
    Pcg64::new(counter_hash(words))
}

/// A uniform f64 in [0, 1) from the top 53 bits of a draw (numpy's `random()`).
fn uniform(r: &mut Pcg64) -> f64 {
    (r.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The other side of a knockout pairing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opponent {
    /// Another player (an index into the round's players, like [`Pairing::a`]).
    Player(usize),
    /// The defending champion's method (the odd player out when a champion exists).
    Champion,
    /// No opponent: the odd player out advances (no champion yet).
    Bye,
}

/// One knockout match: player `a` against `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pairing {
    /// A player id (whatever ids the caller passed in).
    pub a: usize,
    /// Its opponent.
    pub b: Opponent,
}

/// The pairs of knockout round `round` among `players` (ids), deterministic in
/// `(seed, round, players)`: shuffle, pair neighbours, the odd one out last.
pub fn knockout_pairs(players: &[usize], seed: u64, round: u32, champion: bool) -> Vec<Pairing> {
    let mut order = players.to_vec();
    rng(&[seed, TAG_KNOCKOUT, round as u64]).shuffle(&mut order);
    let mut out: Vec<Pairing> = order
        .chunks_exact(2)
        .map(|p| Pairing {
            a: p[0],
            b: Opponent::Player(p[1]),
        })
        .collect();
    if order.len() % 2 == 1 {
        out.push(Pairing {
            a: order[order.len() - 1],
            b: if champion {
                Opponent::Champion
            } else {
                Opponent::Bye
            },
        });
    }
    out
}

/// The groups of the group round: `players` shuffled (seeded) and dealt round-robin into
/// `ceil(n / GROUP_MAX)` groups, each kept in dealt order.
pub fn groups(players: &[usize], seed: u64) -> Vec<Vec<usize>> {
    let n = players.len();
    let count = n.div_ceil(GROUP_MAX).max(1);
    let mut order = players.to_vec();
    rng(&[seed, TAG_GROUPS]).shuffle(&mut order);
    let mut out = vec![Vec::new(); count];
    for (i, p) in order.into_iter().enumerate() {
        out[i % count].push(p);
    }
    out
}

/// The players of one group that advance: the [`GROUP_ADVANCE`] lowest losses, ties and NaN
/// broken by the order given (NaN, i.e. failed, ranks last and never advances).
pub fn group_advancers(members: &[(usize, f64)]) -> Vec<usize> {
    let mut ranked: Vec<(usize, &(usize, f64))> = members.iter().enumerate().collect();
    ranked.sort_by(|(i, (_, x)), (j, (_, y))| {
        let key = |v: f64| if v.is_nan() { f64::INFINITY } else { v };
        key(*x).total_cmp(&key(*y)).then(i.cmp(j))
    });
    ranked
        .into_iter()
        .filter(|(_, (_, l))| l.is_finite())
        .take(GROUP_ADVANCE)
        .map(|(_, (p, _))| *p)
        .collect()
}

/// Whether `n` entries start with a group round.
pub fn needs_group_round(n: usize) -> bool {
    n > KNOCKOUT_MAX
}

/// The task type of match `index` of round `round`: drawn with [`TaskKind::weight`]
/// renormalised over `supported` (an error when it is empty).
pub fn draw_task_kind(
    supported: &[TaskKind],
    seed: u64,
    round: u32,
    index: u32,
) -> Result<TaskKind> {
    let mut kinds: Vec<TaskKind> = supported.to_vec();
    kinds.sort();
    kinds.dedup();
    let total: f64 = kinds.iter().map(|k| k.weight()).sum();
    let Some(&last) = kinds.last() else {
        return Err(terr!(
            "kinds",
            "no supported task kinds to draw a match from"
        ));
    };
    let u = uniform(&mut rng(&[seed, TAG_KIND, round as u64, index as u64])) * total;
    let mut acc = 0.0;
    for &k in &kinds {
        acc += k.weight();
        if u < acc {
            return Ok(k);
        }
    }
    Ok(last)
}

/// The boss round's task kinds: `count` tasks spread evenly over `supported` in
/// [`TaskKind`] order (the live network's 6 = 2 per type; with instruct alone, all instruct).
pub fn boss_task_kinds(supported: &[TaskKind], count: usize) -> Result<Vec<TaskKind>> {
    let mut kinds: Vec<TaskKind> = supported.to_vec();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return Err(terr!("kinds", "no supported task kinds for the boss round"));
    }
    if count == 0 {
        return Err(terr!(
            "boss_tasks",
            "the boss round needs at least one task"
        ));
    }
    let per = count.div_ceil(kinds.len());
    let mut out: Vec<TaskKind> = kinds
        .iter()
        .flat_map(|&k| std::iter::repeat_n(k, per))
        .collect();
    out.truncate(count);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<usize> {
        (0..n).collect()
    }

    #[test]
    fn knockout_is_deterministic_and_covers_everyone() {
        let a = knockout_pairs(&ids(10), 7, 0, true);
        assert_eq!(a, knockout_pairs(&ids(10), 7, 0, true));
        assert_eq!(a.len(), 5);
        let mut seen: Vec<usize> = a
            .iter()
            .flat_map(|p| match p.b {
                Opponent::Player(b) => vec![p.a, b],
                _ => vec![p.a],
            })
            .collect();
        seen.sort();
        assert_eq!(seen, ids(10));
        // Another seed or round gives another bracket (for 10 players, certainly).
        assert_ne!(a, knockout_pairs(&ids(10), 8, 0, true));
        assert_ne!(a, knockout_pairs(&ids(10), 7, 1, true));
    }

    #[test]
    fn odd_player_meets_the_champion_or_gets_a_bye() {
        let with = knockout_pairs(&ids(5), 3, 0, true);
        assert_eq!(with.len(), 3);
        assert_eq!(with.iter().filter(|p| p.b == Opponent::Champion).count(), 1);
        assert_eq!(with[2].b, Opponent::Champion);
        let without = knockout_pairs(&ids(5), 3, 0, false);
        assert_eq!(without[2].b, Opponent::Bye);
        assert_eq!(with[2].a, without[2].a);
    }

    #[test]
    fn groups_above_fourteen() {
        assert!(!needs_group_round(14));
        assert!(needs_group_round(15));
        let g = groups(&ids(15), 1);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].len(), 15);
        let g = groups(&ids(70), 1);
        assert_eq!(g.len(), 3);
        let sizes: Vec<usize> = g.iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![24, 23, 23]);
        let mut all: Vec<usize> = g.concat();
        all.sort();
        assert_eq!(all, ids(70));
        assert_eq!(g, groups(&ids(70), 1));
    }

    #[test]
    fn top_eight_advance_and_failures_never_do() {
        let members: Vec<(usize, f64)> = (0..12)
            .map(|i| (100 + i, if i == 0 { f64::NAN } else { 20.0 - i as f64 }))
            .collect();
        let adv = group_advancers(&members);
        assert_eq!(adv, vec![111, 110, 109, 108, 107, 106, 105, 104]);
        let few = group_advancers(&[(1, 2.0), (2, f64::NAN), (3, 1.0)]);
        assert_eq!(few, vec![3, 1]);
    }

    #[test]
    fn task_kind_draw_follows_the_weights() {
        let all = TaskKind::ALL;
        let mut counts = [0usize; 3];
        for i in 0..8000 {
            let k = draw_task_kind(&all, 11, 0, i).unwrap();
            counts[all.iter().position(|&x| x == k).unwrap()] += 1;
        }
        // 0.4/0.8, 0.15/0.8, 0.25/0.8 of 8000 = 4000, 1500, 2500 (±5σ).
        for (c, want) in counts.iter().zip([4000.0, 1500.0, 2500.0]) {
            assert!((*c as f64 - want).abs() < 250.0, "{counts:?}");
        }
        // Instruct alone: always instruct; none: an error.
        assert!(
            (0..50)
                .all(|i| draw_task_kind(&[TaskKind::Instruct], 1, 2, i).unwrap()
                    == TaskKind::Instruct)
        );
        assert!(draw_task_kind(&[], 1, 0, 0).is_err());
        // Instruct + dpo renormalised: dpo about 0.15/0.55 = 27%.
        let dpo = (0..4000)
            .filter(|&i| {
                draw_task_kind(&[TaskKind::Dpo, TaskKind::Instruct], 5, 0, i).unwrap()
                    == TaskKind::Dpo
            })
            .count();
        assert!((dpo as f64 - 4000.0 * 0.15 / 0.55).abs() < 150.0, "{dpo}");
    }

    #[test]
    fn boss_kinds_spread_over_supported_types() {
        use TaskKind::*;
        assert_eq!(
            boss_task_kinds(&TaskKind::ALL, 6).unwrap(),
            vec![Instruct, Instruct, Dpo, Dpo, Grpo, Grpo]
        );
        assert_eq!(boss_task_kinds(&[Instruct], 2).unwrap(), vec![Instruct; 2]);
        assert_eq!(
            boss_task_kinds(&[Dpo, Instruct], 4).unwrap(),
            vec![Instruct, Instruct, Dpo, Dpo]
        );
        assert!(boss_task_kinds(&[], 6).is_err());
        assert!(boss_task_kinds(&[Instruct], 0).is_err());
    }
}
