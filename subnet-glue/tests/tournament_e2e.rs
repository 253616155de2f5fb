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
//! 3. (dpo_tasks_in_knockout_and_boss_round) DPO end to end: a DPO match on dpo_en_demo
//!    rows with short prompts, read as-is, then a boss round spread over instruct and dpo.
//!
//! Skips (printing why) when the assets are absent.

mod tournament_support;

use gradients_subnet::chain::LocalChain;
use gradients_subnet::library;
use gradients_subnet::store::Store;
use gradients_subnet::tournament::boss::{margin, Side};
use gradients_subnet::tournament::run::{submissions_from_paths, TaskSource, TournamentConfig};
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
    tournament_config(model, vec![instruct_source(data)], v, seed)
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

/// The dpo_en_demo rows (as-is: `conversations` + `{from, value}` answers) whose prompt is
/// under 200 characters, written to `dir`; or why the asset is unavailable.
fn short_dpo_rows(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let src = gradients_engine::assets::cache_dir()?.join(gradients_engine::assets::DPO_EN_DEMO);
    let text = std::fs::read_to_string(&src).map_err(|e| format!("{}: {e}", src.display()))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let short: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| {
            let turns = r["conversations"].as_array().map_or(&[][..], |t| t);
            turns
                .iter()
                .map(|t| t["value"].as_str().map_or(0, str::len))
                .sum::<usize>()
                < 200
        })
        .collect();
    let path = dir.join("dpo_short.json");
    std::fs::write(&path, serde_json::to_string(&short).unwrap()).unwrap();
    Ok(path)
}

/// DPO through the whole tournament, CI-sized (dpo_en_demo rows with short prompts, 4 pairs
/// scored per set): a match of two methods on a DPO task (scored on the DPO loss, the lower
/// loss wins, per-pair losses stored by the validator under (task, hash)), then a
/// tournament of the three methods on instruct + dpo: the two that are not champion play a
/// knockout match and the winner meets the champion in a boss round whose two tasks are one
/// of each kind.
#[test]
fn dpo_tasks_in_knockout_and_boss_round() {
    let (model, data) = match assets() {
        Ok(a) => a,
        Err(e) => return eprintln!("skipping: real assets unavailable: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let dpo_data = match short_dpo_rows(dir.path()) {
        Ok(p) => p,
        Err(e) => return eprintln!("skipping: dpo_en_demo unavailable: {e}"),
    };
    let t0 = std::time::Instant::now();
    let files = write_methods(&dir.path().join("methods"));
    let subs = submissions_from_paths(&files, 1).unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let base = BaseModel::load(&model).unwrap();
    let work = dir.path().join("work");
    let dpo_source = TaskSource {
        kind: TaskKind::Dpo,
        dataset: dpo_data.clone(),
        mapping: gradients_engine::data::Mapping::Dpo(
            gradients_engine::data::DpoMapping::sharegpt(),
        ),
        grpo: None,
    };
    let mut cfg = config(&model, &data, &work, 0);
    cfg.sources = vec![dpo_source.clone()];
    cfg.validator.max_eval_samples = Some(4);

    // 1. DPO only, bold against timid.
    let o1 = play(&store, &base, &cfg, &[subs[0].clone(), subs[2].clone()]);
    let played: Vec<_> = o1.matches.iter().filter(|m| m.task_id.is_some()).collect();
    assert_eq!(played.len(), 1, "{:?}", o1.matches);
    for m in &played {
        assert_eq!(m.kind, "dpo");
        let task = gradients_subnet::task::get_task(&store, m.task_id.as_ref().unwrap()).unwrap();
        assert_eq!(task.task_type, gradients_subnet::task::TaskType::Dpo);
        let (a, b) = (&m.players[0], &m.players[1]);
        let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
        let w = if la <= lb { a } else { b };
        assert_eq!(m.winners, vec![w.method_hash.clone()], "{m:?}");
        for s in &m.players {
            let r = gradients_subnet::validator::load_result(
                &store,
                m.task_id.as_ref().unwrap(),
                &s.method_hash,
            )
            .unwrap()
            .expect("stored by (task, hash)");
            assert_eq!(r.failed, None);
            assert_eq!(r.per_sample_test.len(), 4);
            assert_eq!(r.per_sample_test.len(), r.test_rows.len());
            let mean = r.per_sample_test.iter().sum::<f64>() / r.per_sample_test.len() as f64;
            assert!(
                (mean - r.test_loss).abs() < 1e-12,
                "mean DPO loss of the pairs"
            );
            assert!(r.test_loss > 0.0 && r.test_loss.is_finite());
            assert_ne!(
                r.test_loss,
                std::f64::consts::LN_2,
                "a trained adapter moves off ln 2"
            );
        }
    }
    let champion = o1.champion_after.clone();

    // 2. Instruct + dpo: the champion defends on one task of each kind.
    let mut cfg2 = config(&model, &data, &work, 1);
    cfg2.sources.push(dpo_source);
    cfg2.validator.max_eval_samples = Some(4);
    let o2 = play(&store, &base, &cfg2, &subs);
    assert_eq!(
        o2.champion_before.as_ref().map(|c| &c.method_hash),
        Some(&champion.method_hash)
    );
    let boss: Vec<&str> = o2
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Boss)
        .map(|m| m.kind.as_str())
        .collect();
    assert_eq!(boss, ["instruct", "dpo"]);
    for m in o2.matches.iter().filter(|m| m.stage == Stage::Boss) {
        assert_eq!(m.margin, Some(margin(0)), "{m:?}");
        assert!(m.players.iter().all(|s| s.loss.is_some()), "{m:?}");
    }
    eprintln!(
        "dpo tournaments in {:.1} s: {:?}",
        t0.elapsed().as_secs_f64(),
        o2.matches
            .iter()
            .map(|m| (
                m.kind.clone(),
                m.players.iter().map(|s| s.loss).collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
}
