//! The group round end to end (SPEC §5: above 14 entries, groups of at most 32 play one
//! instruct task each, the top 8 of each group advance, then a knockout), on the tiny random
//! Llama and the letter tokenizer (tests/tasks_support) with a small in-code instruct
//! dataset, so it runs in CI without assets.
//!
//! 34 distinct methods (learning rates and ranks differ, so their hashes do) make two groups
//! of 17: the test checks the groups partition the entries, each group advances exactly its
//! best 8 by loss, the knockout starts from those 16 only and halves them round by round to
//! one winner (every match to the lower loss), the winner becomes champion and ranks first,
//! and the weights on a commit-reveal local chain follow SPEC §6 (participation, rank decay,
//! burn) and reach an epoch through commit → reveal. Then a second tournament among 15 of
//! the methods (one group) meets that champion in the boss round.

mod tasks_support;
mod tournament_support;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use gradients_subnet::chain::{AccountId, Chain, ChainParams, LocalChain};
use gradients_subnet::store::Store;
use gradients_subnet::tournament::bracket::{groups, GROUP_ADVANCE, GROUP_MAX};
use gradients_subnet::tournament::run::{
    submissions_from_paths, Outcome, Submission, TournamentConfig,
};
use gradients_subnet::tournament::settle::{register_neurons, settle};
use gradients_subnet::tournament::store::{self, MatchRecord, Stage};
use gradients_subnet::validator::ValidatorOptions;
use gradients_subnet::weights::{PARTICIPATION_WEIGHT, RANK_DECAY_BASE, TEXT_BASE_WEIGHT};
use tasks_support::{save_tiny_model, tiny_base, write_dataset};
use tournament_support::{instruct_source, play, tournament_config};

/// Tokens each method trains on per task: 4 steps of 2 × 32 tokens.
const TOKEN_BUDGET: u64 = 256;

/// `n` distinct methods: learning rates spread over three decades, ranks 2 or 4.
fn write_methods(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let lr = 1e-5 * 10f64.powf(3.0 * i as f64 / n as f64);
            let r = if i % 2 == 0 { 2 } else { 4 };
            let p = dir.join(format!("m{i:02}.toml"));
            std::fs::write(
                &p,
                format!(
                    "name = \"m{i:02}\"\n[lora]\nr = {r}\nalpha = {}\n[optimizer]\nlr = {lr:e}\n\
                     [train]\nmicro_batch = 2\nseq_len = 32\n",
                    2 * r
                ),
            )
            .unwrap();
            p
        })
        .collect()
}

fn config(model: &Path, data: &Path, work: &Path, seed: u64) -> TournamentConfig {
    let mut v = ValidatorOptions::new(work, 0, TOKEN_BUDGET);
    v.threads = 2;
    v.max_eval_samples = Some(6);
    v.eval_seq_len = Some(32);
    v.eval_batch = 6;
    tournament_config(model, vec![instruct_source(data)], v, seed)
}

fn loss_key(l: Option<f64>) -> f64 {
    l.unwrap_or(f64::INFINITY)
}

/// The group stage: the groups partition the entries, each advances exactly its best
/// `min(8, finished)` by loss. Returns the advancing hashes.
fn check_groups(o: &Outcome, want_groups: usize) -> BTreeSet<String> {
    let group: Vec<&MatchRecord> = o
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Group)
        .collect();
    assert_eq!(group.len(), want_groups, "group matches");
    let mut seen = BTreeSet::new();
    let mut advancing = BTreeSet::new();
    for (g, m) in group.iter().enumerate() {
        assert_eq!(m.idx as usize, g);
        assert_eq!(m.kind, "instruct");
        assert!(m.task_id.is_some(), "a group plays a task");
        assert!(m.players.len() <= GROUP_MAX && m.players.len() > GROUP_ADVANCE);
        for s in &m.players {
            assert!(
                seen.insert(s.method_hash.clone()),
                "{} twice",
                s.method_hash
            );
        }
        let finished = m.players.iter().filter(|s| s.loss.is_some()).count();
        let mut losses: Vec<f64> = m.players.iter().filter_map(|s| s.loss).collect();
        losses.sort_by(f64::total_cmp);
        eprintln!(
            "group {g}: {} players, losses {losses:.4?}",
            m.players.len()
        );
        losses.dedup();
        assert!(
            losses.len() > GROUP_ADVANCE,
            "the methods must score differently"
        );
        assert_eq!(m.winners.len(), finished.min(GROUP_ADVANCE), "group {g}");
        let (won, lost): (Vec<_>, Vec<_>) = m
            .players
            .iter()
            .partition(|s| m.winners.contains(&s.method_hash));
        let worst_winner = won.iter().map(|s| loss_key(s.loss)).fold(0.0, f64::max);
        let best_loser = lost
            .iter()
            .map(|s| loss_key(s.loss))
            .fold(f64::INFINITY, f64::min);
        assert!(won.iter().all(|s| s.loss.is_some()), "a failure advanced");
        assert!(
            worst_winner <= best_loser,
            "group {g}: an advancer ({worst_winner}) is worse than a loser ({best_loser})"
        );
        advancing.extend(m.winners.iter().cloned());
    }
    let entries: BTreeSet<String> = o.entries.iter().map(|e| e.method_hash.clone()).collect();
    assert_eq!(seen, entries, "every entry plays in exactly one group");
    advancing
}

