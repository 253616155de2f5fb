//! The GRPO column mapping (SPEC §1 `grpo`: prompts + reward functions) and its prompts.
//!
//! [`GrpoMapping`]: `field_prompt` (default `prompt`) holds either a text or a conversation
//! (a list of turns, each an object with `role`/`content` or `from`/`value`; roles `user` /
//! `human`, `assistant` / `gpt`, `system`); `field_system` an optional per-row system text
//! (else `system_prompt`); `rewards` the reward functions (reward.rs). The prompt is rendered
//! with the chat template (`chat_template`: unset = the tokenizer's own, else ChatML, as the
//! chat mapping, chat.rs `resolve_template`) with the generation prompt appended, or, when
//! `prompt_format` is set (placeholders `{prompt}`, `{system}`), as that plain text (text
//! prompts only). Columns that rewards read (`reference_match`'s `column`) are carried with
//! each prompt. Errors name the file, the 1-based row and the column.
//!
//! [`grpo_prompts`] makes the [`GrpoPrompt`]s of a file's records (rendered text and token
//! ids, in parallel, the first error in row order); eval/grpo.rs generates and scores them.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::resolve_template;
use super::mapping::{column, fill, text_of};
use super::reward::{compile_rewards, Reward, RewardSpec};
use super::tokenize::TextTokenizer;
use super::Record;
use crate::error::{Error, Result};
use crate::tokenizer::{render_chat_with_tokens, ChatMessage};

/// GRPO column mapping; see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoMapping {
    /// Column of the prompt (a text or a list of turns).
    #[serde(default = "default_prompt")]
    pub field_prompt: String,
    /// Column of an optional per-row system text.
    #[serde(default)]
    pub field_system: Option<String>,
    /// System text used when there is no `field_system` column (or it is empty).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// `None` / `"tokenizer_default"`: the tokenizer's template, else ChatML; `"chatml"`; or
    /// a Jinja template.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Plain-text prompt (`{prompt}`, `{system}`) instead of the chat template.
    #[serde(default)]
    pub prompt_format: Option<String>,
    /// The reward functions (1..=16).
    pub rewards: Vec<RewardSpec>,
}

fn default_prompt() -> String {
    "prompt".into()
}

/// One GRPO prompt, ready to generate from.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoPrompt {
    /// 0-based index of the source record.
    pub row: usize,
    /// The rendered prompt text.
    pub text: String,
    /// Its token ids (no BOS added; the template writes one if it wants it).
    pub ids: Vec<u32>,
    /// Per reward (in the mapping's order): the row's value of the column it reads.
    pub references: Vec<Option<String>>,
}

/// The prompt column's content: a text or chat turns.
enum PromptValue {
    Text(String),
    Turns(Vec<ChatMessage>),
}

impl GrpoMapping {
    /// Check the fields and compile the rewards.
    pub fn validate(&self) -> Result<()> {
        self.rewards().map(|_| ())
    }

    /// The compiled reward functions, in order.
    pub fn rewards(&self) -> Result<Vec<Reward>> {
        if self.field_prompt.trim().is_empty() {
            return Err(Error::config("grpo mapping", "field_prompt", "is required"));
        }
        if let Some(f) = &self.prompt_format {
            fill(f, &[("prompt", "p"), ("system", "s")], "prompt_format")?;
        }
        compile_rewards(&self.rewards, "grpo mapping")
    }

    fn prompt_value(&self, row: &Record, path: &Path, row_no: usize) -> Result<PromptValue> {
        let col = &self.field_prompt;
        let at = |msg: String| Error::format(path, format!("row {row_no}: column `{col}` {msg}"));
        match row.get(col) {
            None => Err(Error::format(
                path,
                format!("row {row_no}: missing column `{col}`"),
            )),
            Some(Value::Array(turns)) => {
                if turns.is_empty() {
                    return Err(at("is an empty conversation".into()));
                }
                let mut out = Vec::with_capacity(turns.len());
                for (k, turn) in turns.iter().enumerate() {
                    let Value::Object(t) = turn else {
                        return Err(at(format!("turn {}: not an object", k + 1)));
                    };
                    let get = |a: &str, b: &str| t.get(a).or_else(|| t.get(b));
                    let (Some(role), Some(content)) =
                        (get("role", "from"), get("content", "value"))
                    else {
                        return Err(at(format!(
                            "turn {}: needs `role` and `content` (or `from` and `value`)",
                            k + 1
                        )));
                    };
                    let name = format!("{col}[{}]", k + 1);
                    let role = text_of(role, path, row_no, &name)?;
                    let role = match role.as_str() {
                        "user" | "human" => "user",
                        "assistant" | "gpt" => "assistant",
                        "system" => "system",
                        r => {
                            return Err(at(format!(
                                "turn {}: unknown role `{r}` (expected user/human, assistant/gpt or system)",
                                k + 1
                            )))
                        }
                    };
                    let content = text_of(content, path, row_no, &name)?;
                    out.push(ChatMessage::new(role, content));
                }
                Ok(PromptValue::Turns(out))
            }
            Some(v) => {
                let t = text_of(v, path, row_no, col)?;
                if t.trim().is_empty() {
                    return Err(at("is empty".into()));
                }
                Ok(PromptValue::Text(t))
            }
        }
    }

