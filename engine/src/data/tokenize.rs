//! Examples to token ids with HF-convention labels: −100 on every prompt token, the id itself
//! on completion tokens (instruct: the output then EOS; chat: each assistant turn's content
//! and its end token, see chat.rs), plus DPO's (prompt, chosen, rejected) ids.
//!
//! Instruct text is tokenised as axolotl does: `encode(prompt)` masked, then
//! `encode(completion) + [eos]` trained, concatenated (no BOS is added; a tokenizer that
//! wants one puts it in its template). Chat segments are encoded one by one and
//! concatenated.
//!
//! Truncation policy ([`Truncation`]): samples longer than `seq_len` keep their head and lose
//! their tail (`TruncateTail`, the default: the prompt survives, the completion's tail is
//! cut, EOS included), or are dropped whole (`Drop`, axolotl's default). A sample left with
//! no label token (empty completion, or a prompt filling all of `seq_len`) is dropped and
//! counted in [`TokenizeStats`]. The results feed pack.rs; the mappings come from mapping.rs.

use std::path::Path;

use rayon::prelude::*;

use super::chat::{chat_segments, resolve_template};
use super::mapping::{DpoMapping, Example, Mapping};
use super::Record;
use crate::error::{Error, ErrorKind, Result};
use crate::model::batch::IGNORE;
use crate::tokenizer::Tokenizer;

/// What the data pipeline needs from a tokenizer (implemented by [`Tokenizer`]; tests use
/// small in-code tokenizers).
pub trait TextTokenizer: Sync {
    /// Ids of `text`, special tokens matched whole, no BOS/EOS added.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// End-of-sequence id.
    fn eos_id(&self) -> Option<u32>;
    /// Beginning-of-sequence id.
    fn bos_id(&self) -> Option<u32>;
    /// The text of token `id`.
    fn token_text(&self, id: u32) -> Option<String>;
    /// The tokenizer's own Jinja chat template.
    fn chat_template(&self) -> Option<&str>;
    /// The text of `ids` (generated completions). The default concatenates
    /// [`TextTokenizer::token_text`], which suits tokenizers whose token texts are plain
    /// text; [`Tokenizer`] decodes its byte-level BPE.
    fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.token_text(i).ok_or_else(|| {
                    Error::from(ErrorKind::Tokenizer(format!("token id {i} has no text")))
                })
            })
            .collect()
    }
}

impl TextTokenizer for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text)
    }
    fn eos_id(&self) -> Option<u32> {
        Tokenizer::eos_id(self)
    }
    fn bos_id(&self) -> Option<u32> {
        Tokenizer::bos_id(self)
    }
    fn token_text(&self, id: u32) -> Option<String> {
        self.id_to_token(id)
    }
    fn chat_template(&self) -> Option<&str> {
        Tokenizer::chat_template(self)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Tokenizer::decode(self, ids)
    }
}

/// What to do with a sample longer than `seq_len`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Truncation {
    /// Keep the first `seq_len` tokens (prompt head kept, completion tail cut).
    #[default]
    TruncateTail,
    /// Drop the sample.
    Drop,
}

/// One tokenised SFT sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedSample {
    /// 0-based index of the source record.
    pub row: usize,
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// HF labels: the id, or −100 for prompt tokens.
    pub labels: Vec<i32>,
}

impl TokenizedSample {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Number of trained (non −100) labels.
    pub fn num_labels(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
    /// The batch.rs view of this sample.
    pub fn as_sample(&self) -> crate::model::batch::Sample<'_> {
        crate::model::batch::Sample {
            input_ids: &self.input_ids,
            labels: &self.labels,
        }
    }
}

/// Counts from tokenising a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenizeStats {
    /// Records read.
    pub rows: usize,
    /// Samples kept.
    pub kept: usize,
    /// Samples dropped because no label token remained.
    pub dropped_no_labels: usize,
    /// Samples dropped for being longer than `seq_len` (`Truncation::Drop`).
    pub dropped_too_long: usize,
    /// Kept samples that were cut to `seq_len`.
    pub truncated: usize,
    /// Tokens in kept samples.
    pub tokens: usize,
    /// Label tokens in kept samples.
    pub label_tokens: usize,
}

/// Options for SFT tokenisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Maximum tokens per sample.
    pub seq_len: usize,
    /// Over-long samples policy.
    pub truncation: Truncation,
}

/// The ids and labels of one example, untruncated.
pub fn tokenize_example(
    tok: &dyn TextTokenizer,
    example: &Example,
    chat_template: Option<&str>,
) -> Result<(Vec<u32>, Vec<i32>)> {
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut push = |piece: &[u32], trains: bool| {
        ids.extend_from_slice(piece);
        labels.extend(
            piece
                .iter()
                .map(|&i| if trains { i as i32 } else { IGNORE }),
        );
    };
    match example {
        Example::Text { prompt, completion } => {
            let eos = tok.eos_id().ok_or_else(|| {
                Error::from(ErrorKind::Tokenizer(
                    "the tokenizer has no eos id; instruct completions end with eos".into(),
                ))
            })?;
            if !prompt.is_empty() {
                push(&tok.encode(prompt)?, false);
            }
            let mut c = tok.encode(completion)?;
            c.push(eos);
            push(&c, true);
        }
        Example::Chat(messages) => {
            let template = resolve_template(chat_template, tok)?;
            for (text, trains) in chat_segments(tok, template, messages)? {
                push(&tok.encode(&text)?, trains);
            }
        }
    }
    Ok((ids, labels))
}

