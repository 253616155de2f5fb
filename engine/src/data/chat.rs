//! Chat rendering for training: which characters of a rendered conversation train.
//!
//! A conversation is rendered with a Jinja chat template (the mapping's, else the
//! tokenizer's own, else [`CHATML_TEMPLATE`]) through tokenizer/chat.rs. The trained span of
//! assistant turn `i` is found by rendering prefixes: `P` = turns `..i` with the generation
//! prompt, `Q` = turns `..=i`; `Q[len(P)..]` is the turn's content plus the template's
//! closing text. That span trains up to and including its end token (the tokenizer's EOS
//! text, else `<|im_end|>`, `<|eot_id|>` or `</s>`, whichever occurs first in that order);
//! whatever follows the end token (e.g. ChatML's `\n`) is masked, like axolotl's
//! `train_on_eos: turn`. The template must be prefix-stable (each render extends the
//! previous one) or an error says so. tokenize.rs encodes the segments separately.

use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::{render_chat_with_tokens, ChatMessage};

use super::tokenize::TextTokenizer;

/// ChatML, used when neither the mapping nor the tokenizer has a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The template to use: `"chatml"` → ChatML; another string → that Jinja template;
/// `None` → the tokenizer's own, else ChatML.
pub fn resolve_template<'a>(mapping: Option<&'a str>, tok: &'a dyn TextTokenizer) -> &'a str {
    match mapping {
        Some(t) if t.eq_ignore_ascii_case("chatml") => CHATML_TEMPLATE,
        Some(t) => t,
        None => tok.chat_template().unwrap_or(CHATML_TEMPLATE),
    }
}

/// The rendered conversation cut into `(text, trains)` segments, in order; concatenated they
/// are exactly the full render.
pub fn chat_segments(
    tok: &dyn TextTokenizer,
    template: &str,
    messages: &[ChatMessage],
) -> Result<Vec<(String, bool)>> {
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or_default();
    let (bos, eos) = (text(tok.bos_id()), text(tok.eos_id()));
    let render =
        |m: &[ChatMessage], gen: bool| render_chat_with_tokens(template, m, gen, &bos, &eos);
    let full = render(messages, false)?;
    let mut ends: Vec<&str> = Vec::new();
    if !eos.is_empty() {
        ends.push(&eos);
    }
    ends.extend(["<|im_end|>", "<|eot_id|>", "</s>"]);
    let unstable = |i: usize| -> Error {
        ErrorKind::Tokenizer(format!(
            "chat template is not prefix-stable at turn {} (rendering more turns changed earlier text)",
            i + 1
        ))
        .into()
    };
    let mut segments = Vec::new();
    let mut cursor = 0usize;
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = render(&messages[..i], true)?;
        let upto = render(&messages[..=i], false)?;
        if !upto.starts_with(&prefix) || !full.starts_with(&upto) || prefix.len() < cursor {
            return Err(unstable(i));
        }
        segments.push((full[cursor..prefix.len()].to_string(), false));
        let span = &upto[prefix.len()..];
        let content_end = span.find(m.content.as_str()).map(|p| p + m.content.len());
        let from = content_end.unwrap_or(0);
        let train_len = ends
            .iter()
            .find_map(|e| span[from..].find(e).map(|p| from + p + e.len()))
            .unwrap_or(span.len());
        segments.push((span[..train_len].to_string(), true));
        segments.push((span[train_len..].to_string(), false));
        cursor = upto.len();
    }
    segments.push((full[cursor..].to_string(), false));
    segments.retain(|(s, _)| !s.is_empty());
    Ok(segments)
}
