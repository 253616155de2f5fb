//! End to end on the real SmolLM2-135M-Instruct GGUF and llamafactory's alpaca_en_demo:
//! a short LoRA SFT run on the train split (small token budget), then the test loss of a
//! fixed subset of the test split must be lower with the adapter than with the base model,
//! and `gradients eval`-style evaluation of the saved adapter must reproduce it bit for bit.
//! Skips (printing why) when the assets are unavailable.

mod common;

use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::eval::evaluate;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::Llama;
use gradients_engine::train::plan::prepare_data;
use gradients_engine::train::{StopReason, TrainConfig};

#[test]
fn lora_sft_lowers_the_alpaca_test_loss() {
    let (model_path, data_path) = match (assets::smollm2_gguf(), assets::alpaca_en_demo()) {
        (Ok(m), Ok(d)) => (m, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    let out = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
model = "{}"
dataset = "{}"
output_dir = "{}"
micro_batch = 4
seq_len = 128
token_budget = 2600
eval_samples = 12
eval_batch = 6
[mapping]
task_type = "instruct"
field_instruction = "instruction"
field_input = "input"
field_output = "output"
[lora]
r = 8
alpha = 16
[optimizer]
lr = 2e-3
"#,
        model_path.display(),
        data_path.display(),
        out.path().display()
    );
    let cfg = TrainConfig::from_toml(&text, "train_real").unwrap();
    let (m, s, t0) = common::train_real(&cfg, &model_path);
    let tok = m.tokenizer.as_ref().unwrap();
    let (base, fin) = (s.base_test_loss.unwrap(), s.final_test_loss.unwrap());
    eprintln!(
        "{} steps, {} tokens, {:.0} tok/s; test loss base {base:.4} -> adapter {fin:.4}; {:.1}s",
        s.steps,
        s.tokens,
        s.tokens_per_s,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(s.stop_reason, StopReason::TokenBudget);
    assert!(s.tokens <= 2600 && s.steps >= 3, "{s:?}");
    assert!(fin < base, "test loss did not fall: {base} -> {fin}");

    // the saved adapter, loaded fresh, scores the same test subset bit for bit
    let (_, test) = prepare_data(&cfg, tok).unwrap();
    let test: Vec<_> = test.into_iter().take(12).collect();
    let be = CpuBackend::<f32>::new();
    let mut model = Llama::new(be.clone(), &m.config, &m.weights).unwrap();
    let lw = LoraWeights::load(&s.adapter_dir, &m.config).unwrap();
    let lora = LoraState::upload(&be, &lw).unwrap();
    let r = evaluate(&mut model, Some(&lora), &test, 6).unwrap();
    assert_eq!(r.mean_loss, fin);
    assert_eq!(r.samples, 12);
}
