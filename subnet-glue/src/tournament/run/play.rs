//! The matches of a tournament (used by run/mod.rs): the group round (one task per group,
//! the top 8 by loss advance), the knockout rounds (one task per pair, its kind drawn with
//! SPEC §5's weights over the supported kinds; the lower loss wins (grpo tasks: the lower
//! regret, the score normalised over the sides, tournament/grpo.rs); an odd player meets the
//! champion's method or gets a bye) and the boss round (its tasks spread over the kinds,
//! each decided by the margin rule and the significance gate). Every decided match is
//! stored at once and read back on resume instead of being played again.

use std::collections::HashMap;

use super::super::boss::{boss_outcome, decide_task, knockout_winner, Side, SideResult};
use super::super::bracket::{
    boss_task_kinds, draw_task_kind, group_advancers, groups, knockout_pairs, Opponent,
};
use super::super::grpo::grpo_standings;
use super::super::store::{self, Champion, MatchRecord, Showing, Stage};
use super::super::{terr, Entry, Result, TaskKind};
use super::{BossSummary, Runner};
use crate::validator::MethodResult;

/// On a grpo task, replace the showings' losses by the GRPO regrets normalised over these
/// sides (grpo.rs); returns each side's per-sample values for the gate (per-prompt regrets,
/// or the validator's per-sample test losses for other kinds).
fn match_losses(kind: TaskKind, shows: &mut [Showing], results: &[&MethodResult]) -> Vec<Vec<f64>> {
    if kind != TaskKind::Grpo {
        return results.iter().map(|r| r.per_sample_test.clone()).collect();
    }
    shows
        .iter_mut()
        .zip(grpo_standings(results))
        .map(|(s, st)| {
            s.loss = st.loss;
            s.test_loss = st.test_loss;
            st.per_prompt
        })
        .collect()
}

/// The rule text of a knockout match of `kind`.
fn lower_wins(kind: TaskKind) -> &'static str {
    if kind == TaskKind::Grpo {
        "higher grpo score (lower regret, normalised over the pair)"
    } else {
        "lower loss"
    }
}

/// The bracket's progress: the entries, the records so far and who went out where.
pub(super) struct Progress<'x> {
    /// The entries that play.
    pub(super) entries: &'x [Entry],
    /// Entry index by method hash.
    pub(super) by_hash: HashMap<&'x str, usize>,
    /// Every match decided so far, in order.
    pub(super) records: Vec<MatchRecord>,
    /// (entry index, stage order, loss) of every eliminated player, for the ranking.
    pub(super) out_at: Vec<(usize, u32, Option<f64>)>,
}

/// What the boss round produced: its summary, the ranking losses `(champion, challenger)`
/// of the tasks both completed, and its records.
pub(super) type BossRound = (BossSummary, Vec<(f64, f64)>, Vec<MatchRecord>);

