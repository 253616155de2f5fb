//! Laying tokenised samples into the rows of [`Batch`]es: packed (several samples per
//! fixed-length row) or unpacked (one sample per right-padded row).
//!
//! Packing is greedy first-fit in a seeded order: the sample indices are shuffled with
//! numpy's PCG64 (rng.rs, seeded by `seed`; no global state), then each sample goes into the
//! first row with room for it, a new row being opened when none has. No sample is split
//! across rows. [`Batch::packed`] (model/batch.rs) lays each row out: positions restart at
//! every sample, `starts` give each token its sample's first column (the attention mask),
//! and the label shift never crosses samples. Same samples + same seed → same rows.
//! [`PackedBatch::samples`] records which sample sits where, so per-sample losses can be
//! traced back to dataset rows (tokenize.rs's `TokenizedSample::row`).

use super::rng::Pcg64;
use super::tokenize::TokenizedSample;
use crate::error::{Error, Result};
use crate::model::batch::{Batch, Sample};

/// A batch plus the indices (into the sample slice given) of the samples in each row.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBatch {
    /// The tokens.
    pub batch: Batch,
    /// `samples[r]` = the samples laid end to end in row `r`, in order.
    pub samples: Vec<Vec<usize>>,
}

/// Assign samples to rows of `seq_len` tokens: greedy first-fit over the sample order
/// shuffled by `seed` (`None`: the given order). Returns each row's sample indices.
/// A sample longer than `seq_len` or empty is an error naming it.
pub fn pack_rows(
    samples: &[TokenizedSample],
    seq_len: usize,
    seed: Option<u64>,
) -> Result<Vec<Vec<usize>>> {
    let order = sample_order(samples.len(), seed);
    let mut rows: Vec<Vec<usize>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    for i in order {
        let n = samples[i].len();
        if n == 0 || n > seq_len {
            return Err(Error::shape(
                "pack",
                format!(
                    "sample {i} (row {}) has {n} tokens; need 1..={seq_len}",
                    samples[i].row + 1
                ),
            ));
        }
        match free.iter().position(|&f| f >= n) {
            Some(r) => {
                rows[r].push(i);
                free[r] -= n;
            }
            None => {
                rows.push(vec![i]);
                free.push(seq_len - n);
            }
        }
    }
    Ok(rows)
}

/// Packed batches of `batch_size` rows of `seq_len` tokens (the last batch may have fewer
/// rows); `vocab` bounds ids for [`Batch::validate`].
pub fn packed_batches(
    samples: &[TokenizedSample],
    seq_len: usize,
    batch_size: usize,
    seed: Option<u64>,
    vocab: usize,
) -> Result<Vec<PackedBatch>> {
    check_batch_size(batch_size)?;
    let rows = pack_rows(samples, seq_len, seed)?;
    rows.chunks(batch_size)
        .map(|chunk| {
            let views: Vec<Vec<Sample<'_>>> = chunk
                .iter()
                .map(|r| r.iter().map(|&i| samples[i].as_sample()).collect())
                .collect();
            Ok(PackedBatch {
                batch: Batch::packed(&views, seq_len, vocab)?,
                samples: chunk.to_vec(),
            })
        })
        .collect()
}

/// Unpacked batches: one sample per row, right-padded to the longest sample of its batch
/// (at most `seq_len`), in the order given or shuffled by `seed`.
pub fn unpacked_batches(
    samples: &[TokenizedSample],
    seq_len: usize,
    batch_size: usize,
    seed: Option<u64>,
    vocab: usize,
) -> Result<Vec<PackedBatch>> {
    check_batch_size(batch_size)?;
    let order = sample_order(samples.len(), seed);
    order
        .chunks(batch_size)
        .map(|chunk| {
            let longest = chunk.iter().map(|&i| samples[i].len()).max().unwrap_or(0);
            if longest > seq_len {
                return Err(Error::shape(
                    "pack",
                    format!("a sample has {longest} tokens, more than seq_len {seq_len}"),
                ));
            }
            let views: Vec<Sample<'_>> = chunk.iter().map(|&i| samples[i].as_sample()).collect();
            Ok(PackedBatch {
                batch: Batch::unpacked(&views, longest.max(1), vocab)?,
                samples: chunk.iter().map(|&i| vec![i]).collect(),
            })
        })
        .collect()
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::config("pack options", "batch_size", "must be > 0"));
    }
    Ok(())
}