/// Tokenise every record of `path` for an SFT `mapping` (instruct or chat). Errors name the
/// file, row and column; rows without label tokens are dropped and counted.
pub fn tokenize_sft(
    tok: &dyn TextTokenizer,
    mapping: &Mapping,
    records: &[Record],
    path: &Path,
    opts: TokenizeOptions,
) -> Result<(Vec<TokenizedSample>, TokenizeStats)> {
    mapping.validate()?;
    if opts.seq_len == 0 {
        return Err(Error::config("tokenize options", "seq_len", "must be > 0"));
    }
    // rows are independent: tokenise in parallel, then count in row order (the first error
    // in row order is returned, so results do not depend on the thread count)
    let outcomes: Vec<Result<Outcome>> = records
        .par_iter()
        .enumerate()
        .map(|(i, row)| tokenize_row(tok, mapping, row, i, path, opts))
        .collect();
    let mut stats = TokenizeStats {
        rows: records.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(records.len());
    for outcome in outcomes {
        match outcome? {
            Outcome::TooLong => stats.dropped_too_long += 1,
            Outcome::NoLabels => stats.dropped_no_labels += 1,
            Outcome::Kept(s, cut) => {
                stats.kept += 1;
                stats.truncated += cut as usize;
                stats.tokens += s.len();
                stats.label_tokens += s.num_labels();
                out.push(s);
            }
        }
    }
    Ok((out, stats))
}

/// What became of one row.
enum Outcome {
    /// Kept, and whether it was truncated.
    Kept(TokenizedSample, bool),
    /// Dropped: longer than `seq_len` under `Truncation::Drop`.
    TooLong,
    /// Dropped: no label token.
    NoLabels,
}

fn tokenize_row(
    tok: &dyn TextTokenizer,
    mapping: &Mapping,
    row: &Record,
    i: usize,
    path: &Path,
    opts: TokenizeOptions,
) -> Result<Outcome> {
    let (example, template) = match mapping {
        Mapping::Instruct(m) => (m.example(row, path, i + 1)?, None),
        Mapping::Chat(m) => (m.example(row, path, i + 1)?, m.chat_template.as_deref()),
        Mapping::Dpo(_) => {
            return Err(Error::config(
                "column mapping",
                "task_type",
                "dpo rows are tokenised with tokenize_dpo",
            ))
        }
        Mapping::Grpo(_) => {
            return Err(Error::config(
                "column mapping",
                "task_type",
                "grpo rows are prompts (data::grpo_prompts), not SFT samples",
            ))
        }
    };
    let (mut input_ids, mut labels) = tokenize_example(tok, &example, template)?;
    let cut = input_ids.len() > opts.seq_len;
    if cut {
        if opts.truncation == Truncation::Drop {
            return Ok(Outcome::TooLong);
        }
        input_ids.truncate(opts.seq_len);
        labels.truncate(opts.seq_len);
    }
    let s = TokenizedSample {
        row: i,
        input_ids,
        labels,
    };
    if s.num_labels() == 0 {
        return Ok(Outcome::NoLabels);
    }
    Ok(Outcome::Kept(s, cut))
}

/// Read `path` (formats.rs) and tokenise it for an SFT `mapping`: [`tokenize_sft`] on
/// [`read_records`](super::formats::read_records).
pub fn load_sft(
    tok: &dyn TextTokenizer,
    mapping: &Mapping,
    path: &Path,
    opts: TokenizeOptions,
) -> Result<(Vec<TokenizedSample>, TokenizeStats)> {
    mapping.validate()?;
    let records = super::formats::read_records(path)?;
    tokenize_sft(tok, mapping, &records, path, opts)
}

/// One tokenised preference pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpoTokens {
    /// 0-based index of the source record.
    pub row: usize,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Chosen completion ids (ending with the end token).
    pub chosen: Vec<u32>,
    /// Rejected completion ids (ending with the end token).
    pub rejected: Vec<u32>,
}

/// Tokenise DPO records (in parallel): prompt, chosen and rejected ids per row (no truncation: the DPO
/// trainer/evaluator decides how to fit them).
pub fn tokenize_dpo(
    tok: &dyn TextTokenizer,
    mapping: &DpoMapping,
    records: &[Record],
    path: &Path,
) -> Result<Vec<DpoTokens>> {
    mapping.validate()?;
    records
        .par_iter()
        .enumerate()
        .map(|(i, row)| {
            let ex = mapping.example(row, path, i + 1)?;
            let mut chosen = tok.encode(&ex.chosen)?;
            let mut rejected = tok.encode(&ex.rejected)?;
            if ex.append_eos {
                if let Some(eos) = tok.eos_id() {
                    for v in [&mut chosen, &mut rejected] {
                        if v.last() != Some(&eos) {
                            v.push(eos);
                        }
                    }
                }
            }
            Ok(DpoTokens {
                row: i,
                prompt: tok.encode(&ex.prompt)?,
                chosen,
                rejected,
            })
        })
        .collect::<Vec<Result<DpoTokens>>>()
        .into_iter()
        .collect() // the first error in row order, whatever the thread count
}
