//! Chat rendering for training: which characters of a rendered conversation train.
//!
//! A conversation is rendered with a Jinja chat template (the mapping's, else the
//! tokenizer's own, else [`CHATML_TEMPLATE`]) through tokenizer/chat.rs. The trained span of
//! assistant turn `i` is found by rendering prefixes: `P` = turns `..i` with the generation
//! prompt, `Q` = turns `..=i`; `Q[len(P)..]` is the turn's content plus the template's
//! closing text. Rendering the turn once more with a sentinel content shows where the content
//! sits: text before it (a role header, when the template has no generation prompt) is
//! masked; the content and the closing text train up to and including the end token (the tokenizer's EOS
//! text, else `<|im_end|>`, `<|eot_id|>` or `</s>`, whichever occurs first in that order);
//! whatever follows the end token (e.g. ChatML's `\n`) is masked, like axolotl's
//! `train_on_eos: turn`. The template must be prefix-stable (each render extends the
//! previous one) or an error says so. tokenize.rs encodes the segments separately.

use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::{render_chat_with_tokens, ChatMessage};

use super::tokenize::TextTokenizer;

/// Stand-in content used to locate a turn's content in the template's output.
const SENTINEL: &str = "\u{e000}gradients-turn-content\u{e001}";

/// ChatML, used when neither the mapping nor the tokenizer has a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The template to use. `None` or `"tokenizer_default"` → the tokenizer's own, else ChatML
/// (SPEC §1; the live network's default is the name `"chatml"`); `"chatml"` → ChatML; a
/// string containing `{{` or `{%` → that Jinja template; any other name is an error.
pub fn resolve_template<'a>(
    mapping: Option<&'a str>,
    tok: &'a dyn TextTokenizer,
) -> Result<&'a str> {
    let own = || tok.chat_template().unwrap_or(CHATML_TEMPLATE);
    match mapping {
        None => Ok(own()),
        Some(t) if t.contains("{{") || t.contains("{%") => Ok(t),
        Some(t) if t.eq_ignore_ascii_case("chatml") => Ok(CHATML_TEMPLATE),
        Some(t) if t.eq_ignore_ascii_case("tokenizer_default") => Ok(own()),
        Some(t) => Err(Error::config(
            "chat mapping",
            "chat_template",
            format!(
                "unknown template name `{t}` (use chatml, tokenizer_default or a jinja template)"
            ),
        )),
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
        // Where the content sits in the span: render the turn again with a sentinel content;
        // what the template writes before it (a role header, when it has no generation
        // prompt) is masked, and so is what follows the end token.
        let mut probe = messages[..=i].to_vec();
        probe[i].content = SENTINEL.to_string();
        let probe = render(&probe, false)?;
        let located = probe
            .get(prefix.len()..)
            .filter(|_| probe.starts_with(&prefix))
            .and_then(|p| {
                p.find(SENTINEL)
                    .map(|at| (at, p.len() - at - SENTINEL.len()))
            });
        // content-dependent header/trailer (or no sentinel found): the whole span trains
        let (head, trailer_at) = match located {
            Some((head, tail))
                if head + tail <= span.len()
                    && span.is_char_boundary(head)
                    && span.is_char_boundary(span.len() - tail) =>
            {
                (head, span.len() - tail)
            }
            _ => (0, span.len()),
        };
        let train_end = ends
            .iter()
            .find_map(|e| span[trailer_at..].find(e).map(|p| trailer_at + p + e.len()))
            .unwrap_or(span.len());
        segments.push((span[..head].to_string(), false));
        segments.push((span[head..train_end].to_string(), true));
        segments.push((span[train_end..].to_string(), false));
        cursor = upto.len();
    }
    segments.push((full[cursor..].to_string(), false));
    segments.retain(|(s, _)| !s.is_empty());
    Ok(segments)
}
