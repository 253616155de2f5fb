//! The DPO (preference pairs) column mapping of SPEC §1 ([`DpoMapping`]) and how one row
//! becomes a rendered [`DpoExample`]. mapping.rs holds the other mappings, the shared
//! helpers (`column`, `fill`) and the [`Mapping`](super::Mapping) enum; tokenize.rs
//! (`tokenize_dpo`) encodes the texts made here.
//!
//! What the columns may hold:
//! - the prompt: text, or a conversation: a list of turns, each an object with
//!   `chat_role_field` (default `from`) and `chat_content_field` (`value`), roles named
//!   `chat_user_reference` (`user`), `chat_assistant_reference` (`assistant`) or `system`,
//!   exactly as the chat mapping reads them. Several turns are allowed: earlier answers are
//!   context and stay masked like the rest of the prompt.
//! - chosen / rejected: text, or one turn object whose `chat_content_field` is the answer
//!   (its role is not checked).
//!
//! So llamafactory's `dpo_en_demo.json` (`conversations` + `chosen`/`rejected` objects
//! `{from, value}`, roles `human`/`gpt`/`system`) reads as-is with
//! [`DpoMapping::sharegpt`].
//!
//! Rendering without formats is `chatml.intel`, the live network's DPO type: prompt =
//! optional `<|im_start|>system\n{system}<|im_end|>\n`, then
//! `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`; chosen/rejected = the
//! text + `<|im_end|>`. A conversation renders each turn the same way
//! (`<|im_start|>{role}\n{content}<|im_end|>\n`, roles mapped to ChatML's) and then the
//! assistant header; the `field_system` text goes first when the conversation has no system
//! turn of its own. ChatML is used whatever the model's own template (as chatml.intel does);
//! SmolLM2's template is ChatML too. With a non-trivial `prompt_format` / `chosen_format` /
//! `rejected_format` (placeholders `{prompt}`, `{system}`, `{chosen}`, `{rejected}`) those
//! are used and tokenize.rs appends EOS; the trivial `"{prompt}"` / `"{chosen}"` /
//! `"{rejected}"` (the live type's defaults, which the live network ignores) keep
//! chatml.intel. Formats need a text prompt: a conversation prompt with a user-defined
//! format is an error naming the format field. Errors name the file, the 1-based row, the
//! column and the turn.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::mapping::{column, fill, text_of, ChatMapping, DpoExample, Example};
use super::Record;
use crate::error::{Error, Result};

/// DPO (preference pairs) column mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoMapping {
    /// Column of the prompt: text, or a list of turns (module docs).
    pub field_prompt: String,
    /// Column of an optional system text.
    pub field_system: Option<String>,
    /// Column of the preferred answer: text, or a turn object.
    pub field_chosen: String,
    /// Column of the rejected answer: text, or a turn object.
    pub field_rejected: String,
    /// Prompt template (`{prompt}`, `{system}`).
    pub prompt_format: Option<String>,
    /// Chosen template (`{chosen}`, `{prompt}`).
    pub chosen_format: Option<String>,
    /// Rejected template (`{rejected}`, `{prompt}`).
    pub rejected_format: Option<String>,
    /// Field of a turn naming its role (conversation prompts).
    #[serde(skip_serializing_if = "is_from")]
    pub chat_role_field: String,
    /// Field of a turn holding its text (conversation prompts and answer objects).
    #[serde(skip_serializing_if = "is_value")]
    pub chat_content_field: String,
    /// Role name of the user in the data.
    #[serde(skip_serializing_if = "is_user")]
    pub chat_user_reference: String,
    /// Role name of the assistant in the data.
    #[serde(skip_serializing_if = "is_assistant")]
    pub chat_assistant_reference: String,
}

// Defaults are left out of the serialised form, so mappings stored before these fields
// existed (tasks, checkpoints) read and compare the same.
fn is_from(s: &str) -> bool {
    s == "from"
}
fn is_value(s: &str) -> bool {
    s == "value"
}
fn is_user(s: &str) -> bool {
    s == "user"
}
fn is_assistant(s: &str) -> bool {
    s == "assistant"
}

impl Default for DpoMapping {
    fn default() -> Self {
        DpoMapping {
            field_prompt: "prompt".into(),
            field_system: None,
            field_chosen: "chosen".into(),
            field_rejected: "rejected".into(),
            prompt_format: None,
            chosen_format: None,
            rejected_format: None,
            chat_role_field: "from".into(),
            chat_content_field: "value".into(),
            chat_user_reference: "user".into(),
            chat_assistant_reference: "assistant".into(),
        }
    }
}

impl DpoMapping {
    /// The ShareGPT / llamafactory shape (`dpo_en_demo.json`): the prompt is the
    /// `conversations` list, chosen/rejected are `{from, value}` objects, roles `human` and
    /// `gpt`.
    pub fn sharegpt() -> Self {
        DpoMapping {
            field_prompt: "conversations".into(),
            chat_user_reference: "human".into(),
            chat_assistant_reference: "gpt".into(),
            ..DpoMapping::default()
        }
    }