/// The knockout: round 0 holds exactly the advancers, each round halves the field (the
/// lower loss wins), and its last winner is the bracket winner.
fn check_knockout(o: &Outcome, advancing: &BTreeSet<String>) {
    let ko: Vec<&MatchRecord> = o
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Knockout)
        .collect();
    let mut field = advancing.clone();
    let mut round = 0;
    while field.len() > 1 {
        let ms: Vec<_> = ko.iter().filter(|m| m.round == round).collect();
        assert_eq!(ms.len(), field.len().div_ceil(2), "round {round}");
        let players: BTreeSet<String> = ms
            .iter()
            .flat_map(|m| m.players.iter().map(|s| s.method_hash.clone()))
            .collect();
        assert_eq!(players, field, "round {round} plays exactly the field");
        let mut next = BTreeSet::new();
        for m in ms {
            assert_eq!(m.winners.len(), 1);
            if m.players.len() == 2 {
                let (a, b) = (&m.players[0], &m.players[1]);
                let w = if loss_key(a.loss) <= loss_key(b.loss) {
                    a
                } else {
                    b
                };
                assert_eq!(m.winners[0], w.method_hash, "lower loss wins: {m:?}");
            }
            next.insert(m.winners[0].clone());
        }
        field = next;
        round += 1;
    }
    assert!(
        ko.iter().all(|m| m.round < round),
        "no extra knockout rounds"
    );
    assert_eq!(field.into_iter().next().unwrap(), o.bracket_winner);
}

