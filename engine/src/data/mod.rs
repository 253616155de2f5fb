//! The dataset side of training and evaluation: files → records → examples → token ids with
//! labels → packed or padded [`Batch`](crate::model::Batch)es, plus the validator's split.
//!
//! Flow: formats.rs reads JSON / JSONL / CSV rows (parquet.rs: Parquet) into [`Record`]s; mapping.rs applies a
//! task's column mapping (SPEC §1) to make prompt/completion text or chat turns; chat.rs
//! finds the trained spans of a rendered conversation; grpo.rs and reward.rs hold GRPO's
//! prompts and reward functions; tokenize.rs turns examples into ids
//! and −100-masked labels (and DPO triples); pack.rs lays samples into rows; split.rs makes
//! the deterministic train/test split (SPEC §2) with rng.rs, numpy's `default_rng`
//! reproduced bit for bit.

pub mod chat; // CHATML_TEMPLATE, resolve_template, chat_segments (trained spans of a chat)
pub mod dpo_mapping; // DpoMapping: preference pairs, text or conversation prompts (chatml.intel)
pub mod formats; // Format, read_records: JSON array, JSONL, CSV, Parquet
pub mod grpo; // GrpoMapping, GrpoPrompt, grpo_prompts: GRPO prompts (+ reward columns)
pub mod mapping; // InstructMapping, ChatMapping, Mapping, Example, DpoExample (+ DpoMapping re-export)
pub mod pack; // pack_rows, packed_batches, unpacked_batches, PackedBatch
pub mod parquet; // read_parquet: Parquet rows -> records (record API, no arrow)
pub mod reward; // RewardSpec, Reward, compile_rewards: declarative, bounded GRPO rewards
pub mod rng; // Pcg64, permutation: numpy default_rng(seed) bit for bit
pub mod split; // split_indices, split_rows, test_size, sample_indices, Split
pub mod tokenize; // TextTokenizer, load_sft, tokenize_sft, tokenize_dpo, TokenizedSample, TokenizeStats

/// One dataset row: column name → JSON value.
pub type Record = serde_json::Map<String, serde_json::Value>;

pub use formats::{read_records, Format};
pub use grpo::{grpo_prompts, GrpoMapping, GrpoPrompt};
pub use mapping::{ChatMapping, DpoMapping, Example, InstructMapping, Mapping};
pub use pack::{packed_batches, unpacked_batches, PackedBatch};
pub use reward::{Reward, RewardSpec};
pub use split::{split_indices, split_rows, Split};
pub use tokenize::{
    load_sft, tokenize_dpo, tokenize_sft, DpoTokens, TextTokenizer, TokenizeOptions, TokenizeStats,
    TokenizedSample, Truncation,
};