    fn system(&self, row: &Record, path: &Path, row_no: usize) -> Result<String> {
        let s = match &self.field_system {
            Some(c) => column(row, path, row_no, c)?,
            None => String::new(),
        };
        Ok(if s.is_empty() {
            self.system_prompt.clone().unwrap_or_default()
        } else {
            s
        })
    }

    fn references(
        &self,
        rewards: &[Reward],
        row: &Record,
        path: &Path,
        row_no: usize,
    ) -> Result<Vec<Option<String>>> {
        rewards
            .iter()
            .map(|r| match r.column() {
                None => Ok(None),
                Some(c) => {
                    let v = column(row, path, row_no, c)?;
                    if v.trim().is_empty() {
                        return Err(Error::format(
                            path,
                            format!("row {row_no}: column `{c}` is empty (reference_match needs a reference)"),
                        ));
                    }
                    Ok(Some(v))
                }
            })
            .collect()
    }

    /// Check `row` (1-based `row_no`) of `path` without a tokenizer: the prompt, system and
    /// reference columns exist and hold what they should (task intake).
    pub fn check_row(&self, row: &Record, path: &Path, row_no: usize) -> Result<()> {
        let rewards = self.rewards()?;
        let p = self.prompt_value(row, path, row_no)?;
        if self.prompt_format.is_some() && matches!(p, PromptValue::Turns(_)) {
            return Err(self.turns_with_format(path, row_no));
        }
        self.system(row, path, row_no)?;
        self.references(&rewards, row, path, row_no).map(|_| ())
    }

    fn turns_with_format(&self, path: &Path, row_no: usize) -> Error {
        Error::format(
            path,
            format!(
                "row {row_no}: column `{}` is a conversation; prompt_format only renders text prompts (unset it to use the chat template)",
                self.field_prompt
            ),
        )
    }

    /// The prompt of `row` (1-based `row_no`) of `path`, rendered and tokenised with `tok`;
    /// `rewards` are this mapping's compiled rewards.
    pub fn prompt(
        &self,
        tok: &dyn TextTokenizer,
        rewards: &[Reward],
        row: &Record,
        path: &Path,
        row_no: usize,
    ) -> Result<GrpoPrompt> {
        let value = self.prompt_value(row, path, row_no)?;
        if self.prompt_format.is_some() && matches!(value, PromptValue::Turns(_)) {
            return Err(self.turns_with_format(path, row_no));
        }
        let system = self.system(row, path, row_no)?;
        let text = match (&self.prompt_format, value) {
            (Some(f), PromptValue::Text(p)) => {
                fill(f, &[("prompt", &p), ("system", &system)], "prompt_format")?
            }
            (Some(_), PromptValue::Turns(_)) => return Err(self.turns_with_format(path, row_no)),
            (None, value) => {
                let mut messages = Vec::new();
                if !system.is_empty() {
                    messages.push(ChatMessage::new("system", system));
                }
                match value {
                    PromptValue::Text(p) => messages.push(ChatMessage::new("user", p)),
                    PromptValue::Turns(t) => messages.extend(t),
                }
                let template = resolve_template(self.chat_template.as_deref(), tok)?;
                let text_of_id =
                    |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or_default();
                render_chat_with_tokens(
                    template,
                    &messages,
                    true,
                    &text_of_id(tok.bos_id()),
                    &text_of_id(tok.eos_id()),
                )?
            }
        };
        let ids = tok.encode(&text)?;
        if ids.is_empty() {
            return Err(Error::format(
                path,
                format!("row {row_no}: the rendered prompt has no token"),
            ));
        }
        Ok(GrpoPrompt {
            row: row_no - 1,
            references: self.references(rewards, row, path, row_no)?,
            text,
            ids,
        })
    }
}

/// The prompts of every record of `path` (in parallel; the first error in row order, so the
/// result does not depend on the thread count).
pub fn grpo_prompts(
    tok: &dyn TextTokenizer,
    mapping: &GrpoMapping,
    records: &[Record],
    path: &Path,
) -> Result<Vec<GrpoPrompt>> {
    let rewards = mapping.rewards()?;
    records
        .par_iter()
        .enumerate()
        .map(|(i, row)| mapping.prompt(tok, &rewards, row, path, i + 1))
        .collect::<Vec<Result<GrpoPrompt>>>()
        .into_iter()
        .collect()
}
