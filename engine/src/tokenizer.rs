//! The model's tokenizer, built from GGUF metadata (`tokenizer.ggml.*`), and its chat template.
//!
//! [`Tokenizer::from_gguf`] rebuilds what transformers builds for a byte-level BPE GGUF
//! (`tokenizer.ggml.model = "gpt2"`): the BPE model from `tokens` and `merges`, the
//! pre-tokenizer (for SmolLM's `smollm` pre-type: individual digits, then GPT-2's byte-level
//! regex), the byte-level decoder, and the control tokens (`token_type` 3) as special added
//! tokens that are matched whole in the text. No BOS is added. The chat template
//! (`tokenizer.chat_template`) is rendered by chat.rs. Model weights come from
//! model/gguf_load.rs; the data pipeline (data/) calls `encode` and `render_chat`.

pub mod chat; // ChatMessage, render_chat, render_chat_with_tokens (minijinja)
mod hf; // Tokenizer::from_hf_dir (tokenizer.json + tokenizer_config.json)

pub use chat::{render_chat, render_chat_with_tokens, ChatMessage};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::error::{Error, ErrorKind, Result};
use crate::model::gguf::GgufMeta;

/// GGUF `token_type` of control (special) tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined added tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn tok_err(msg: impl Into<String>) -> Error {
    ErrorKind::Tokenizer(msg.into()).into()
}

