//! End to end on the real SmolLM2-135M-Instruct and the alpaca demo, CI-sized: two local
//! tournaments among three methods in one database.
//! 1. No champion yet: a knockout of three (one pair, one bye, a final). The bold method,
//!    which has the lowest hidden-test loss on every task it plays, must win every match it
//!    plays and become champion; every match goes to the lower loss; the weights give the
//!    champion the text pool and each participant its 0.0001, the rest is burned, and the
//!    epoch pays the champion's miner the most.
//! 2. Same methods, another seed: the champion's own method cannot enter, the two others
//!    play, and the winner meets the champion in a boss round of two tasks decided by the
//!    margin rule (and the gate when it applies); defences and the library follow.
//!
//! Skips (printing why) when the assets are absent.

mod tournament_support;

use gradients_subnet::chain::LocalChain;
use gradients_subnet::library;
use gradients_subnet::store::Store;
use gradients_subnet::tournament::bootstrap::GateConfig;
use gradients_subnet::tournament::boss::{margin, Side};
use gradients_subnet::tournament::run::{
    run_tournament, submissions_from_paths, Event, Outcome, Submission, TaskSource,
    TournamentConfig,
};
use gradients_subnet::tournament::settle::{register_neurons, settle};
use gradients_subnet::tournament::store::Stage;
use gradients_subnet::tournament::TaskKind;
use gradients_subnet::validator::{BaseModel, ValidatorOptions};
use tournament_support::*;

fn config(
    model: &std::path::Path,
    data: &std::path::Path,
    work: &std::path::Path,
    seed: u64,
) -> TournamentConfig {
    let mut v = ValidatorOptions::new(work, 0, TOKEN_BUDGET);
    v.max_eval_samples = Some(EVAL_SAMPLES);
    v.eval_seq_len = Some(EVAL_SEQ_LEN);
    v.eval_batch = 4;
    TournamentConfig {
        tournament_id: None,
        seed,
        base_model: model.to_path_buf(),
        sources: vec![TaskSource {
            kind: TaskKind::Instruct,
            dataset: data.to_path_buf(),
            mapping: serde_json::from_str(
                r#"{"task_type": "instruct", "field_instruction": "instruction",
                    "field_input": "input", "field_output": "output"}"#,
            )
            .unwrap(),
        }],
        boss_tasks: 2,
        gate: GateConfig::default(),
        validator: v,
        hours_to_complete: 1.0,
    }
}

fn play(store: &Store, base: &BaseModel, cfg: &TournamentConfig, subs: &[Submission]) -> Outcome {
    let mut log = |e: Event<'_>| {
        if let Event::Match { record, .. } = e {
            eprintln!("{record:?}");
        }
    };
    run_tournament(store, base, cfg, subs, &mut log).unwrap()
}