    /// Check required fields, the turn fields and the templates' placeholders.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("field_prompt", &self.field_prompt),
            ("field_chosen", &self.field_chosen),
            ("field_rejected", &self.field_rejected),
        ] {
            if v.trim().is_empty() {
                return Err(Error::config("dpo mapping", field, "is required"));
            }
        }
        self.turns()
            .validate()
            .map_err(|e| Error::config("dpo mapping", "chat fields", e.to_string()))?;
        let p = [("prompt", "p"), ("system", "s")];
        if let Some(f) = &self.prompt_format {
            fill(f, &p, "prompt_format")?;
        }
        if let Some(f) = &self.chosen_format {
            fill(f, &[("chosen", "c"), ("prompt", "p")], "chosen_format")?;
        }
        if let Some(f) = &self.rejected_format {
            fill(f, &[("rejected", "r"), ("prompt", "p")], "rejected_format")?;
        }
        Ok(())
    }

    /// The chat mapping that reads a conversation prompt (same turn fields and roles).
    fn turns(&self) -> ChatMapping {
        ChatMapping {
            chat_template: None,
            chat_column: self.field_prompt.clone(),
            chat_role_field: self.chat_role_field.clone(),
            chat_content_field: self.chat_content_field.clone(),
            chat_user_reference: self.chat_user_reference.clone(),
            chat_assistant_reference: self.chat_assistant_reference.clone(),
        }
    }

    /// The text of an answer column: text as it is, or a turn object's content field.
    fn answer(&self, row: &Record, path: &Path, row_no: usize, col: &str) -> Result<String> {
        match row.get(col) {
            Some(Value::Object(turn)) => {
                let f = &self.chat_content_field;
                let v = turn.get(f).ok_or_else(|| {
                    Error::format(
                        path,
                        format!("row {row_no}: column `{col}` is an object without field `{f}`"),
                    )
                })?;
                text_of(v, path, row_no, &format!("{col}.{f}"))
            }
            _ => column(row, path, row_no, col),
        }
    }

    /// The rendered preference pair of `row` (1-based `row_no`) of `path`.
    pub fn example(&self, row: &Record, path: &Path, row_no: usize) -> Result<DpoExample> {
        let conversation = match row.get(&self.field_prompt) {
            Some(Value::Array(_)) => match self.turns().example(row, path, row_no)? {
                Example::Chat(messages) => Some(messages),
                Example::Text { .. } => None,
            },
            _ => None,
        };
        let prompt = match conversation {
            Some(_) => String::new(),
            None => column(row, path, row_no, &self.field_prompt)?,
        };
        let chosen = self.answer(row, path, row_no, &self.field_chosen)?;
        let rejected = self.answer(row, path, row_no, &self.field_rejected)?;
        let system = match &self.field_system {
            Some(c) => column(row, path, row_no, c)?,
            None => String::new(),
        };
        // The live network's type carries the trivial formats by default and still uses
        // chatml.intel, so only a non-trivial format selects the user-defined style.
        let set = |f: &Option<String>, trivial: &str| f.as_deref().is_some_and(|f| f != trivial);
        let user_defined = [
            ("prompt_format", set(&self.prompt_format, "{prompt}")),
            ("chosen_format", set(&self.chosen_format, "{chosen}")),
            ("rejected_format", set(&self.rejected_format, "{rejected}")),
        ]
        .into_iter()
        .find(|(_, on)| *on)
        .map(|(name, _)| name);
        if let (Some(_), Some(field)) = (&conversation, user_defined) {
            return Err(Error::format(
                path,
                format!(
                    "row {row_no}: column `{}` holds a conversation, which is rendered as chatml; `{field}` applies to text prompts only",
                    self.field_prompt
                ),
            ));
        }
        if user_defined.is_none() {
            let mut p = String::new();
            let mut turn = |role: &str, content: &str| {
                p.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
            };
            match &conversation {
                Some(messages) => {
                    if !system.is_empty() && messages.first().is_none_or(|m| m.role != "system") {
                        turn("system", &system);
                    }
                    for m in messages {
                        turn(&m.role, &m.content);
                    }
                }
                None => {
                    if !system.is_empty() {
                        turn("system", &system);
                    }
                    turn("user", &prompt);
                }
            }
            p.push_str("<|im_start|>assistant\n");
            return Ok(DpoExample {
                prompt: p,
                chosen: format!("{chosen}<|im_end|>"),
                rejected: format!("{rejected}<|im_end|>"),
                append_eos: false,
            });
        }
        let pf = self.prompt_format.as_deref().unwrap_or("{prompt}");
        let cf = self.chosen_format.as_deref().unwrap_or("{chosen}");
        let rf = self.rejected_format.as_deref().unwrap_or("{rejected}");
        Ok(DpoExample {
            prompt: fill(
                pf,
                &[("prompt", &prompt), ("system", &system)],
                "prompt_format",
            )?,
            chosen: fill(
                cf,
                &[("chosen", &chosen), ("prompt", &prompt)],
                "chosen_format",
            )?,
            rejected: fill(
                rf,
                &[("rejected", &rejected), ("prompt", &prompt)],
                "rejected_format",
            )?,
            append_eos: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Record {
        match v {
            Value::Object(m) => m,
            _ => panic!("test rows are objects"),
        }
    }

    fn path() -> &'static Path {
        Path::new("pairs.json")
    }

    #[test]
    fn sharegpt_rows_render_as_chatml() {
        let m = DpoMapping::sharegpt();
        m.validate().unwrap();
        let r = row(json!({
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "2+2?"}
            ],
            "chosen": {"from": "gpt", "value": "4"},
            "rejected": {"from": "gpt", "value": "5"}
        }));
        let ex = m.example(&r, path(), 1).unwrap();
        assert_eq!(
            ex.prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            (ex.chosen.as_str(), ex.rejected.as_str()),
            ("4<|im_end|>", "5<|im_end|>")
        );
        assert!(!ex.append_eos);
        // plain-string answers and a one-turn conversation with a system column
        let m2 = DpoMapping {
            field_system: Some("sys".into()),
            ..DpoMapping::sharegpt()
        };
        let r = row(json!({"conversations": [{"from": "human", "value": "Q"}],
            "chosen": "good", "rejected": "bad", "sys": "S"}));
        let ex = m2.example(&r, path(), 1).unwrap();
        assert_eq!(
            ex.prompt,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(ex.chosen, "good<|im_end|>");
        // the same pair as text renders the same prompt (conversations generalise chatml.intel)
        let text = DpoMapping {
            field_prompt: "q".into(),
            field_system: Some("sys".into()),
            ..DpoMapping::default()
        };
        let r = row(json!({"q": "Q", "chosen": "good", "rejected": "bad", "sys": "S"}));
        assert_eq!(text.example(&r, path(), 1).unwrap(), ex);
    }

    #[test]
    fn content_key_is_configurable() {
        let m = DpoMapping {
            chat_role_field: "role".into(),
            chat_content_field: "content".into(),
            ..DpoMapping::default()
        };
        let r = row(json!({"prompt": [{"role": "user", "content": "Q"}],
            "chosen": {"role": "assistant", "content": "A"}, "rejected": "B"}));
        let ex = m.example(&r, path(), 1).unwrap();
        assert_eq!(
            ex.prompt,
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            (ex.chosen.as_str(), ex.rejected.as_str()),
            ("A<|im_end|>", "B<|im_end|>")
        );
    }

    #[test]
    fn bad_rows_name_file_row_column_and_turn() {
        let m = DpoMapping::sharegpt();
        let cases = [
            (
                json!({"conversations": [{"from": "robot", "value": "x"}], "chosen": "a", "rejected": "b"}),
                vec!["row 3", "`conversations`", "turn 1", "robot"],
            ),
            (
                json!({"conversations": [{"from": "human"}], "chosen": "a", "rejected": "b"}),
                vec!["row 3", "turn 1", "`value`"],
            ),
            (
                json!({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt"}, "rejected": "b"}),
                vec!["row 3", "`chosen`", "`value`"],
            ),
            (
                json!({"conversations": [{"from": "human", "value": "q"}], "chosen": "a"}),
                vec!["row 3", "`rejected`"],
            ),
            (
                json!({"conversations": [{"from": "human", "value": "q"}], "chosen": ["a"], "rejected": "b"}),
                vec!["row 3", "`chosen`", "list or object"],
            ),
            (
                json!({"conversations": "not turns", "chosen": {"from": "gpt", "value": []}, "rejected": "b"}),
                vec!["row 3", "chosen.value"],
            ),
        ];
        for (r, want) in cases {
            let e = m.example(&row(r), path(), 3).unwrap_err().to_string();
            assert!(e.contains("pairs.json"), "{e}");
            for w in want {
                assert!(e.contains(w), "{w:?} not in {e}");
            }
        }
        // formats apply to text prompts only
        let f = DpoMapping {
            prompt_format: Some("Q: {prompt}".into()),
            ..DpoMapping::sharegpt()
        };
        let r = row(
            json!({"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": "b"}),
        );
        let e = f.example(&r, path(), 2).unwrap_err().to_string();
        assert!(e.contains("row 2") && e.contains("prompt_format"), "{e}");
        // the turn fields are validated like the chat mapping's
        let same = DpoMapping {
            chat_assistant_reference: "user".into(),
            ..DpoMapping::default()
        };
        let e = same.validate().unwrap_err().to_string();
        assert!(e.contains("chat_assistant_reference"), "{e}");
    }

    #[test]
    fn defaults_stay_out_of_the_serialised_form() {
        let v = serde_json::to_value(DpoMapping::default()).unwrap();
        assert!(v.get("chat_role_field").is_none(), "{v}");
        let v = serde_json::to_value(DpoMapping::sharegpt()).unwrap();
        assert_eq!(v["chat_user_reference"], "human");
        let back: DpoMapping = serde_json::from_value(v).unwrap();
        assert_eq!(back, DpoMapping::sharegpt());
    }
}
