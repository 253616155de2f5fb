//! The Rust half of tools/peft_roundtrip.py (ignored by default; the script runs it): read
//! models saved by transformers and an adapter saved by PEFT, then write them back for the
//! script to load with transformers and PEFT and compare logits.

use std::path::PathBuf;

use gradients_engine::lora::peft::{read_peft_adapter, write_peft_adapter};
use gradients_engine::model::hf_model::{load_hf_model, save_hf_model};
use gradients_engine::model::Arch;

#[test]
#[ignore = "run by tools/peft_roundtrip.py, which prepares GRADIENTS_PYREF_DIR"]
fn pyref_models_and_adapter_round_trip() {
    let work = PathBuf::from(
        std::env::var("GRADIENTS_PYREF_DIR").expect("GRADIENTS_PYREF_DIR (set by the script)"),
    );
    for (name, arch, tied) in [("llama", Arch::Llama, false), ("qwen2", Arch::Qwen2, true)] {
        let (cfg, w) = load_hf_model(&work.join(format!("{name}_base"))).unwrap();
        assert_eq!((cfg.arch, cfg.tie_word_embeddings), (arch, tied));
        assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (4, 2, 16));
        assert_eq!(w.layers[0].bq.is_some(), arch == Arch::Qwen2);
        println!("{name}: read {cfg:?}");
        let out = work.join(format!("{name}_ours"));
        std::fs::create_dir_all(&out).unwrap();
        save_hf_model(&out, &cfg, &w).unwrap();
    }
    let (cfg, _) = load_hf_model(&work.join("llama_base")).unwrap();
    assert_eq!((cfg.rope_theta, cfg.eos_token_id), (50000.0, Some(2)));
    let adapter = read_peft_adapter(&work.join("peft_ref"), &cfg).unwrap();
    println!(
        "adapter: {:?}, {} tensors",
        adapter.config,
        adapter.tensors.len()
    );
    assert_eq!(adapter.tensors.len(), 2 * 7 * 2);
    write_peft_adapter(&work.join("peft_ours"), &adapter, "llama_base").unwrap();
}