/// `0..n`, shuffled by numpy's `default_rng(seed)` when a seed is given.
fn sample_order(n: usize, seed: Option<u64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(s) = seed {
        Pcg64::new(s).shuffle(&mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::IGNORE;

    /// Random samples with distinct ids per (sample, position) so every token is traceable.
    fn samples(n: usize, max_len: usize, seed: u64) -> Vec<TokenizedSample> {
        let mut rng = Pcg64::new(seed);
        (0..n)
            .map(|i| {
                let len = 1 + rng.interval(max_len as u64 - 1) as usize;
                let prompt = rng.interval(len as u64 - 1) as usize;
                let ids: Vec<u32> = (0..len).map(|t| (i * 1000 + t) as u32).collect();
                let labels = ids
                    .iter()
                    .enumerate()
                    .map(|(t, &id)| if t < prompt { IGNORE } else { id as i32 })
                    .collect();
                TokenizedSample {
                    row: i,
                    input_ids: ids,
                    labels,
                }
            })
            .collect()
    }

    #[test]
    fn packing_keeps_every_token_once_and_restarts_positions() {
        let (seq, vocab) = (64, 1_000_000);
        let s = samples(200, 40, 3);
        let batches = packed_batches(&s, seq, 4, Some(42), vocab).unwrap();
        let mut seen = vec![0usize; s.len()];
        for pb in &batches {
            let b = &pb.batch;
            assert_eq!(b.seq, seq);
            assert_eq!(b.batch, pb.samples.len());
            for (r, row) in pb.samples.iter().enumerate() {
                let mut at = 0usize;
                for &i in row {
                    seen[i] += 1;
                    for t in 0..s[i].len() {
                        let k = r * seq + at + t;
                        assert_eq!(b.input_ids[k], s[i].input_ids[t]);
                        assert_eq!(b.labels[k], s[i].labels[t]);
                        assert_eq!(b.positions[k] as usize, t);
                        assert_eq!(b.starts[k] as usize, at);
                    }
                    at += s[i].len();
                }
                assert!(at <= seq, "a sample crosses the row end");
                for k in r * seq + at..(r + 1) * seq {
                    assert_eq!(b.labels[k], IGNORE);
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "each sample exactly once");
        let total: usize = s.iter().map(|x| x.len()).sum();
        let rows: usize = batches.iter().map(|b| b.batch.batch).sum();
        assert!(rows * seq >= total && rows < s.len(), "packing saves rows");
    }

    #[test]
    fn packing_is_deterministic_by_seed() {
        let s = samples(100, 30, 9);
        let a = pack_rows(&s, 48, Some(1)).unwrap();
        assert_eq!(a, pack_rows(&s, 48, Some(1)).unwrap());
        assert_ne!(a, pack_rows(&s, 48, Some(2)).unwrap());
        let unshuffled = pack_rows(&s, 48, None).unwrap();
        assert_eq!(unshuffled[0][0], 0);
    }

    #[test]
    fn unpacked_rows_hold_one_sample_each() {
        let s = samples(10, 20, 5);
        let bs = unpacked_batches(&s, 20, 3, None, 1_000_000).unwrap();
        assert_eq!(bs.len(), 4);
        for (n, pb) in bs.iter().enumerate() {
            let longest = pb.samples.iter().map(|r| s[r[0]].len()).max().unwrap();
            assert_eq!(pb.batch.seq, longest);
            for (r, row) in pb.samples.iter().enumerate() {
                assert_eq!(row, &vec![n * 3 + r]);
                let i = row[0];
                let k = r * pb.batch.seq;
                assert_eq!(&pb.batch.input_ids[k..k + s[i].len()], &s[i].input_ids[..]);
            }
        }
    }

    #[test]
    fn oversized_samples_and_zero_batch_are_rejected() {
        let s = samples(5, 30, 1);
        let longest = s.iter().map(|x| x.len()).max().unwrap();
        let err = pack_rows(&s, longest - 1, None).unwrap_err().to_string();
        assert!(err.contains("tokens"), "{err}");
        assert!(packed_batches(&s, 64, 0, None, 1_000_000).is_err());
        assert!(unpacked_batches(&s, longest - 1, 2, None, 1_000_000).is_err());
    }
}
