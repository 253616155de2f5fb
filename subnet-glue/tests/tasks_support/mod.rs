//! Shared pieces of the subnet task/method/validator tests: a tiny random Llama (the
//! engine's test builders, tests/common) saved as an HF directory so task intake can check
//! its architecture, a letter tokenizer, small instruct datasets and task specs in tempdirs.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
pub mod common;

use std::path::{Path, PathBuf};

use gradients_engine::data::TextTokenizer;
use gradients_engine::model::hf_model::save_hf_model;
use gradients_engine::model::{ModelConfig, ModelWeights};
use gradients_subnet::validator::BaseModel;

/// Letters a–z are 3–28, space 29, '.' 30, anything else 31; eos 2.
pub struct LetterTok;

impl TextTokenizer for LetterTok {
    fn encode(&self, text: &str) -> gradients_engine::Result<Vec<u32>> {
        Ok(text
            .chars()
            .map(|c| match c {
                'a'..='z' => c as u32 - 'a' as u32 + 3,
                ' ' => 29,
                '.' => 30,
                _ => 31,
            })
            .collect())
    }
    fn eos_id(&self) -> Option<u32> {
        Some(2)
    }
    fn bos_id(&self) -> Option<u32> {
        None
    }
    fn token_text(&self, _id: u32) -> Option<String> {
        None
    }
    fn chat_template(&self) -> Option<&str> {
        None
    }
}

/// The tiny model: 2 layers, hidden 32, vocab 50.
pub fn tiny_model() -> (ModelConfig, ModelWeights) {
    common::tiny_model(true, 7)
}

/// Save the tiny model as an HF directory under `dir`; returns the directory.
pub fn save_tiny_model(dir: &Path) -> PathBuf {
    let (cfg, w) = tiny_model();
    let m = dir.join("tiny-model");
    std::fs::create_dir_all(&m).unwrap();
    save_hf_model(&m, &cfg, &w).unwrap();
    m
}

/// The tiny model in memory with the letter tokenizer.
pub fn tiny_base() -> BaseModel {
    let (config, weights) = tiny_model();
    BaseModel {
        config,
        weights,
        tokenizer: Box::new(LetterTok),
        name: "tiny".into(),
    }
}

/// `n` rows: "say the animal twice" → the animal's name twice.
pub fn write_dataset(dir: &Path, n: usize) -> PathBuf {
    common::write_animal_dataset(dir, common::ANIMALS.len(), n)
}

/// A TOML task spec over `model` and `data`; `extra` is appended at the top level (before
/// the mapping table).
pub fn spec_toml(model: &Path, data: &Path, extra: &str) -> String {
    format!(
        r#"task_type = "instruct"
base_model = "{}"
dataset = "{}"
hours_to_complete = 1.0
{extra}
[mapping]
field_instruction = "instruction"
field_input = "input"
field_output = "output"
"#,
        model.display(),
        data.display()
    )
}
