//! Hugging Face chat templates (Jinja) rendered with minijinja, as transformers renders them.
//!
//! transformers compiles `chat_template` with `trim_blocks` and `lstrip_blocks`, passes
//! `messages`, `add_generation_prompt`, the special tokens' text (`bos_token`, `eos_token`)
//! and a `raise_exception` function, and runs on Python objects, so templates call string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...). This file sets up the same
//! environment; the common Python methods are provided by an unknown-method callback.
//! The tokenizer (tokenizer.rs) reads the template from GGUF metadata and calls
//! [`render_chat_with_tokens`] with its own bos/eos text.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, ErrorKind as JinjaErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Render `template` for `messages` with empty `bos_token`/`eos_token`.
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String> {
    render_chat_with_tokens(template, messages, add_generation_prompt, "", "")
}

/// Render `template` for `messages`, with the `bos_token` and `eos_token` variables set.
pub fn render_chat_with_tokens(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let env = environment();
    let tmpl = env.template_from_str(template).map_err(jinja_error)?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(jinja_error)
}

fn jinja_error(e: minijinja::Error) -> Error {
    let mut msg = format!("chat template: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    ErrorKind::Tokenizer(msg).into()
}

/// The environment transformers uses: trim/lstrip blocks, `raise_exception`, Python methods.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(JinjaErrorKind::InvalidOperation, msg))
        },
    );
    env.set_unknown_method_callback(python_method);
    env
}

fn arg_str<'a>(
    args: &'a [Value],
    i: usize,
    method: &str,
) -> std::result::Result<Option<&'a str>, minijinja::Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| {
            minijinja::Error::new(
                JinjaErrorKind::InvalidOperation,
                format!("{method}() expects a string argument"),
            )
        }),
    }
}

/// Python `str` and `dict` methods HF templates call.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let chars = arg_str(args, 0, method)?;
        let strip = |c: char| match chars {
            Some(set) => set.contains(c),
            None => c.is_whitespace(),
        };
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(strip)),
            "lstrip" => Value::from(s.trim_start_matches(strip)),
            "rstrip" => Value::from(s.trim_end_matches(strip)),
            "startswith" => Value::from(s.starts_with(chars.unwrap_or(""))),
            "endswith" => Value::from(s.ends_with(chars.unwrap_or(""))),
            "split" => {
                let parts: Vec<Value> = match chars {
                    Some(sep) if !sep.is_empty() => s.split(sep).map(Value::from).collect(),
                    _ => s.split_whitespace().map(Value::from).collect(),
                };
                Value::from(parts)
            }
            "upper" | "lower" | "title" | "capitalize" | "replace" => {
                let mut full = vec![value.clone()];
                full.extend_from_slice(args);
                return state.apply_filter(method, &full);
            }
            _ => return Err(minijinja::Error::from(JinjaErrorKind::UnknownMethod)),
        });
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => Ok(Value::from(value.try_iter()?.collect::<Vec<_>>())),
            "values" => {
                let mut vals = Vec::new();
                for k in value.try_iter()? {
                    vals.push(value.get_item(&k)?);
                }
                Ok(Value::from(vals))
            }
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(minijinja::Error::from(JinjaErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(JinjaErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's template, as stored in its GGUF's `tokenizer.chat_template`.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_inserts_the_default_system_message() {
        let out = render_chat(CHATML, &[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let msgs = [
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "U"),
        ];
        let out = render_chat(CHATML, &msgs, false).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn hf_features_namespace_methods_filters_and_tokens() {
        let t = "{{ bos_token }}{% set ns = namespace(n=0) %}\
                 {% for m in messages %}{% set ns.n = ns.n + 1 %}\
                 [{{ m.role.upper() }}:{{ m['content'].strip() }}|{{ m.content | trim }}\
                 |{{ m.content.lstrip().startswith('a') }}|{{ m.content.rstrip('! ') }}]\
                 {% endfor %}{{ ns.n }}{{ eos_token }}";
        let msgs = [
            ChatMessage::new("user", "  a b! "),
            ChatMessage::new("assistant", "c"),
        ];
        let out = render_chat_with_tokens(t, &msgs, false, "<s>", "</s>").unwrap();
        // Checked with jinja2 (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks), as
        // transformers renders templates.
        assert_eq!(
            out,
            "<s>[USER:a b!|a b!|True|  a b][ASSISTANT:c|c|False|c]2</s>"
        );
    }

    #[test]
    fn loop_controls_and_dict_methods() {
        let t = "{% for m in messages %}{% if m.role == 'stop' %}{% break %}{% endif %}\
                 {% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}\
                 {{ m.get('missing', 'd') }}{{ m.keys() | length }}\
                 {% endfor %}";
        let msgs = [
            ChatMessage::new("user", "a"),
            ChatMessage::new("stop", "b"),
            ChatMessage::new("user", "c"),
        ];
        let out = render_chat(t, &msgs, false).unwrap();
        assert_eq!(out, "role=user;content=a;d2");
    }

    #[test]
    fn trim_and_lstrip_blocks_match_transformers() {
        let t = "{% for m in messages %}\n  {% if m.role == 'user' %}\n{{ m.content }}\n  {% endif %}\n{% endfor %}";
        let out = render_chat(t, &[ChatMessage::new("user", "x")], false).unwrap();
        assert_eq!(out, "x\n");
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_tokenizer_errors() {
        let t = "{% if messages[0].role != 'system' %}{{ raise_exception('need a system turn') }}{% endif %}";
        let err = render_chat(t, &[ChatMessage::new("user", "x")], false).unwrap_err();
        assert!(err.to_string().contains("need a system turn"), "{err}");
        let err = render_chat("{% for %}", &[], false).unwrap_err();
        assert!(
            err.to_string().starts_with("tokenizer: chat template"),
            "{err}"
        );
    }
}