#[test]
fn group_round_then_knockout_then_weights() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let model = save_tiny_model(dir.path());
    let data = write_dataset(dir.path(), 60);
    let files = write_methods(&dir.path().join("methods"), 34);
    let mut subs = submissions_from_paths(&files, 1).unwrap();
    let hashes: BTreeSet<&str> = subs.iter().map(|s| s.entry.method_hash.as_str()).collect();
    assert_eq!(hashes.len(), 34, "the methods differ");
    let db = dir.path().join("t.db");
    let store = Store::open(&db).unwrap();
    let params = ChainParams {
        commit_reveal: true,
        tempo: 30,
        // shorter than a settle's commit → reveal → epoch, so only settle's own record can
        // stop a rerun after a kill from settling twice (checked below)
        weights_rate_limit: 5,
        ..ChainParams::default()
    };
    let mut chain = LocalChain::open_with(&db, &params).unwrap();
    let burn = register_neurons(&mut chain, &mut subs).unwrap();
    let base = tiny_base();
    let work = dir.path().join("work");

    // 1. 34 entries, no champion: two groups of 17, 16 advance, a knockout of 16.
    let cfg = config(&model, &data, &work, 5);
    let o = play(&store, &base, &cfg, &subs);
    let idx: Vec<usize> = (0..34).collect();
    assert_eq!(groups(&idx, cfg.seed).len(), 2);
    let advancing = check_groups(&o, 2);
    assert_eq!(advancing.len(), 2 * GROUP_ADVANCE);
    check_knockout(&o, &advancing);
    assert!(o.boss.is_none() && o.champion_before.is_none());
    let champ = &o.champion_after;
    assert_eq!(champ.method_hash, o.bracket_winner);
    assert_eq!(o.ranked_uids[0], champ.uid);
    let uid_of: HashMap<&str, u16> = o
        .entries
        .iter()
        .map(|e| (e.method_hash.as_str(), e.uid))
        .collect();
    assert_eq!(uid_of[champ.method_hash.as_str()], champ.uid);
    // Ranking: every entry once; those out in the group stage last, by group loss.
    assert_eq!(o.ranked_uids.len(), 34);
    assert_eq!(o.ranked_uids.iter().collect::<BTreeSet<_>>().len(), 34);
    let group_out: Vec<(u16, f64)> = o
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Group)
        .flat_map(|m| {
            m.players
                .iter()
                .filter(|s| !m.winners.contains(&s.method_hash))
        })
        .map(|s| (s.uid, loss_key(s.loss)))
        .collect();
    let tail = &o.ranked_uids[34 - group_out.len()..];
    for w in tail.windows(2) {
        let l = |u: u16| group_out.iter().find(|x| x.0 == u).unwrap().1;
        assert!(l(w[0]) <= l(w[1]), "group losers ranked by loss: {tail:?}");
    }
    for m in o.matches.iter().filter(|m| m.stage == Stage::Knockout) {
        for s in &m.players {
            assert!(advancing.contains(&s.method_hash), "only advancers play on");
        }
    }

    // Weights (SPEC §6): no boss round → no boost, text pool 0.15; each participant 0.0001;
    // rank r gets 0.3^(r−1)/Σ of the pool scaled by 1 − n·0.0001; the burn uid the rest.
    let s = settle(&store, &mut chain, &o, burn).unwrap();
    assert!((s.pools.text_weight - TEXT_BASE_WEIGHT).abs() < 1e-12);
    let n = o.participants.len();
    assert_eq!(n, 34);
    let scale = 1.0 - n as f64 * PARTICIPATION_WEIGHT;
    let total: f64 = (0..n).map(|r| RANK_DECAY_BASE.powi(r as i32)).sum();
    let weight = |uid: u16| {
        s.pools
            .weights
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(0.0, |x| x.1)
    };
    for (r, &uid) in o.ranked_uids.iter().enumerate() {
        let want = PARTICIPATION_WEIGHT
            + TEXT_BASE_WEIGHT * scale * RANK_DECAY_BASE.powi(r as i32) / total;
        assert!(
            (weight(uid) - want).abs() < 1e-12,
            "rank {} uid {uid}: {} vs {want}",
            r + 1,
            weight(uid)
        );
    }
    let sum: f64 = s.pools.weights.iter().map(|x| x.1).sum();
    assert!((sum - 1.0).abs() < 1e-9);
    assert!(
        (weight(burn) - (1.0 - TEXT_BASE_WEIGHT * scale - n as f64 * PARTICIPATION_WEIGHT)).abs()
            < 1e-9
    );
    // Through commit-reveal: nothing left pending, the epoch pays the champion most.
    let e = s.epoch.as_ref().expect("an epoch ran");
    let v = AccountId::from_name("validator");
    assert!(chain.pending_commits(&v).unwrap().is_empty());
    assert_eq!(
        e.epoch, 2,
        "commit in epoch 0, reveal in epoch 1, used by epoch 2"
    );
    let pay = |uid: u16| {
        e.neurons
            .iter()
            .find(|x| x.uid == uid)
            .unwrap()
            .server_emission
    };
    for &uid in &o.ranked_uids[1..] {
        assert!(pay(champ.uid) > pay(uid), "{e:?}");
    }
    let again = settle(&store, &mut chain, &o, burn).unwrap();
    assert!(again.epoch.is_none(), "weights are set once per tournament");
    // a kill after the weights reached the chain but before the done mark: the rerun finds
    // them there and sets nothing (the rate limit alone would not stop it: the epoch moved
    // the clock past it)
    store
        .conn()
        .execute("UPDATE tournament_runs SET chain_done = 0", [])
        .unwrap();
    let epochs = chain.metagraph().unwrap().epoch;
    let again = settle(&store, &mut chain, &o, burn).unwrap();
    assert!(again.epoch.is_none(), "settled twice after a kill");
    assert_eq!(chain.metagraph().unwrap().epoch, epochs);
    assert!(
        store::load_run(&store, &o.tournament_id)
            .unwrap()
            .unwrap()
            .chain_done
    );
    let t1 = t0.elapsed();

    // 2. 15 of the methods, another seed: one group of 15 (the champion's method cannot
    //    enter), its top 8 play the knockout, whose winner meets the champion.
    let some: Vec<Submission> = subs
        .iter()
        .filter(|s| s.entry.method_hash != champ.method_hash)
        .take(15)
        .cloned()
        .collect();
    let o2 = play(&store, &base, &config(&model, &data, &work, 6), &some);
    assert_eq!(o2.entries.len(), 15);
    let adv2 = check_groups(&o2, 1);
    assert_eq!(adv2.len(), GROUP_ADVANCE);
    let ko0: Vec<_> = o2
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Knockout && m.round == 0)
        .collect();
    assert_eq!(
        ko0.len(),
        4,
        "8 advancers: 4 pairs, no odd one to meet the champion"
    );
    check_knockout(&o2, &adv2);
    let boss: Vec<_> = o2
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Boss)
        .collect();
    assert_eq!(boss.len(), 2);
    assert_eq!(
        o2.champion_before.as_ref().unwrap().method_hash,
        champ.method_hash
    );
    assert!(o2.boss.is_some());
    assert_eq!(o2.participants.len(), 16, "15 entries and the champion");
    eprintln!(
        "group_round_then_knockout_then_weights: 34 entries {t1:?}, total {:?}",
        t0.elapsed()
    );
}
