//! A step's tokens: `batch` rows of `seq` tokens, each row holding one sample (right-padded)
//! or several packed samples, with the per-token metadata the model needs (ids, HF-style
//! labels, RoPE positions, sample starts for the attention mask).
//!
//! Labels follow HF's convention: `labels[t]` is the token at `t` itself (or −100 to ignore
//! it) and the model shifts, so position `t` predicts `labels[t+1]`. The shift never crosses
//! a sample boundary: [`Batch::targets`] gives −100 wherever `t+1` starts another sample or
//! row. Padding tokens have id [`PAD_ID`], label −100, and form their own segment. Built by
//! the data pipeline (data/), read by the model (`llama.rs`).

use crate::error::{Error, Result};

/// Label value of a token that contributes no loss (HF / PyTorch `ignore_index`).
pub const IGNORE: i32 = -100;

/// Token id written into padding slots (never predicted: padding labels are [`IGNORE`]).
pub const PAD_ID: u32 = 0;

/// One tokenised sample: ids and HF-convention labels of the same length.
#[derive(Clone, Copy, Debug)]
pub struct Sample<'a> {
    /// Token ids.
    pub input_ids: &'a [u32],
    /// `labels[t]` = the id at `t`, or [`IGNORE`] for tokens not trained on (prompt).
    pub labels: &'a [i32],
}

/// The tokens of one step, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// `[batch*seq]` token ids.
    pub input_ids: Vec<u32>,
    /// `[batch*seq]` HF labels (unshifted; [`IGNORE`] = no loss).
    pub labels: Vec<i32>,
    /// `[batch*seq]` RoPE positions, restarting at 0 at each sample.
    pub positions: Vec<u32>,
    /// `[batch*seq]` in-row index of the first token of each token's sample.
    pub starts: Vec<u32>,
}

