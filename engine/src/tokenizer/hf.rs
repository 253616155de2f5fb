//! Tokenizers of HF model directories: `tokenizer.json` plus the chat template and special
//! tokens of `tokenizer_config.json`. The GGUF path is in the parent module.

use std::path::Path;

use super::{tok_err, Tokenizer};
use crate::error::{Error, Result};

impl Tokenizer {
    /// The tokenizer of an HF model directory, or `None` when it has no `tokenizer.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let file = dir.join("tokenizer.json");
        if !file.exists() {
            return Ok(None);
        }
        let inner = tokenizers::Tokenizer::from_file(&file)
            .map_err(|e| tok_err(format!("{}: {e}", file.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::format(&cfg_path, format!("invalid json: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(Error::io(&cfg_path, e)),
        };
        // A special token is written either as a string or as {"content": "..."}.
        let token_id = |key: &str| -> Option<u32> {
            let v = cfg.get(key)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let bos_id = token_id("bos_token");
        let eos_id = token_id("eos_token");
        let chat_template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::config(
                    cfg_path.display().to_string(),
                    "chat_template",
                    "only a single template string is supported",
                ))
            }
        };
        Ok(Some(Tokenizer {
            inner,
            bos_id,
            eos_id,
            chat_template,
        }))
    }
}
