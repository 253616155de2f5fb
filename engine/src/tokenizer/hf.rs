//! Tokenizers of HF model directories: `tokenizer.json` plus the chat template and special
//! tokens of `tokenizer_config.json`; the template may instead be in `chat_template.jinja`
//! (where transformers ≥ 4.43 saves it). The GGUF path is in the parent module.

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
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => match std::fs::read_to_string(&jinja) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io(&jinja, e)),
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;

    /// A one-word-per-id tokenizer.json in `dir`.
    fn write_tokenizer_json(dir: &Path) {
        let vocab = [("<s>", 0), ("</s>", 1), ("[UNK]", 2), ("hi", 3)]
            .into_iter()
            .map(|(w, i)| (w.to_string(), i))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        tokenizers::Tokenizer::new(model)
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
    }

    #[test]
    fn chat_template_from_the_config_or_from_chat_template_jinja() {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer_json(dir.path());
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}}"#,
        )
        .unwrap();
        let t = Tokenizer::from_hf_dir(dir.path()).unwrap().unwrap();
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.chat_template()),
            (Some(0), Some(1), None)
        );
        // transformers >= 4.43 saves the template beside the config
        let jinja = "{% for m in messages %}{{ m.content }}{% endfor %}";
        std::fs::write(dir.path().join("chat_template.jinja"), jinja).unwrap();
        let t = Tokenizer::from_hf_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.chat_template(), Some(jinja));
        // a template in the config wins over the file
        std::fs::write(&cfg, r#"{"chat_template": "{{ 'x' }}"}"#).unwrap();
        let t = Tokenizer::from_hf_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.chat_template(), Some("{{ 'x' }}"));
    }
}
