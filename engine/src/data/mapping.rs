//! Column mappings (SPEC §1): which columns of a record hold the instruction, input, output,
//! conversation or preference pair, and how they become prompt and completion text.
//!
//! Defaults follow the live network (G.O.D's `core/config/config_handler.py` feeding
//! axolotl's user-defined instruct format and its `chatml.intel` DPO type):
//! - instruct: `format` = `"{instruction} {input}"` when `field_input` is set, else
//!   `"{instruction}"`; `no_input_format` = `"{instruction}"` (used for rows whose input is
//!   empty). The system text (`field_system` column, else `system_prompt`) is put through
//!   `system_format` (default `"{system}"`) and prepended with no separator, and the output
//!   follows the prompt directly; no chat template is applied. This is NOT a chat-template
//!   default: set `chat_template: true` to render instead the tokenizer's template with the
//!   prompt as the user turn (instruction + "\n" + input) and the output as the assistant
//!   turn. Without `field_output` the instruction text itself is the completion.
//! - chat: conversations in `chat_column` (default `conversations`), each turn an object
//!   with `chat_role_field` (`from`) and `chat_content_field` (`value`); roles named
//!   `chat_user_reference` (`user`) / `chat_assistant_reference` (`assistant`) / `system`
//!   map to ChatML's user / assistant / system.
//! - dpo: `chatml.intel` by default, user-defined formats otherwise; text or conversation
//!   prompts, text or `{from, value}` answers: dpo_mapping.rs holds [`DpoMapping`].
//! - chat `chat_template`: the live network's default is the name `"chatml"`; we follow
//!   SPEC §1 instead (unset = the tokenizer's own template, else ChatML).
//! - grpo: prompts and reward functions, in grpo.rs / reward.rs.
//!
//! Errors name the file, the 1-based row and the column. tokenize.rs turns the [`Example`]s
//! made here into token ids; formats.rs supplies the records.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Record;
use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;

pub use super::dpo_mapping::DpoMapping;

/// Instruct (SFT) column mapping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructMapping {
    /// Column of the instruction (required).
    pub field_instruction: String,
    /// Column of the optional input/context.
    #[serde(default)]
    pub field_input: Option<String>,
    /// Column of the output (the completion). `None`: the instruction is the completion.
    #[serde(default)]
    pub field_output: Option<String>,
    /// Column of a per-row system text.
    #[serde(default)]
    pub field_system: Option<String>,
    /// System text used when there is no `field_system` column (or it is empty).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// How the system text is written (`{system}`); default `"{system}"`.
    #[serde(default)]
    pub system_format: Option<String>,
    /// Prompt template for rows with an input (`{instruction}`, `{input}`).
    #[serde(default)]
    pub format: Option<String>,
    /// Prompt template for rows without an input (`{instruction}`).
    #[serde(default)]
    pub no_input_format: Option<String>,
    /// Render with the tokenizer's chat template instead of the format strings.
    #[serde(default)]
    pub chat_template: bool,
    /// axolotl's completion-type column (part of the live network's instruct type);
    /// accepted and unused: `field_output = None` already trains on the instruction text.
    #[serde(default)]
    pub field: Option<String>,
}

/// Chat (conversation SFT) column mapping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatMapping {
    /// `None` / `"tokenizer_default"`: the tokenizer's template, else ChatML; `"chatml"`;
    /// or a Jinja template (see chat.rs `resolve_template`).
    pub chat_template: Option<String>,
    /// Column holding the list of turns.
    pub chat_column: String,
    /// Field of a turn naming its role.
    pub chat_role_field: String,
    /// Field of a turn holding its text.
    pub chat_content_field: String,
    /// Role name of the user in the data.
    pub chat_user_reference: String,
    /// Role name of the assistant in the data.
    pub chat_assistant_reference: String,
}

impl Default for ChatMapping {
    fn default() -> Self {
        ChatMapping {
            chat_template: None,
            chat_column: "conversations".into(),
            chat_role_field: "from".into(),
            chat_content_field: "value".into(),
            chat_user_reference: "user".into(),
            chat_assistant_reference: "assistant".into(),
        }
    }
}