#[test]
fn three_methods_two_tournaments_weights_and_emission() {
    let (model, data) = match assets() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = write_methods(&dir.path().join("methods"));
    let mut subs = submissions_from_paths(&files, 1).unwrap();
    let db = dir.path().join("t.db");
    let store = Store::open(&db).unwrap();
    let mut chain = LocalChain::open(&db).unwrap();
    let burn = register_neurons(&mut chain, &mut subs).unwrap();
    let bold = subs[0].entry.clone();
    let base = BaseModel::load(&model).unwrap();
    let work = dir.path().join("work");

    // 1. No champion: knockout of three.
    let o1 = play(&store, &base, &config(&model, &data, &work, 0), &subs);
    assert!(o1.boss.is_none() && o1.champion_before.is_none());
    let played: Vec<_> = o1.matches.iter().filter(|m| m.task_id.is_some()).collect();
    assert_eq!(played.len(), 2, "{:?}", o1.matches);
    assert_eq!(o1.matches.len(), 3, "one pair, one bye, one final");
    for m in &played {
        assert_eq!(m.stage, Stage::Knockout);
        let (a, b) = (&m.players[0], &m.players[1]);
        let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
        let w = if la <= lb { a } else { b };
        assert_eq!(
            m.winners,
            vec![w.method_hash.clone()],
            "the lower loss wins: {m:?}"
        );
        if let Some(me) = m.players.iter().find(|s| s.method_hash == bold.method_hash) {
            for s in &m.players {
                assert!(
                    me.test_loss.unwrap() <= s.test_loss.unwrap(),
                    "bold has the lowest test loss: {m:?}"
                );
            }
        }
    }
    assert_eq!(o1.champion_after.method_hash, bold.method_hash);
    assert_eq!(
        (o1.champion_after.uid, o1.champion_after.defences),
        (bold.uid, 0)
    );
    assert_eq!(o1.ranked_uids[0], bold.uid);
    let mut parts: Vec<u16> = subs.iter().map(|s| s.entry.uid).collect();
    parts.sort();
    assert_eq!(o1.participants, parts);

    // Weights: no boss round, so perf_diff 0 and no boost: a text pool of 0.15; every
    // participant at least 0.0001, the champion the most, the burn uid the rest.
    let s1 = settle(&store, &mut chain, &o1, burn).unwrap();
    let w = |uid: u16| {
        s1.pools
            .weights
            .iter()
            .find(|(u, _)| *u == uid)
            .map_or(0.0, |x| x.1)
    };
    assert!(
        (s1.pools.text_weight - 0.15).abs() < 1e-12,
        "{:?}",
        s1.pools
    );
    for u in &parts {
        assert!(w(*u) >= 0.0001 - 1e-12, "{:?}", s1.pools);
        if *u != bold.uid {
            assert!(w(bold.uid) > w(*u), "{:?}", s1.pools);
        }
    }
    let total: f64 = s1.pools.weights.iter().map(|x| x.1).sum();
    assert!((total - 1.0).abs() < 1e-9);
    assert!(w(burn) > 0.8, "{:?}", s1.pools);
    assert_eq!(s1.uids.len(), s1.values.len());
    assert_eq!(*s1.values.iter().max().unwrap(), 65535);
    let e = s1.epoch.as_ref().expect("an epoch ran");
    let em = |uid: u16| {
        e.neurons
            .iter()
            .find(|n| n.uid == uid)
            .map_or(0, |n| n.server_emission)
    };
    for u in &parts {
        if *u != bold.uid {
            assert!(
                em(bold.uid) > em(*u),
                "the champion's miner earns most: {e:?}"
            );
        }
    }
    // Settling again changes nothing.
    assert!(settle(&store, &mut chain, &o1, burn)
        .unwrap()
        .epoch
        .is_none());

    // 2. The champion defends.
    let o2 = play(&store, &base, &config(&model, &data, &work, 1), &subs);
    assert_eq!(
        o2.champion_before.as_ref().unwrap().method_hash,
        bold.method_hash
    );
    assert_eq!(
        o2.entries.len(),
        2,
        "the champion's own method does not enter"
    );
    let boss: Vec<_> = o2
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Boss)
        .collect();
    assert_eq!(boss.len(), 2);
    let mut challenger_tasks = 0;
    for m in &boss {
        let (c, h) = (&m.players[0], &m.players[1]);
        assert!(c.champion && !h.champion);
        let t = margin(0);
        assert_eq!(m.margin, Some(t));
        let beats_margin = h.loss.unwrap() < c.loss.unwrap() * (1.0 - t);
        let took = m.winners == vec![h.method_hash.clone()];
        if !beats_margin {
            assert!(!took && m.rule == "margin", "{m:?}");
        }
        challenger_tasks += took as usize;
    }
    let b = o2.boss.as_ref().unwrap();
    assert_eq!(b.challenger_tasks, challenger_tasks);
    let expect = if 2 * challenger_tasks > 2 {
        Side::Challenger
    } else {
        Side::Champion
    };
    assert_eq!(b.winner, expect);
    assert_eq!(
        expect,
        Side::Champion,
        "a weaker challenger cannot beat bold by 10%"
    );
    assert_eq!(o2.champion_after.method_hash, bold.method_hash);
    assert_eq!(o2.champion_after.defences, 1);
    assert_eq!(o2.boss_losses.len(), 2);

    // The library: bold, crowned once and defended once.
    let lib = library::list(&store).unwrap();
    assert_eq!(lib.len(), 1);
    assert_eq!(lib[0].method_hash, bold.method_hash);
    assert_eq!((lib[0].tournaments_won, lib[0].defences), (2, 1));
    let d = library::show(&store, &bold.method_hash[..10]).unwrap();
    assert_eq!(d.wins.len() as u32, lib[0].tasks_won);
    assert!(d.wins.len() >= 2, "{:?}", d.wins);
    // A finished tournament reads back the same outcome without training.
    let again = play(&store, &base, &config(&model, &data, &work, 1), &subs);
    // (Stored as JSON: serde_json's default float parsing may move the last ulp.)
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        (x, y) => x == y,
    };
    assert_eq!(again.tournament_id, o2.tournament_id);
    assert_eq!(
        (&again.champion_after, &again.ranked_uids, &again.boss),
        (&o2.champion_after, &o2.ranked_uids, &o2.boss)
    );
    assert_eq!(again.matches.len(), o2.matches.len());
    for (x, y) in again.matches.iter().zip(&o2.matches) {
        assert_eq!(
            (&x.task_id, &x.winners, &x.rule),
            (&y.task_id, &y.winners, &y.rule)
        );
        for (p, q) in x.players.iter().zip(&y.players) {
            assert!(
                close(p.loss, q.loss) && close(p.test_loss, q.test_loss),
                "{p:?} {q:?}"
            );
        }
    }
    eprintln!("two tournaments in {:.1} s", t0.elapsed().as_secs_f64());
}