/// The group round: one task per group; returns the players that advance (entry order).
pub(super) fn group_round(
    r: &mut Runner<'_, '_>,
    prog: &mut Progress<'_>,
    players: &[usize],
    kinds: &[TaskKind],
) -> Result<Vec<usize>> {
    let (store, cfg, id) = (r.store, r.cfg, r.id.clone());
    let entries = prog.entries;
    let kind = if kinds.contains(&TaskKind::Instruct) {
        TaskKind::Instruct
    } else {
        *kinds
            .first()
            .ok_or_else(|| terr!("sources", "no task sources"))?
    };
    let mut next = Vec::new();
    for (g, members) in groups(players, cfg.seed).into_iter().enumerate() {
        let g = g as u32;
        let rec = match store::load_match(store, &id, Stage::Group, 0, g)? {
            Some(rec) => {
                r.emit(&rec, true);
                rec
            }
            None => {
                let task = r.task(Stage::Group, 0, g, kind)?;
                let mut shows = Vec::new();
                let mut results = Vec::new();
                for &p in &members {
                    let e = &entries[p];
                    let res = r.evaluate(&task, &e.method_hash)?;
                    shows.push(Runner::showing(
                        (e.method_hash.as_str(), e.uid),
                        false,
                        &res,
                    ));
                    results.push(res);
                }
                let refs: Vec<&MethodResult> = results.iter().collect();
                match_losses(kind, &mut shows, &refs);
                let ranked: Vec<(usize, f64)> = shows
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, s.loss.unwrap_or(f64::NAN)))
                    .collect();
                let winners = group_advancers(&ranked)
                    .into_iter()
                    .map(|i| shows[i].method_hash.clone())
                    .collect();
                let rec = MatchRecord {
                    stage: Stage::Group,
                    round: 0,
                    idx: g,
                    task_id: Some(task.task_id.clone()),
                    kind: kind.to_string(),
                    players: shows,
                    winners,
                    rule: if kind == TaskKind::Grpo {
                        "top 8 by grpo regret advance".into()
                    } else {
                        "top 8 by loss advance".into()
                    },
                    margin: None,
                    gate: None,
                };
                store::save_match(store, &id, &rec)?;
                r.emit(&rec, false);
                rec
            }
        };
        for s in &rec.players {
            let i = prog.by_hash[s.method_hash.as_str()];
            if rec.winners.contains(&s.method_hash) {
                next.push(i);
            } else {
                prog.out_at.push((i, 0, s.loss));
            }
        }
        prog.records.push(rec);
    }
    next.sort();
    Ok(next)
}

/// The knockout rounds; returns the last winner (the challenger when there is a champion).
pub(super) fn knockout(
    r: &mut Runner<'_, '_>,
    prog: &mut Progress<'_>,
    mut players: Vec<usize>,
    kinds: &[TaskKind],
    champion: Option<&Champion>,
) -> Result<Entry> {
    let (store, cfg, id) = (r.store, r.cfg, r.id.clone());
    let entries = prog.entries;
    let mut round = 0u32;
    while players.len() > 1 {
        let pairs = knockout_pairs(&players, cfg.seed, round, champion.is_some());
        let mut next = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            let i = i as u32;
            let rec = match store::load_match(store, &id, Stage::Knockout, round, i)? {
                Some(rec) => {
                    r.emit(&rec, true);
                    rec
                }
                None => {
                    let a = &entries[p.a];
                    let rec = if p.b == Opponent::Bye {
                        MatchRecord {
                            stage: Stage::Knockout,
                            round,
                            idx: i,
                            task_id: None,
                            kind: String::new(),
                            players: vec![Showing {
                                method_hash: a.method_hash.clone(),
                                uid: a.uid,
                                champion: false,
                                loss: None,
                                test_loss: None,
                                failed: None,
                            }],
                            winners: vec![a.method_hash.clone()],
                            rule: "bye (odd player out, no champion yet)".into(),
                            margin: None,
                            gate: None,
                        }
                    } else {
                        let kind = draw_task_kind(kinds, cfg.seed, round, i)?;
                        let task = r.task(Stage::Knockout, round, i, kind)?;
                        let (b_hash, b_uid, b_champ) = match p.b {
                            Opponent::Player(b) => {
                                (entries[b].method_hash.clone(), entries[b].uid, false)
                            }
                            _ => {
                                let c = champion
                                    .as_ref()
                                    .ok_or_else(|| terr!("champion", "no champion to meet"))?;
                                (c.method_hash.clone(), c.uid, true)
                            }
                        };
                        let ra = r.evaluate(&task, &a.method_hash)?;
                        let rb = r.evaluate(&task, &b_hash)?;
                        let mut shows = [
                            Runner::showing((a.method_hash.as_str(), a.uid), false, &ra),
                            Runner::showing((b_hash.as_str(), b_uid), b_champ, &rb),
                        ];
                        match_losses(kind, &mut shows, &[&ra, &rb]);
                        let [sa, sb] = shows;
                        let a_wins = knockout_winner(sa.loss, sb.loss);
                        let winners = match (a_wins, b_champ) {
                            (true, _) => vec![a.method_hash.clone()],
                            (false, false) => vec![b_hash.clone()],
                            // The champion's method beat the odd player: nobody advances.
                            (false, true) => vec![],
                        };
                        MatchRecord {
                            stage: Stage::Knockout,
                            round,
                            idx: i,
                            task_id: Some(task.task_id.clone()),
                            kind: kind.to_string(),
                            players: vec![sa, sb],
                            winners,
                            rule: lower_wins(kind).into(),
                            margin: None,
                            gate: None,
                        }
                    };
                    store::save_match(store, &id, &rec)?;
                    r.emit(&rec, false);
                    rec
                }
            };
            for s in rec.players.iter().filter(|s| !s.champion) {
                let e = prog.by_hash[s.method_hash.as_str()];
                if rec.winners.contains(&s.method_hash) {
                    next.push(e);
                } else {
                    prog.out_at.push((e, round + 1, s.loss));
                }
            }
            prog.records.push(rec);
        }
        players = next;
        round += 1;
    }
    let winner_idx = *players
        .first()
        .ok_or_else(|| terr!("bracket", "the knockout ended without a winner"))?;
    let challenger = entries[winner_idx].clone();
    Ok(challenger)
}

