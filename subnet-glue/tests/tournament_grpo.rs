//! Tournaments on GRPO tasks end to end, CI-sized: a tiny random Llama built in code (the
//! engine's GRPO test model, whose sampling varies) with the letter tokenizer that decodes,
//! 30 in-code prompts, two rewards, 4 generations of at most 3 tokens. A first tournament
//! of four methods plays a grpo knockout (every match's regrets are recomputed from the
//! stored validator results and the lower one won); a second one's winner meets that
//! champion in a boss round of two grpo tasks, each decided as the margin and gate rules say
//! on the recomputed regrets. A rerun reads the outcome back, and the grpo generation
//! settings are part of the settings a resumed tournament must match.

mod tasks_support;
mod tournament_support;

use std::path::{Path, PathBuf};

use gradients_engine::model::hf_model::save_hf_model;
use gradients_engine::model::{ModelConfig, ModelWeights};
use gradients_engine::train::grpo::GrpoSection;
use gradients_subnet::store::Store;
use gradients_subnet::tournament::boss::{decide_task, knockout_winner, Side, SideResult};
use gradients_subnet::tournament::grpo::grpo_standings;
use gradients_subnet::tournament::run::{
    run_tournament, submissions_from_paths, Event, TaskSource, TournamentConfig,
};
use gradients_subnet::tournament::store::{MatchRecord, Stage};
use gradients_subnet::tournament::TaskKind;
use gradients_subnet::validator::{load_result, BaseModel, MethodResult, ValidatorOptions};
use tasks_support::common;
use tournament_support::{play, tournament_config};

const WORDS: [&str; 6] = ["cat", "dog", "bird", "fish", "frog", "cow"];

fn model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(false, 21)
}

fn base() -> BaseModel {
    let (config, weights) = model();
    BaseModel {
        config,
        weights,
        tokenizer: Box::new(common::LetterTok),
        name: "tiny".into(),
    }
}

fn write_methods(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    [5e-2, 3e-2, 1e-2, 1e-5, 2e-2, 8e-3]
        .iter()
        .enumerate()
        .map(|(i, lr)| {
            let p = dir.join(format!("m{i}.toml"));
            std::fs::write(
                &p,
                format!(
                    "name = \"m{i}\"\n[lora]\nr = 4\nalpha = 8\n[optimizer]\nlr = {lr:e}\n\
                     [train]\nmicro_batch = 2\nseq_len = 32\n"
                ),
            )
            .unwrap();
            p
        })
        .collect()
}

fn config(model: &Path, data: &Path, work: &Path, seed: u64) -> TournamentConfig {
    let mut v = ValidatorOptions::new(work, 0, 400);
    v.threads = 2;
    v.eval_seq_len = Some(32);
    let source = TaskSource {
        kind: TaskKind::Grpo,
        dataset: data.to_path_buf(),
        mapping: serde_json::from_value(serde_json::json!({
            "task_type": "grpo",
            "prompt_format": "{prompt}: ",
            "rewards": [
                {"kind": "regex_match", "pattern": "^[a-z]", "weight": 2.0},
                {"kind": "length", "target": 2, "weight": 0.5}
            ]
        }))
        .unwrap(),
        grpo: Some(GrpoSection {
            num_generations: 4,
            max_new_tokens: 3,
            ..Default::default()
        }),
    };
    tournament_config(model, vec![source], v, seed)
}

/// The stored validator results of a match's players, in order.
fn results(store: &Store, m: &MatchRecord) -> Vec<MethodResult> {
    let task = m.task_id.as_deref().unwrap();
    m.players
        .iter()
        .map(|s| load_result(store, task, &s.method_hash).unwrap().unwrap())
        .collect()
}

