//! The validator's deterministic train/test split (SPEC §2) and seeded row sampling.
//!
//! test = min(int(0.1·N), 400) rows, at least 1; the rest is train. The rows are ordered by
//! `np.random.default_rng(seed).permutation(N)` (rng.rs reproduces numpy bit for bit) and the
//! first `test` indices form the test split, the rest the train split, both in permutation
//! order: exactly what the live network gets from Hugging Face `datasets`'
//! `train_test_split(test_size=test, shuffle=True, seed=42)` (G.O.D
//! `validator/tasks/task_prep.py`). Datasets under 2,000 rows, which the live network
//! rejects, are allowed with [`Split::small`] set. [`sample_indices`] is `datasets`'
//! `shuffle(seed).select(range(k))`, as used for the synthetic eval set.

use super::rng::permutation;
use crate::error::{Error, Result};

/// Rows below which the live network rejects a dataset.
pub const MIN_ROWS_LIVE: usize = 2_000;
/// Largest test split.
pub const MAX_TEST_ROWS: usize = 400;
/// The live network's split seed.
pub const DEFAULT_SEED: u64 = 42;

/// Row indices of the two splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Train rows (indices into the dataset), in permutation order.
    pub train: Vec<usize>,
    /// Test rows, in permutation order.
    pub test: Vec<usize>,
    /// True when the dataset has fewer than [`MIN_ROWS_LIVE`] rows (warn the user).
    pub small: bool,
}

/// The test split size for `n` rows: min(int(0.1·n), 400), at least 1.
pub fn test_size(n: usize) -> usize {
    (n / 10).clamp(1, MAX_TEST_ROWS)
}

/// Split `n` rows with `seed`; needs at least 2 rows (one per split).
pub fn split_indices(n: usize, seed: u64) -> Result<Split> {
    if n < 2 {
        return Err(Error::config(
            "dataset",
            "rows",
            format!("{n} rows cannot be split: need at least 2 (1 train, 1 test)"),
        ));
    }
    let perm = permutation(n, seed);
    let k = test_size(n);
    Ok(Split {
        test: perm[..k].to_vec(),
        train: perm[k..].to_vec(),
        small: n < MIN_ROWS_LIVE,
    })
}

/// Split `rows` into (train, test) clones, plus the small-dataset flag.
pub fn split_rows<T: Clone>(rows: &[T], seed: u64) -> Result<(Vec<T>, Vec<T>, bool)> {
    let s = split_indices(rows.len(), seed)?;
    let pick = |ix: &[usize]| ix.iter().map(|&i| rows[i].clone()).collect();
    Ok((pick(&s.train), pick(&s.test), s.small))
}

/// The first `min(k, n)` indices of `default_rng(seed).permutation(n)`.
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut p = permutation(n, seed);
    p.truncate(k.min(n));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_rule() {
        for (n, want) in [
            (2, 1),
            (9, 1),
            (10, 1),
            (25, 2),
            (999, 99),
            (4000, 400),
            (10_000, 400),
        ] {
            assert_eq!(test_size(n), want, "n = {n}");
            let s = split_indices(n, DEFAULT_SEED).unwrap();
            assert_eq!(s.test.len(), want);
            assert_eq!(s.train.len(), n - want);
            assert_eq!(s.small, n < 2000);
            let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "a partition of the rows");
        }
        assert!(split_indices(1, 42).is_err());
        assert!(split_indices(0, 42).is_err());
    }

    #[test]
    fn split_is_deterministic_and_matches_numpy() {
        let a = split_indices(999, 42).unwrap();
        assert_eq!(a, split_indices(999, 42).unwrap());
        assert_ne!(a.test, split_indices(999, 43).unwrap().test);
        // np.random.default_rng(42).permutation(10): [5 6 0 7 3 2 4 9 1 8]
        let s = split_indices(10, 42).unwrap();
        assert_eq!(s.test, vec![5]);
        assert_eq!(s.train, vec![6, 0, 7, 3, 2, 4, 9, 1, 8]);
        let rows: Vec<char> = "abcdefghij".chars().collect();
        let (train, test, small) = split_rows(&rows, 42).unwrap();
        assert_eq!(test, vec!['f']);
        assert_eq!(train.len(), 9);
        assert!(small);
        assert_eq!(sample_indices(10, 3, 42), vec![5, 6, 0]);
        assert_eq!(sample_indices(3, 10, 42).len(), 3);
    }
}