/// The boss round of `challenger` against the champion `c`.
pub(super) fn boss_round(
    r: &mut Runner<'_, '_>,
    challenger: &Entry,
    c: &Champion,
    kinds: &[TaskKind],
) -> Result<BossRound> {
    let (store, cfg, id) = (r.store, r.cfg, r.id.clone());
    let mut boss_losses = Vec::new();
    let mut boss_records = Vec::new();
    let boss_kinds = boss_task_kinds(kinds, cfg.boss_tasks)?;
    let mut sides: Vec<Side> = Vec::new();
    for (j, kind) in boss_kinds.into_iter().enumerate() {
        let j = j as u32;
        let rec = match store::load_match(store, &id, Stage::Boss, 0, j)? {
            Some(rec) => {
                r.emit(&rec, true);
                rec
            }
            None => {
                let task = r.task(Stage::Boss, 0, j, kind)?;
                let rc = r.evaluate(&task, &c.method_hash)?;
                let rh = r.evaluate(&task, &challenger.method_hash)?;
                let mut shows = [
                    Runner::showing((c.method_hash.as_str(), c.uid), true, &rc),
                    Runner::showing(
                        (challenger.method_hash.as_str(), challenger.uid),
                        false,
                        &rh,
                    ),
                ];
                let per_sample = match_losses(kind, &mut shows, &[&rc, &rh]);
                let [sc, sh] = shows;
                let d = decide_task(
                    SideResult {
                        loss: sc.loss,
                        per_sample: &per_sample[0],
                    },
                    SideResult {
                        loss: sh.loss,
                        per_sample: &per_sample[1],
                    },
                    c.defences,
                    &cfg.gate,
                )?;
                let winner = match d.winner {
                    Side::Champion => c.method_hash.clone(),
                    Side::Challenger => challenger.method_hash.clone(),
                };
                let rec = MatchRecord {
                    stage: Stage::Boss,
                    round: 0,
                    idx: j,
                    task_id: Some(task.task_id.clone()),
                    kind: kind.to_string(),
                    players: vec![sc, sh],
                    winners: vec![winner],
                    rule: d.rule.as_str().to_string(),
                    margin: Some(d.margin),
                    gate: d.gate.clone(),
                };
                store::save_match(store, &id, &rec)?;
                r.emit(&rec, false);
                rec
            }
        };
        let side = if rec.winners.first() == Some(&challenger.method_hash) {
            Side::Challenger
        } else {
            Side::Champion
        };
        sides.push(side);
        if let (Some(b), Some(h)) = (rec.players[0].loss, rec.players[1].loss) {
            boss_losses.push((b, h));
        }
        boss_records.push(rec);
    }
    let o = boss_outcome(&sides);
    let summary = BossSummary {
        challenger_tasks: o.challenger_tasks,
        champion_tasks: o.champion_tasks,
        winner: o.winner,
    };
    Ok((summary, boss_losses, boss_records))
}