#[test]
fn grpo_knockout_then_boss_round() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mcfg, w) = model();
    let model_dir = dir.path().join("tiny-model");
    std::fs::create_dir_all(&model_dir).unwrap();
    save_hf_model(&model_dir, &mcfg, &w).unwrap();
    let rows: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"prompt": format!("say {}", WORDS[i % WORDS.len()])}))
        .collect();
    let data = dir.path().join("prompts.json");
    std::fs::write(&data, serde_json::to_string(&rows).unwrap()).unwrap();
    let files = write_methods(&dir.path().join("methods"));
    let subs = submissions_from_paths(&files, 1).unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    let b = base();
    let work = dir.path().join("work");

    // tournament 1: four methods, knockout only
    let cfg = config(&model_dir, &data, &work, 3);
    let o = play(&store, &b, &cfg, &subs[..4]);
    let ko: Vec<&MatchRecord> = o.matches.iter().collect();
    assert_eq!(ko.len(), 3, "2 + 1 knockout matches");
    let mut regrets = Vec::new();
    for m in &ko {
        assert_eq!((m.stage, m.kind.as_str()), (Stage::Knockout, "grpo"));
        let res = results(&store, m);
        assert!(res.iter().all(|r| r.grpo.is_some()), "grpo results stored");
        let st = grpo_standings(&res.iter().collect::<Vec<_>>());
        for (s, x) in m.players.iter().zip(&st) {
            assert_eq!(s.loss, x.loss, "the match shows the pair's regret");
            assert_eq!(s.test_loss, x.test_loss);
        }
        let a_wins = knockout_winner(st[0].loss, st[1].loss);
        let w = &m.players[if a_wins { 0 } else { 1 }].method_hash;
        assert_eq!(&m.winners[0], w, "lower regret wins: {m:?}");
        assert!(m.rule.contains("grpo"), "{}", m.rule);
        regrets.extend(st.iter().filter_map(|x| x.loss));
    }
    regrets.sort_by(f64::total_cmp);
    regrets.dedup();
    assert!(
        regrets.len() > 1,
        "the methods score differently: {regrets:?}"
    );
    assert_eq!(o.champion_after.method_hash, o.bracket_winner);

    // tournament 2: two new methods; the winner meets the champion on two grpo tasks
    let cfg2 = config(&model_dir, &data, &work, 4);
    let o2 = play(&store, &b, &cfg2, &subs[4..]);
    assert_eq!(
        o2.champion_before.as_ref().unwrap().method_hash,
        o.bracket_winner
    );
    let boss: Vec<&MatchRecord> = o2
        .matches
        .iter()
        .filter(|m| m.stage == Stage::Boss)
        .collect();
    assert_eq!(boss.len(), 2);
    let mut sides = Vec::new();
    for m in &boss {
        assert_eq!(m.kind, "grpo");
        let res = results(&store, m);
        let st = grpo_standings(&res.iter().collect::<Vec<_>>());
        assert_eq!(st[0].per_prompt.len(), res[0].test_rows.len());
        let d = decide_task(
            SideResult {
                loss: st[0].loss,
                per_sample: &st[0].per_prompt,
            },
            SideResult {
                loss: st[1].loss,
                per_sample: &st[1].per_prompt,
            },
            o2.champion_before.as_ref().unwrap().defences,
            &cfg2.gate,
        )
        .unwrap();
        let losses: Vec<_> = st.iter().map(|x| x.loss).collect();
        eprintln!(
            "boss task {}: {} {losses:?} -> {:?}",
            m.idx, m.rule, d.winner
        );
        assert_eq!(m.rule, d.rule.as_str());
        let want = match d.winner {
            Side::Champion => &m.players[0].method_hash,
            Side::Challenger => &m.players[1].method_hash,
        };
        assert_eq!(&m.winners[0], want);
        sides.push(d.winner);
    }
    let challenger_tasks = sides.iter().filter(|s| **s == Side::Challenger).count();
    assert_eq!(o2.boss.as_ref().unwrap().challenger_tasks, challenger_tasks);

    // a rerun reads the outcome back; other generation settings are other settings
    assert_eq!(play(&store, &b, &cfg2, &subs[4..]), o2);
    let mut changed = config(&model_dir, &data, &work, 4);
    changed.tournament_id = Some(o2.tournament_id.clone());
    changed.sources[0].grpo.as_mut().unwrap().max_new_tokens = 2;
    let settings: String = store
        .conn()
        .query_row(
            "SELECT settings FROM tournament_runs WHERE tournament_id = ?1",
            [&o2.tournament_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(settings.contains("\"max_new_tokens\":3"), "{settings}");
    // as if killed mid-way: a resume with other generation settings is refused
    store
        .conn()
        .execute(
            "UPDATE tournament_runs SET status = 'running' WHERE tournament_id = ?1",
            [&o2.tournament_id],
        )
        .unwrap();
    let e = run_tournament(&store, &b, &changed, &subs[4..], &mut |_e: Event<'_>| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("other settings"), "{e}");
    eprintln!("grpo tournaments: {:.1}s", t0.elapsed().as_secs_f64());
}
