//! The validator on the real SmolLM2-135M-Instruct GGUF and alpaca_en_demo: intake of a
//! task over the cached assets, one method evaluated with a CI-sized token budget (a few
//! steps, 8 test and 8 synthetic samples at 256 tokens), which must beat the base model on
//! the same hidden test samples; a rerun returns the stored result. Skips (printing why)
//! when the assets are unavailable.

use std::time::Instant;

use gradients_engine::assets;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::data::{tokenize_sft, Record, TokenizeOptions, Truncation};
use gradients_engine::eval::evaluate;
use gradients_engine::model::Llama;
use gradients_subnet::method::Method;
use gradients_subnet::store::Store;
use gradients_subnet::task::{create_task, load_records, load_split, TaskSpec};
use gradients_subnet::validator::{evaluate_method, BaseModel, ValidatorOptions};

#[test]
fn smollm2_method_beats_the_base_model_on_the_hidden_test_split() {
    let (model_path, data_path) = match (assets::smollm2_gguf(), assets::alpaca_en_demo()) {
        (Ok(m), Ok(d)) => (m, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipping: real assets unavailable: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let spec = format!(
        r#"task_id = "alpaca"
task_type = "instruct"
base_model = "{}"
dataset = "{}"
hours_to_complete = 1
[mapping]
field_instruction = "instruction"
field_input = "input"
field_output = "output"
"#,
        model_path.display(),
        data_path.display()
    );
    let task = create_task(&store, &TaskSpec::parse(&spec, "spec", false).unwrap()).unwrap().task;
    let t0 = Instant::now();
    let base = BaseModel::load(&model_path).unwrap();
    let mut opts = ValidatorOptions::new(&dir.path().join("work"), 42, 2600);
    opts.max_eval_samples = Some(8);
    opts.eval_seq_len = Some(256);
    let m = Method::parse(
        "[lora]\nr = 8\nalpha = 16\n[optimizer]\nlr = 2e-3\n[train]\nmicro_batch = 4\nseq_len = 128\n",
        "real method",
        false,
    )
    .unwrap();
    let r = evaluate_method(&store, &task, &m, &base, &opts).unwrap();
    eprintln!(
        "test {:.4} synth {:.4} tokens {} wall {:.1}s (with load {:.1}s)",
        r.test_loss,
        r.synth_loss,
        r.tokens,
        r.wall_s,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(r.failed, None);
    assert!(r.tokens > 0 && r.tokens <= 2600);
    assert_eq!(r.per_sample_test.len(), 8);

    // the base model on the same 8 hidden test samples
    let split = load_split(&store, "alpaca").unwrap();
    let (records, _) = load_records(&task).unwrap();
    let picked: Vec<Record> = split.test.iter().map(|&i| records[i].clone()).collect();
    let topts = TokenizeOptions {
        seq_len: 256,
        truncation: Truncation::TruncateTail,
    };
    let (mut samples, _) =
        tokenize_sft(base.tokenizer.as_ref(), &task.mapping, &picked, &task.dataset, topts).unwrap();
    samples.truncate(8);
    let mut model = Llama::new(CpuBackend::<f32>::new(), &base.config, &base.weights).unwrap();
    let b = evaluate(&mut model, None, &samples, 4).unwrap();
    eprintln!("base test loss {:.4}", b.mean_loss);
    assert!(r.test_loss < b.mean_loss, "{} vs base {}", r.test_loss, b.mean_loss);

    let again = evaluate_method(&store, &task, &m, &base, &opts).unwrap();
    assert_eq!(again, r);
}