impl Batch {
    /// One sample per row, right-padded to `seq`; `vocab` bounds the ids and labels.
    pub fn unpacked(rows: &[Sample<'_>], seq: usize, vocab: usize) -> Result<Batch> {
        let packed: Vec<Vec<Sample<'_>>> = rows.iter().map(|s| vec![*s]).collect();
        Self::packed(&packed, seq, vocab)
    }

    /// Several samples per row, laid end to end and right-padded to `seq`; positions restart
    /// at each sample and attention never crosses samples.
    pub fn packed(rows: &[Vec<Sample<'_>>], seq: usize, vocab: usize) -> Result<Batch> {
        if rows.is_empty() || seq == 0 {
            return Err(Error::shape(
                "batch",
                format!(
                    "needs at least one row and seq > 0, got {} rows, seq {seq}",
                    rows.len()
                ),
            ));
        }
        let n = rows.len() * seq;
        let mut b = Batch {
            batch: rows.len(),
            seq,
            input_ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
            positions: Vec::with_capacity(n),
            starts: Vec::with_capacity(n),
        };
        for (r, samples) in rows.iter().enumerate() {
            let total: usize = samples.iter().map(|s| s.input_ids.len()).sum();
            if total > seq {
                return Err(Error::shape(
                    "batch",
                    format!("row {r}: {total} tokens do not fit seq {seq}"),
                ));
            }
            let mut at = 0usize;
            for (i, s) in samples.iter().enumerate() {
                if s.input_ids.is_empty() || s.input_ids.len() != s.labels.len() {
                    return Err(Error::shape(
                        "batch",
                        format!(
                            "row {r}, sample {i}: {} ids and {} labels (need equal, non-zero)",
                            s.input_ids.len(),
                            s.labels.len()
                        ),
                    ));
                }
                b.input_ids.extend_from_slice(s.input_ids);
                b.labels.extend_from_slice(s.labels);
                b.positions.extend(0..s.input_ids.len() as u32);
                b.starts
                    .extend(std::iter::repeat_n(at as u32, s.input_ids.len()));
                at += s.input_ids.len();
            }
            let pad = seq - at;
            b.input_ids.extend(std::iter::repeat_n(PAD_ID, pad));
            b.labels.extend(std::iter::repeat_n(IGNORE, pad));
            b.positions.extend(0..pad as u32);
            b.starts.extend(std::iter::repeat_n(at as u32, pad));
        }
        b.validate(vocab)?;
        Ok(b)
    }

    /// Number of tokens, `batch * seq`.
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// Check lengths, ids and labels against `vocab`, and that `starts` describe contiguous
    /// samples; errors name the row and column at fault.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let n = self.tokens();
        let lens = [
            ("input_ids", self.input_ids.len()),
            ("labels", self.labels.len()),
            ("positions", self.positions.len()),
            ("starts", self.starts.len()),
        ];
        for (name, len) in lens {
            if len != n {
                return Err(Error::shape(
                    "batch",
                    format!("{name} has {len} values, expected batch*seq = {n}"),
                ));
            }
        }
        for t in 0..n {
            let (r, c) = (t / self.seq, t % self.seq);
            let id = self.input_ids[t];
            if id as usize >= vocab {
                return Err(Error::shape(
                    "batch",
                    format!("row {r}, token {c}: id {id} is not below vocab {vocab}"),
                ));
            }
            let label = self.labels[t];
            if label != IGNORE && !(0..vocab as i64).contains(&(label as i64)) {
                return Err(Error::shape(
                    "batch",
                    format!(
                        "row {r}, token {c}: label {label} is neither -100 nor below vocab {vocab}"
                    ),
                ));
            }
            let s = self.starts[t] as usize;
            let ok = s <= c && (c == 0 || s == c || self.starts[t - 1] as usize == s);
            if !ok {
                return Err(Error::shape(
                    "batch",
                    format!("row {r}, token {c}: sample start {s} is not a contiguous segment"),
                ));
            }
        }
        Ok(())
    }

    /// Shifted targets `[batch*seq]`: `targets[t] = labels[t+1]` when `t+1` is in the same
    /// row and sample as `t`, else [`IGNORE`].
    pub fn targets(&self) -> Vec<i32> {
        let n = self.tokens();
        (0..n)
            .map(|t| {
                let next = t + 1;
                let same = next % self.seq != 0 && next < n && self.starts[next] == self.starts[t];
                if same {
                    self.labels[next]
                } else {
                    IGNORE
                }
            })
            .collect()
    }

    /// Number of tokens with a target (the denominator of the mean loss).
    pub fn num_targets(&self) -> usize {
        self.targets().iter().filter(|&&t| t != IGNORE).count()
    }

    /// Largest RoPE position used, plus one.
    pub fn max_position(&self) -> usize {
        self.positions
            .iter()
            .map(|&p| p as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// A benchmark batch: `batch` unpacked rows of `seq` pseudo-random ids, every position
    /// labelled. Ids come from splitmix64 (state starting at the golden-ratio constant,
    /// `id = next() % vocab`), the same sequence scripts/compare/torch_peft.py builds, so
    /// both engines see identical tokens.
    pub fn synthetic(batch: usize, seq: usize, vocab: usize) -> Result<Batch> {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut state = GOLDEN;
        let mut next = || {
            state = state.wrapping_add(GOLDEN);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let rows: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                (0..seq)
                    .map(|_| (next() % vocab.max(1) as u64) as u32)
                    .collect()
            })
            .collect();
        let labels: Vec<Vec<i32>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| i as i32).collect())
            .collect();
        let samples: Vec<Sample> = rows
            .iter()
            .zip(&labels)
            .map(|(i, l)| Sample {
                input_ids: i,
                labels: l,
            })
            .collect();
        Batch::unpacked(&samples, seq, vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacked_rows_are_right_padded() {
        let (a_ids, a_lab) = (vec![1u32, 2, 3], vec![IGNORE, 2, 3]);
        let (b_ids, b_lab) = (vec![4u32, 5, 6, 7, 8], vec![4, 5, 6, 7, 8]);
        let rows = [
            Sample {
                input_ids: &a_ids,
                labels: &a_lab,
            },
            Sample {
                input_ids: &b_ids,
                labels: &b_lab,
            },
        ];
        let b = Batch::unpacked(&rows, 5, 10).unwrap();
        assert_eq!(b.input_ids, vec![1, 2, 3, 0, 0, 4, 5, 6, 7, 8]);
        assert_eq!(b.labels, vec![-100, 2, 3, -100, -100, 4, 5, 6, 7, 8]);
        assert_eq!(b.positions, vec![0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(b.starts, vec![0, 0, 0, 3, 3, 0, 0, 0, 0, 0]);
        // row 0: 0->2, 1->3, 2 -> padding; row 1 never crosses into the next row
        assert_eq!(b.targets(), vec![2, 3, -100, -100, -100, 5, 6, 7, 8, -100]);
        assert_eq!(b.num_targets(), 6);
        assert_eq!(b.max_position(), 5);
    }

    #[test]
    fn packed_shift_stops_at_sample_boundaries() {
        let (a_ids, a_lab) = (vec![1u32, 2], vec![1, 2]);
        let (b_ids, b_lab) = (vec![3u32, 4, 5], vec![3, 4, 5]);
        let rows = vec![vec![
            Sample {
                input_ids: &a_ids,
                labels: &a_lab,
            },
            Sample {
                input_ids: &b_ids,
                labels: &b_lab,
            },
        ]];
        let b = Batch::packed(&rows, 6, 10).unwrap();
        assert_eq!(b.positions, vec![0, 1, 0, 1, 2, 0]);
        assert_eq!(b.starts, vec![0, 0, 2, 2, 2, 5]);
        assert_eq!(b.targets(), vec![2, -100, 4, 5, -100, -100]);
    }

    #[test]
    fn bad_rows_are_named() {
        let ids = vec![1u32, 60];
        let lab = vec![1, 2];
        let rows = [
            Sample {
                input_ids: &[1],
                labels: &[1],
            },
            Sample {
                input_ids: &ids,
                labels: &lab,
            },
        ];
        let err = Batch::unpacked(&rows, 4, 50).unwrap_err().to_string();
        assert!(
            err.contains("row 1, token 1") && err.contains("60"),
            "{err}"
        );
        let err = Batch::unpacked(&rows[1..], 1, 100).unwrap_err().to_string();
        assert!(err.contains("row 0") && err.contains("seq 1"), "{err}");
        let short = [Sample {
            input_ids: &ids,
            labels: &lab[..1],
        }];
        let err = Batch::unpacked(&short, 4, 100).unwrap_err().to_string();
        assert!(err.contains("row 0, sample 0"), "{err}");
        let bad_label = [Sample {
            input_ids: &[1],
            labels: &[-5],
        }];
        assert!(Batch::unpacked(&bad_label, 4, 100).is_err());
    }
}
