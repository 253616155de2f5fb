//! The end of a tournament (used by run/mod.rs): the new champion (the challenger, unless
//! the champion kept the boss round), the ranking (champion, runner-up, then the others by
//! how far they got and their loss), the [`Outcome`], and in one transaction guarded by the
//! run's `running` status: the stored outcome, the champion and the winner's library entry.

use std::collections::HashMap;

use super::super::boss::Side;
use super::super::store::{self, Champion, Stage};
use super::super::{terr, Entry, Result};
use super::play::{BossRound, Progress};
use super::{BossSummary, Outcome, Runner};
use crate::library::{archive, Archive, TaskWin};
use crate::store::Store;

/// Crown, rank, build the outcome and [`finish`] it.
pub(super) fn conclude(
    r: &Runner<'_, '_>,
    p: Progress<'_>,
    challenger: Entry,
    champion: Option<Champion>,
    boss: Option<BossRound>,
    parents: &HashMap<String, String>,
) -> Result<Outcome> {
    let (id, entries) = (r.id.clone(), p.entries);
    let mut records = p.records;
    let mut out_at = p.out_at;
    let (boss, boss_losses): (Option<BossSummary>, Vec<(f64, f64)>) = match boss {
        Some((summary, losses, recs)) => {
            records.extend(recs);
            (Some(summary), losses)
        }
        None => (None, Vec::new()),
    };
    // The new champion and the ranking.
    let crowned = Champion {
        method_hash: challenger.method_hash.clone(),
        uid: challenger.uid,
        hotkey: challenger.hotkey.clone(),
        defences: 0,
        since_tournament: id.clone(),
    };
    let (after, defended, runner_up) = match (&champion, &boss) {
        (Some(c), Some(b)) if b.winner == Side::Champion => {
            let mut kept = c.clone();
            kept.defences += 1;
            kept.since_tournament = id.clone();
            (kept, true, Some(challenger.uid))
        }
        (Some(c), _) => (crowned, false, Some(c.uid)),
        (None, _) => (crowned, false, None),
    };
    out_at.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(
                a.2.unwrap_or(f64::INFINITY)
                    .total_cmp(&b.2.unwrap_or(f64::INFINITY)),
            )
            .then(entries[a.0].uid.cmp(&entries[b.0].uid))
    });
    let mut ranked_uids = vec![after.uid];
    ranked_uids.extend(runner_up);
    ranked_uids.extend(out_at.iter().map(|(i, _, _)| entries[*i].uid));
    let mut seen = std::collections::HashSet::new();
    ranked_uids.retain(|u| seen.insert(*u));
    let mut participants: Vec<u16> = entries.iter().map(|e| e.uid).collect();
    participants.extend(champion.as_ref().map(|c| c.uid));
    participants.sort();
    participants.dedup();

    let outcome = Outcome {
        tournament_id: id.clone(),
        entries: entries.to_vec(),
        matches: records,
        bracket_winner: challenger.method_hash.clone(),
        champion_before: champion.clone(),
        boss,
        champion_after: after.clone(),
        ranked_uids,
        participants,
        boss_losses,
    };
    finish(
        r.store,
        r,
        &outcome,
        defended,
        parents.get(&after.method_hash),
    )?;
    Ok(outcome)
}

/// The end, in one transaction: the outcome, the champion and the library entry.
fn finish(
    store: &Store,
    r: &Runner<'_, '_>,
    o: &Outcome,
    defended: bool,
    parent: Option<&String>,
) -> Result<()> {
    let json = serde_json::to_string(o).map_err(|e| terr!("outcome", "{e}"))?;
    let winner = &o.champion_after;
    let m = r.method(&winner.method_hash)?;
    let wins: Vec<TaskWin> = o
        .matches
        .iter()
        .filter(|rec| rec.task_id.is_some())
        .filter(|rec| match rec.stage {
            Stage::Group => {
                rec.players
                    .iter()
                    .filter_map(|s| s.loss.map(|l| (l, &s.method_hash)))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, h)| h)
                    == Some(&winner.method_hash)
            }
            _ => rec.winners.first() == Some(&winner.method_hash),
        })
        .map(|rec| {
            let me = rec
                .players
                .iter()
                .find(|s| s.method_hash == winner.method_hash);
            let other = (rec.stage != Stage::Group)
                .then(|| {
                    rec.players
                        .iter()
                        .find(|s| s.method_hash != winner.method_hash)
                })
                .flatten();
            TaskWin {
                tournament_id: o.tournament_id.clone(),
                task_id: rec.task_id.clone().unwrap_or_default(),
                stage: rec.stage.as_str().to_string(),
                kind: rec.kind.clone(),
                loss: me.and_then(|s| s.loss),
                opponent_hash: other.map(|s| s.method_hash.clone()),
                opponent_loss: other.and_then(|s| s.loss),
            }
        })
        .collect();
    let tx = store.transaction()?;
    let sql = |e| store.err(e);
    if !store::finish_run(&tx, &o.tournament_id, &json).map_err(sql)? {
        return Err(terr!(
            "tournament_runs",
            "tournament {} was finished by another process meanwhile",
            o.tournament_id
        ));
    }
    store::set_champion(&tx, winner).map_err(sql)?;
    archive(
        &tx,
        &Archive {
            tournament_id: &o.tournament_id,
            method_hash: &winner.method_hash,
            name: &m.name,
            recipe: &m.canonical_json(),
            parent_hash: parent.map(|s| s.as_str()),
            uid: winner.uid,
            hotkey: &winner.hotkey,
            defended,
            wins: &wins,
        },
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(())
}
