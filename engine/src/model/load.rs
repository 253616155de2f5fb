//! One entry point for every model source: a GGUF file or an HF model directory
//! (config.json + safetensors). Used by the CLI, the tests and the benches; the format-specific
//! loaders live beside it (gguf_load.rs, hf_model.rs).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{gguf_load, hf_model, ModelConfig, ModelWeights};
use crate::tokenizer::Tokenizer;

/// Which kind of file a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// A single GGUF file (weights dequantised to f32 on load).
    Gguf,
    /// An HF directory with config.json and safetensors.
    HfDir,
}

/// A model ready to upload to a backend: its config, frozen weights and (when the source
/// carries one) its tokenizer.
pub struct LoadedModel {
    /// Where it came from.
    pub source: PathBuf,
    /// Its format.
    pub format: ModelFormat,
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Frozen weights, HF layout.
    pub weights: ModelWeights,
    /// The tokenizer, when the source carries one.
    pub tokenizer: Option<Tokenizer>,
}

/// Load a model from a GGUF file or an HF model directory.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        let (config, weights) = hf_model::load_hf_model(path)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        Ok(LoadedModel {
            source: path.to_path_buf(),
            format: ModelFormat::HfDir,
            config,
            weights,
            tokenizer,
        })
    } else {
        let (config, weights, meta) = gguf_load::load_gguf(path)?;
        let tokenizer = Some(Tokenizer::from_gguf(&meta)?);
        Ok(LoadedModel {
            source: path.to_path_buf(),
            format: ModelFormat::Gguf,
            config,
            weights,
            tokenizer,
        })
    }
}