/// One SFT example before tokenisation.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// Plain text: `prompt` (masked) followed by `completion` (trained, then EOS).
    Text {
        /// Prompt text.
        prompt: String,
        /// Completion text.
        completion: String,
    },
    /// Chat turns rendered by a template; assistant turns train.
    Chat(Vec<ChatMessage>),
}

/// One DPO example: rendered prompt, chosen and rejected texts.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoExample {
    /// Prompt text.
    pub prompt: String,
    /// Preferred completion text.
    pub chosen: String,
    /// Rejected completion text.
    pub rejected: String,
    /// Whether tokenize.rs must append EOS to chosen/rejected (user-defined formats).
    pub append_eos: bool,
}

/// `template` with each `{name}` replaced by its value; `{{`/`}}` are literal braces, as in
/// Python's `str.format`. An unknown placeholder is an error naming `field`.
pub fn fill(template: &str, values: &[(&str, &str)], field: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        let bad = |msg: String| Error::config("column mapping", field, msg);
        if tail.starts_with('}') {
            return Err(bad(format!("unmatched `}}` in {template:?}")));
        }
        let end = tail
            .find('}')
            .ok_or_else(|| bad(format!("unclosed `{{` in {template:?}")))?;
        let name = &tail[1..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let known: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
                bad(format!(
                    "unknown placeholder `{{{name}}}` (known: {known:?})"
                ))
            })?;
        out.push_str(value);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The text of `column` in `row` (1-based `row_no`) of `path`: strings as they are, null as
/// "", numbers and booleans as JSON. Missing column → error naming file, row and column.
pub fn column(row: &Record, path: &Path, row_no: usize, column: &str) -> Result<String> {
    match row.get(column) {
        None => Err(Error::format(
            path,
            format!("row {row_no}: missing column `{column}`"),
        )),
        Some(v) => text_of(v, path, row_no, column),
    }
}

pub(super) fn text_of(v: &Value, path: &Path, row_no: usize, column: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Error::format(
            path,
            format!("row {row_no}: column `{column}` holds a list or object, expected text"),
        )),
    }
}

impl InstructMapping {
    /// Check required fields and the templates' placeholders.
    pub fn validate(&self) -> Result<()> {
        if self.field_instruction.trim().is_empty() {
            return Err(Error::config(
                "instruct mapping",
                "field_instruction",
                "is required",
            ));
        }
        let probe = [("instruction", "i"), ("input", "n")];
        if let Some(f) = &self.format {
            fill(f, &probe, "format")?;
        }
        if let Some(f) = &self.no_input_format {
            fill(f, &probe[..1], "no_input_format")?;
        }
        if let Some(f) = &self.system_format {
            fill(f, &[("system", "s")], "system_format")?;
        }
        Ok(())
    }

    /// The example of `row` (1-based `row_no`) of `path`.
    pub fn example(&self, row: &Record, path: &Path, row_no: usize) -> Result<Example> {
        let instruction = column(row, path, row_no, &self.field_instruction)?;
        let Some(out_col) = &self.field_output else {
            return Ok(Example::Text {
                prompt: String::new(),
                completion: instruction,
            });
        };
        let output = column(row, path, row_no, out_col)?;
        let input = match &self.field_input {
            Some(c) => column(row, path, row_no, c)?,
            None => String::new(),
        };
        let mut system = match &self.field_system {
            Some(c) => column(row, path, row_no, c)?,
            None => String::new(),
        };
        if system.is_empty() {
            system = self.system_prompt.clone().unwrap_or_default();
        }
        if self.chat_template {
            let mut messages = Vec::new();
            if !system.is_empty() {
                messages.push(ChatMessage::new("system", system));
            }
            let user = if input.is_empty() {
                instruction
            } else {
                format!("{instruction}\n{input}")
            };
            messages.push(ChatMessage::new("user", user));
            messages.push(ChatMessage::new("assistant", output));
            return Ok(Example::Chat(messages));
        }
        let mut prompt = if system.is_empty() {
            String::new()
        } else {
            let f = self.system_format.as_deref().unwrap_or("{system}");
            fill(f, &[("system", &system)], "system_format")?
        };
        if input.is_empty() {
            let f = self.no_input_format.as_deref().unwrap_or("{instruction}");
            prompt.push_str(&fill(
                f,
                &[("instruction", &instruction)],
                "no_input_format",
            )?);
        } else {
            let default = "{instruction} {input}";
            let f = self.format.as_deref().unwrap_or(default);
            let vals = [("instruction", instruction.as_str()), ("input", &input)];
            prompt.push_str(&fill(f, &vals, "format")?);
        }
        Ok(Example::Text {
            prompt,
            completion: output,
        })
    }
}

