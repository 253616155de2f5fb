//! `gradients eval` on a DPO dataset with the real SmolLM2-135M-Instruct GGUF: the base model
//! scores ln 2 on every pair, an adapter's JSON result equals the engine's `evaluate_dpo` bit
//! for bit, and a row missing its `chosen` column fails naming the row. Skips (printing why)
//! when the assets are unavailable.

mod cli_support;

use std::path::Path;

use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{read_records, tokenize_dpo, DpoMapping};
use gradients_engine::eval::{dpo_samples, evaluate_dpo};
use gradients_engine::lora::LoraState;
use gradients_engine::model::load::load_model;
use gradients_engine::model::Llama;

use cli_support::{gradients, save_patterned_adapter};

/// Run `gradients eval ARGS`: (success, stdout, stderr).
fn eval(args: &[&str]) -> (bool, String, String) {
    gradients(&[&["eval"], args].concat())
}

fn write_pairs(path: &Path, rows: &[serde_json::Value]) {
    std::fs::write(path, serde_json::to_string(rows).unwrap()).unwrap();
}

#[test]
fn eval_prints_the_dpo_loss() {
    let (model, data) = match (assets::smollm2_gguf(), assets::dpo_en_demo()) {
        (Ok(m), Ok(d)) => (m, d),
        (Err(e), _) | (_, Err(e)) => return eprintln!("skipping: real assets unavailable: {e}"),
    };
    let text = |v: &serde_json::Value| v["value"].as_str().unwrap_or_default().to_string();
    let rows: Vec<serde_json::Value> = read_records(&data)
        .unwrap()
        .iter()
        .filter(|r| r["conversations"].as_array().is_some_and(|t| t.len() == 1))
        .take(3)
        .map(|r| {
            serde_json::json!({"q": text(&r["conversations"][0]), "chosen": text(&r["chosen"]),
                "rejected": text(&r["rejected"])})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.json");
    write_pairs(&pairs, &rows);
    let m = model.to_str().unwrap();
    let p = pairs.to_str().unwrap();
    let common = [
        "--model",
        m,
        "--data",
        p,
        "--field-prompt",
        "q",
        "--seq-len",
        "48",
        "--json",
    ];

    // the base model is its own reference
    let (ok, out, err) = eval(&common);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["pairs"], 3);
    let losses = v["per_pair_loss"].as_array().unwrap();
    assert!(losses
        .iter()
        .all(|l| l.as_f64() == Some(std::f64::consts::LN_2)));
    assert_eq!(v["reward_accuracy"], 0.0);

    // a random adapter: the CLI prints exactly what the engine computes
    let loaded = load_model(&model).unwrap();
    let (lw, adapter) = save_patterned_adapter(&loaded.config, dir.path(), "SmolLM2-135M-Instruct");
    let mut args = common.to_vec();
    args.extend(["--adapter", adapter.to_str().unwrap()]);
    let (ok, out, err) = eval(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let tok = loaded.tokenizer.as_ref().unwrap();
    let recs = read_records(&pairs).unwrap();
    let map = DpoMapping {
        field_prompt: "q".into(),
        ..Default::default()
    };
    let (samples, _) = dpo_samples(&tokenize_dpo(tok, &map, &recs, &pairs).unwrap(), 48).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut llama = Llama::new(be.clone(), &loaded.config, &loaded.weights).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let r = evaluate_dpo(&mut llama, Some(&lora), &samples, 0.1).unwrap();
    assert_eq!(v["mean_loss"].as_f64(), Some(r.mean_loss));
    assert_eq!(v["reward_accuracy"].as_f64(), Some(r.reward_accuracy));
    let got: Vec<f64> = v["per_pair_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(got, r.per_pair_loss);
    assert!(got.iter().all(|&l| l != std::f64::consts::LN_2));

    // a row without `chosen` is named
    let mut bad = rows.clone();
    bad[1].as_object_mut().unwrap().remove("chosen");
    write_pairs(&pairs, &bad);
    let (ok, _, err) = eval(&common);
    assert!(!ok);
    assert!(
        err.contains("row 2") && err.contains("`chosen`"),
        "stderr: {err}"
    );
}