/// A text tokenizer with the model's special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes (byte-level BPE only).
    pub fn from_gguf(meta: &GgufMeta) -> Result<Self> {
        let path = meta.path.display();
        let model = meta.get_str("tokenizer.ggml.model")?.unwrap_or("");
        if model != "gpt2" {
            return Err(Error::unsupported(format!(
                "{path}: tokenizer model `{model}` (only byte-level BPE `gpt2` is supported)"
            )));
        }
        let pre = meta.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            other => {
                return Err(Error::unsupported(format!(
                    "{path}: tokenizer pre-type `{other}` (supported: smollm, gpt2, default)"
                )))
            }
        };
        let missing = |key: &str| Error::config(path.to_string(), key, "missing");
        let tokens = meta
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let merges = meta
            .get_str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let types = meta
            .get_int_array("tokenizer.ggml.token_type")?
            .unwrap_or_default();

        // Tokens are spelled in GPT-2's byte alphabet; respell any that are not (as
        // transformers does), so merges and lookups agree.
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(in_byte_alphabet);
        let respell = |t: &str| -> String {
            if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            }
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (respell(t), i as u32))
            .collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(Error::config(
                    path.to_string(),
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tok_err(format!("{path}: building the bpe model: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let of_type = |want: i64| {
            tokens
                .iter()
                .zip(&types)
                .filter(move |(_, &ty)| ty == want)
                .map(|(t, _)| *t)
        };
        // A control token outside the byte alphabet is a llama.cpp mislabel: skip it.
        let special: Vec<AddedToken> = of_type(TOKEN_TYPE_CONTROL)
            .filter(|t| in_alphabet(t))
            .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        inner.add_special_tokens(&special);
        let user: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
            .map(|t| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        inner.add_tokens(&user);

        let id = |key: &str| -> Result<Option<u32>> {
            Ok(meta.get_u64(key)?.and_then(|v| u32::try_from(v).ok()))
        };
        Ok(Tokenizer {
            inner,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            chat_template: meta.get_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }

    /// Token ids of `text`; special tokens written in the text are matched whole, and no
    /// BOS/EOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err(format!("decode: {e}")))
    }

    /// Number of ids (vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of `id`, if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Beginning-of-sequence id (`tokenizer.ggml.bos_token_id`).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence id (`tokenizer.ggml.eos_token_id`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render the model's chat template for `messages`, with `bos_token`/`eos_token` set to
    /// the text of the bos/eos ids. Errors when the file has no template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| tok_err("the model has no chat template (tokenizer.chat_template)"))?;
        let text = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or_default();
        render_chat_with_tokens(
            template,
            messages,
            add_generation_prompt,
            &text(self.bos_id),
            &text(self.eos_id),
        )
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// True for the chars of [`byte_alphabet`].
fn in_byte_alphabet(c: char) -> bool {
    let c = c as u32;
    (33..=126).contains(&c) || (161..=172).contains(&c) || (174..256 + 68).contains(&c)
}

/// GPT-2's byte alphabet: the char standing for each byte (printable bytes stand for
/// themselves, the rest map to U+0100 onwards in byte order).
fn byte_alphabet() -> Vec<char> {
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            let code = if printable {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap_or('\u{fffd}')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::gguf::GgufValue;
    use crate::model::gguf_writer::GgufWriter;

    /// A tiny byte-level BPE: `<|end|>` (control) = 0, byte b = b + 1, then merged tokens.
    fn tiny(model: &str, pre: &str) -> Result<Tokenizer> {
        let alphabet = byte_alphabet();
        let mut tokens = vec!["<|end|>".to_string()];
        tokens.extend(alphabet.iter().map(|c| c.to_string()));
        for t in ["he", "ll", "llo", "hello", "12"] {
            tokens.push(t.to_string());
        }
        let mut types = vec![GgufValue::I32(3)];
        types.extend((1..tokens.len()).map(|_| GgufValue::I32(1)));
        let merges = ["h e", "l l", "ll o", "he llo", "1 2"];
        let s = |x: &str| GgufValue::String(x.to_string());
        let mut w = GgufWriter::new();
        w.kv("tokenizer.ggml.model", s(model))
            .kv("tokenizer.ggml.pre", s(pre))
            .kv(
                "tokenizer.ggml.tokens",
                GgufValue::Array(tokens.iter().map(|t| s(t)).collect()),
            )
            .kv("tokenizer.ggml.token_type", GgufValue::Array(types))
            .kv(
                "tokenizer.ggml.merges",
                GgufValue::Array(merges.iter().map(|m| s(m)).collect()),
            )
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(0))
            .kv(
                "tokenizer.chat_template",
                s("{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"),
            );
        let meta = GgufMeta::parse(Path::new("tiny.gguf"), &w.to_bytes())?;
        Tokenizer::from_gguf(&meta)
    }

    #[test]
    fn byte_alphabet_is_a_bijection_onto_in_byte_alphabet() {
        let a = byte_alphabet();
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), 256);
        assert!(a.iter().all(|&c| in_byte_alphabet(c)));
        let count = (0..1000)
            .filter_map(char::from_u32)
            .filter(|&c| in_byte_alphabet(c))
            .count();
        assert_eq!(count, 256);
        assert_eq!(
            (a[b' ' as usize], a[b'\n' as usize], a[b'A' as usize]),
            ('Ġ', 'Ċ', 'A')
        );
    }

    #[test]
    fn smollm_pre_tokenizer_splits_digits_and_keeps_specials_whole() {
        let tok = tiny("gpt2", "smollm").unwrap();
        let id = |b: u8| u32::from(b) + 1;
        // "hello" merges fully; the space is Ġ; digits are split before BPE, so "12" never
        // merges; the control token is matched whole.
        let ids = tok.encode("hello 12<|end|>").unwrap();
        assert_eq!(ids, [260, id(b' '), id(b'1'), id(b'2'), 0]);
        assert_eq!(tok.decode(&ids).unwrap(), "hello 12<|end|>");
        assert_eq!(tok.eos_id(), Some(0));
        assert_eq!(tok.bos_id(), None);
        let chat = tok
            .render_chat(&[ChatMessage::new("user", "hi")], false)
            .unwrap();
        assert_eq!(chat, "hi<|end|>");
        // The plain gpt2 pre-tokenizer keeps " 12" together, so the merge applies.
        let gpt2 = tiny("gpt2", "default").unwrap();
        assert_eq!(gpt2.encode(" 12").unwrap(), [id(b' '), 261]);
    }

    #[test]
    fn other_tokenizer_kinds_are_unsupported() {
        let err = tiny("llama", "default").err().unwrap().to_string();
        assert!(
            err.contains("tiny.gguf") && err.contains("`llama`"),
            "{err}"
        );
        let err = tiny("gpt2", "qwen2").err().unwrap().to_string();
        assert!(err.contains("pre-type `qwen2`"), "{err}");
    }
}