impl ChatMapping {
    /// Check that the column and field names are set and the role names differ.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("chat_column", &self.chat_column),
            ("chat_role_field", &self.chat_role_field),
            ("chat_content_field", &self.chat_content_field),
            ("chat_user_reference", &self.chat_user_reference),
            ("chat_assistant_reference", &self.chat_assistant_reference),
        ] {
            if v.trim().is_empty() {
                return Err(Error::config("chat mapping", field, "must not be empty"));
            }
        }
        if self.chat_user_reference == self.chat_assistant_reference {
            return Err(Error::config(
                "chat mapping",
                "chat_assistant_reference",
                "must differ from chat_user_reference",
            ));
        }
        Ok(())
    }

    /// The conversation of `row` as ChatML-role messages.
    pub fn example(&self, row: &Record, path: &Path, row_no: usize) -> Result<Example> {
        let col = &self.chat_column;
        let turns = match row.get(col) {
            None => {
                return Err(Error::format(
                    path,
                    format!("row {row_no}: missing column `{col}`"),
                ))
            }
            Some(Value::Array(t)) => t,
            Some(_) => {
                return Err(Error::format(
                    path,
                    format!("row {row_no}: column `{col}` is not a list of turns"),
                ))
            }
        };
        let mut messages = Vec::with_capacity(turns.len());
        for (k, turn) in turns.iter().enumerate() {
            let Value::Object(turn) = turn else {
                return Err(Error::format(
                    path,
                    format!("row {row_no}: column `{col}` turn {}: not an object", k + 1),
                ));
            };
            let field = |name: &str| -> Result<String> {
                let v = turn.get(name).ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "row {row_no}: column `{col}` turn {}: missing field `{name}`",
                            k + 1
                        ),
                    )
                })?;
                text_of(v, path, row_no, &format!("{col}[{}].{name}", k + 1))
            };
            let role = field(&self.chat_role_field)?;
            let content = field(&self.chat_content_field)?;
            let role = if role == self.chat_user_reference {
                "user"
            } else if role == self.chat_assistant_reference {
                "assistant"
            } else if role == "system" {
                "system"
            } else {
                return Err(Error::format(
                    path,
                    format!(
                        "row {row_no}: column `{col}` turn {}: unknown role `{role}` (expected `{}`, `{}` or `system`)",
                        k + 1,
                        self.chat_user_reference,
                        self.chat_assistant_reference
                    ),
                ));
            };
            messages.push(ChatMessage::new(role, content));
        }
        Ok(Example::Chat(messages))
    }
}

/// A task's mapping, tagged by task type (`"instruct"`, `"chat"`, `"dpo"`, `"grpo"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task_type", rename_all = "lowercase")]
pub enum Mapping {
    /// Instruction SFT.
    Instruct(InstructMapping),
    /// Conversation SFT.
    Chat(ChatMapping),
    /// Preference pairs.
    Dpo(DpoMapping),
    /// Prompts + reward functions (grpo.rs).
    Grpo(super::grpo::GrpoMapping),
}

impl Mapping {
    /// Validate the inner mapping.
    pub fn validate(&self) -> Result<()> {
        match self {
            Mapping::Instruct(m) => m.validate(),
            Mapping::Chat(m) => m.validate(),
            Mapping::Dpo(m) => m.validate(),
            Mapping::Grpo(m) => m.validate(),
        }
    }
}
