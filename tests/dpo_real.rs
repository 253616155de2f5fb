//! DPO end to end on the real SmolLM2-135M-Instruct GGUF and llamafactory's dpo_en_demo: six
//! DPO steps (β 0.1, reference = the base model, three passes over the six train pairs of
//! seven short single-turn rows) lower the train pairs' DPO loss: the last pass's step
//! losses sit below the first's, and the saved adapter, loaded fresh, scores the train pairs
//! below the base model's ln 2. (Held-out pairs are not asserted: a few steps on a few pairs
//! do not generalise reliably.) Skips (printing why) when the assets are unavailable.

mod common;

use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{read_records, Mapping};
use gradients_engine::eval::evaluate_dpo;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::Llama;
use gradients_engine::train::dpo::DpoRun;
use gradients_engine::train::{StopReason, TrainConfig};

#[test]
fn dpo_lowers_the_loss_of_smollm2_on_dpo_en_demo() {
    let (model_path, data_path) = match (assets::smollm2_gguf(), assets::dpo_en_demo()) {
        (Ok(m), Ok(d)) => (m, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    // single-turn rows with a short prompt, flattened to prompt / chosen / rejected columns
    let rows = read_records(&data_path).unwrap();
    let text = |v: &serde_json::Value| v["value"].as_str().unwrap_or_default().to_string();
    let flat: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| {
            let turns = r["conversations"].as_array().map_or(0, |t| t.len());
            turns == 1 && text(&r["conversations"][0]).len() < 100
        })
        .take(7)
        .map(|r| {
            serde_json::json!({"prompt": text(&r["conversations"][0]),
                "chosen": text(&r["chosen"]), "rejected": text(&r["rejected"])})
        })
        .collect();
    assert_eq!(flat.len(), 7, "dpo_en_demo has 7 short single-turn rows");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pairs.json");
    std::fs::write(&data, serde_json::to_string(&flat).unwrap()).unwrap();
    let cfg_text = format!(
        r#"
model = "{}"
dataset = "{}"
output_dir = "{}"
micro_batch = 3
seq_len = 48
epochs = 3
skip_eval = true
[mapping]
task_type = "dpo"
[lora]
r = 8
alpha = 16
[optimizer]
lr = 2e-3
"#,
        model_path.display(),
        data.display(),
        dir.path().join("out").display()
    );
    let cfg = TrainConfig::from_toml(&cfg_text, "dpo_real").unwrap();
    let (m, s, t0) = common::train_real(&cfg, &model_path);
    let tok = m.tokenizer.as_ref().unwrap();
    eprintln!(
        "{} steps, {} tokens, {:.0} tok/s; step losses {:?}; {:.1}s",
        s.steps,
        s.tokens,
        s.tokens_per_s,
        s.losses,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((s.stop_reason, s.steps), (StopReason::Completed, 6));
    let base = std::f64::consts::LN_2;
    assert!((s.losses[0] - base).abs() < 1e-6, "{}", s.losses[0]);
    let first = (s.losses[0] + s.losses[1]) / 2.0;
    let last = (s.losses[4] + s.losses[5]) / 2.0;
    assert!(last < first - 0.02, "pass 1 loss {first} -> pass 3 {last}");

    // the saved adapter, loaded fresh: the train pairs' DPO loss is below ln 2
    let Mapping::Dpo(map) = &cfg.mapping else {
        panic!("dpo mapping")
    };
    let d = DpoRun::prepare(&cfg, map, tok).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (6, 1));
    let be = CpuBackend::<f32>::new();
    let mut model = Llama::new(be.clone(), &m.config, &m.weights).unwrap();
    let lw = LoraWeights::load(&s.adapter_dir, &m.config).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let r = evaluate_dpo(&mut model, Some(&lora), &d.train, 0.1).unwrap();
    eprintln!(
        "train pairs: dpo loss {:.4} (base ln 2 = 0.6931), reward accuracy {:.2}, mean margin {:.4}; {:.1}s",
        r.mean_loss,
        r.reward_accuracy,
        r.mean_margin,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        r.mean_loss < base - 0.02,
        "train pairs' loss {}",
        r.mean_loss
    );
}
