//! `gradients eval` with a GRPO mapping on the real SmolLM2-135M-Instruct GGUF (2 prompts ×
//! 16 new tokens, KV-cached): the base model's KL is exactly 0, an adapter's
//! JSON result equals the engine's `evaluate_grpo` bit for bit (completions, rewards, KL),
//! and a row missing its prompt column fails naming the row. Skips (printing why) when the
//! assets are unavailable.

mod cli_support;

use std::time::Instant;

use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{grpo_prompts, read_records, Mapping};
use gradients_engine::eval::{evaluate_grpo, GrpoEvalOptions};
use gradients_engine::lora::LoraState;
use gradients_engine::model::load::load_model;
use gradients_engine::model::Llama;

use cli_support::{gradients, save_patterned_adapter};

/// Run `gradients eval ARGS`: (success, stdout, stderr).
fn eval(args: &[&str]) -> (bool, String, String) {
    gradients(&[&["eval"], args].concat())
}

const MAPPING: &str = r#"
task_type = "grpo"
field_prompt = "question"
[[rewards]]
kind = "reference_match"
column = "answer"
weight = 2
[[rewards]]
kind = "length"
target = 40
[[rewards]]
kind = "format"
format = "sentence_end"
weight = 0.5
"#;

#[test]
fn eval_prints_grpo_rewards_and_kl() {
    let model = match assets::smollm2_gguf() {
        Ok(m) => m,
        Err(e) => return eprintln!("skipping: real assets unavailable: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("q.json");
    let rows = serde_json::json!([
        {"question": "What is the capital of France? Answer in one word.", "answer": "Paris"},
        {"question": "What is 2 + 3? Answer with a number.", "answer": "5"},
    ]);
    std::fs::write(&data, rows.to_string()).unwrap();
    let map_path = dir.path().join("grpo.toml");
    std::fs::write(&map_path, MAPPING).unwrap();
    let (m, d, mp) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        map_path.to_str().unwrap(),
    );
    let common = [
        "--model",
        m,
        "--data",
        d,
        "--mapping",
        mp,
        "--max-new-tokens",
        "16",
        "--json",
    ];
    let t0 = Instant::now();
    let (ok, out, err) = eval(&common);
    assert!(ok, "{err}");
    eprintln!("base model: {:.1} s", t0.elapsed().as_secs_f64());
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["prompts"], 2);
    assert_eq!(v["mean_kl"], 0.0);
    eprintln!("base completions: {}", v["per_prompt"]);

    // a random adapter: the CLI prints exactly what the engine computes
    let loaded = load_model(&model).unwrap();
    let (lw, adapter) = save_patterned_adapter(&loaded.config, dir.path(), "SmolLM2-135M-Instruct");
    let mut args = common.to_vec();
    args.extend(["--adapter", adapter.to_str().unwrap()]);
    let t0 = Instant::now();
    let (ok, out, err) = eval(&args);
    assert!(ok, "{err}");
    eprintln!("with adapter: {:.1} s", t0.elapsed().as_secs_f64());
    let Mapping::Grpo(gm) = toml::from_str::<Mapping>(MAPPING).unwrap() else {
        panic!("not a grpo mapping")
    };
    let tok = loaded.tokenizer.as_ref().unwrap();
    let recs = read_records(&data).unwrap();
    let prompts = grpo_prompts(tok, &gm, &recs, &data).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut llama = Llama::new(be.clone(), &loaded.config, &loaded.weights).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let opts = GrpoEvalOptions {
        max_new_tokens: 16,
        ..Default::default()
    };
    let r = evaluate_grpo(&mut llama, Some(&lora), tok, &gm, &prompts, &opts).unwrap();
    // the printed text itself (a JSON round trip may move a float's last ulp)
    assert_eq!(out.trim(), serde_json::to_string(&r).unwrap());
    assert!(r.mean_kl > 0.0, "the adapter moves the distributions");
    eprintln!("adapter result: {}", out.trim());

    // a row without its prompt column is named
    std::fs::write(
        &data,
        r#"[{"question": "hi", "answer": "x"}, {"answer": "y"}]"#,
    )
    .unwrap();
    let (ok, _, err) = eval(&common);
    assert!(!ok);
    assert!(
        err.contains("row 2") && err.contains("`question`"),
        "stderr: {err}"
    );
}
