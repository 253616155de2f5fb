//! Elementwise and row-wise ops of the CPU backend: `axpy`, `scale`, `add_bias`,
//! `sum_squares`, `embedding`, `copy_rows` (the KV cache's write) and `dropout` (with its
//! counter-based RNG, [`dropout_keep`]).
//!
//! Each op splits its buffer into fixed-size chunks (or rows) handled by rayon; chunk
//! boundaries depend on the length only, so results are the same for any thread count.
//! Lengths are checked by the caller (`mod.rs`).

use rayon::prelude::*;

use super::Real;
use crate::error::{Error, Result};

/// Elements per rayon work item for elementwise ops.
const CHUNK: usize = 1 << 14;
/// Elements per partial sum of `sum_squares` (each summed in f64, then added in order).
const SUM_CHUNK: usize = 4096;

/// `x[i] += alpha · y[i]`.
pub(crate) fn axpy<T: Real>(x: &mut [T], alpha: T, y: &[T]) {
    x.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(x, y)| {
            for (x, &y) in x.iter_mut().zip(y) {
                *x += alpha * y;
            }
        });
}

/// `x[i] *= alpha`.
pub(crate) fn scale<T: Real>(x: &mut [T], alpha: T) {
    x.par_chunks_mut(CHUNK).for_each(|x| {
        for x in x {
            *x *= alpha;
        }
    });
}

/// `x[t, j] += bias[j]` for every row `t` of width `d`.
pub(crate) fn add_bias<T: Real>(x: &mut [T], bias: &[T], d: usize) {
    if d == 0 {
        return;
    }
    x.par_chunks_mut(d).for_each(|row| {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    });
}

/// `Σ x[i]²` in f64: chunks of [`SUM_CHUNK`] values are each summed in f64 in index order,
/// then the chunk sums are added in chunk order.
pub(crate) fn sum_squares<T: Real>(x: &[T]) -> f64 {
    let partial: Vec<f64> = x
        .par_chunks(SUM_CHUNK)
        .map(|c| {
            c.iter()
                .map(|&v| {
                    let v = v.to_f64();
                    v * v
                })
                .sum::<f64>()
        })
        .collect();
    partial.iter().sum()
}

/// `out[t, :] = table[ids[t], :]` for rows of width `h`; errors on an id past the table.
pub(crate) fn embedding<T: Real>(out: &mut [T], table: &[T], ids: &[u32], h: usize) -> Result<()> {
    let vocab = table.len() / h;
    if let Some((t, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::shape(
            "embedding",
            format!("token {t} has id {id}, past the table's {vocab} rows"),
        ));
    }
    out.par_chunks_mut(h)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table[id * h..(id + 1) * h]);
        });
    Ok(())
}

/// `dst[rows[t], :] = src[t, :]` for rows of width `width` (checked by the caller: distinct
/// rows inside dst). A copy, so the order of the rows does not matter.
pub(crate) fn copy_rows<T: Real>(dst: &mut [T], src: &[T], rows: &[u32], width: usize) {
    for (s, &r) in src.chunks_exact(width).zip(rows) {
        let r = r as usize;
        dst[r * width..(r + 1) * width].copy_from_slice(s);
    }
}

/// The splitmix64 output function (Steele, Lea, Flood 2014): a bijective mix of 64 bits.
#[inline(always)]
fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The dropout threshold for keep probability `1 - p`: an element is kept when the top 24
/// bits of its hash, `u24`, satisfy `u24 >= threshold`, i.e. `u24 / 2^24 >= p` exactly (a
/// 24-bit `p · 2^24` is exact in f64).
pub(crate) fn dropout_threshold(p: f32) -> u32 {
    (f64::from(p) * 16_777_216.0).ceil() as u32
}

/// The dropout mask bit of element `i` under `key`, for drop probability `p`: the `i`-th
/// output of a splitmix64 stream seeded with `key`,
/// `h = mix(key + (i + 1) · 0x9E3779B97F4A7C15)` (wrapping u64 arithmetic, `mix` the
/// splitmix64 finaliser: `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
/// z *= 0x94D049BB133111EB; z ^= z >> 31`), gives `u = (h >> 40) / 2^24` uniform in [0, 1);
/// the element is kept when `u >= p`. Integer-only, so CUDA reproduces it bit for bit.
pub fn dropout_keep(key: u64, i: u64, p: f32) -> bool {
    keep_with_threshold(key, i, dropout_threshold(p))
}

#[inline(always)]
fn keep_with_threshold(key: u64, i: u64, threshold: u32) -> bool {
    let h = splitmix64_mix(key.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    ((h >> 40) as u32) >= threshold
}

/// Inverted dropout: `out[i] = x[i] · keep(key, i) · (1 / (1 − p))`, the scale computed in
/// f32 then cast to `T`; `p = 0` copies, `p = 1` zeroes. Errors on `p` outside [0, 1].
pub(crate) fn dropout<T: Real>(out: &mut [T], x: &[T], p: f32, key: u64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::shape(
            "dropout",
            format!("probability {p} is outside [0, 1]"),
        ));
    }
    if p == 0.0 {
        out.copy_from_slice(x);
        return Ok(());
    }
    if p == 1.0 {
        out.fill(T::ZERO);
        return Ok(());
    }
    let threshold = dropout_threshold(p);
    let s = T::from_f32(1.0 / (1.0 - p));
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (out, x))| {
            let base = (c * CHUNK) as u64;
            for (j, (o, &v)) in out.iter_mut().zip(x).enumerate() {
                *o = if keep_with_threshold(key, base + j as u64, threshold) {
                    v * s
                } else {
                    T::ZERO
                };
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{in_pool, randn_f32, same_bits, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    #[test]
    fn axpy_scale_bias() {
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(1);
        let x0 = randn_f32(&mut rng, 40_000);
        let y = randn_f32(&mut rng, 40_000);
        let mut x = x0.clone();
        be.axpy(&mut x, 0.5, &y).unwrap();
        for i in 0..x.len() {
            assert_eq!(x[i], x0[i] + 0.5 * y[i]);
        }
        be.scale(&mut x, -2.0).unwrap();
        for i in 0..x.len() {
            assert_eq!(x[i], (x0[i] + 0.5 * y[i]) * -2.0);
        }
        let mut z = vec![1.0f32; 6];
        be.add_bias(&mut z, &vec![1.0, 2.0, 3.0], 2, 3).unwrap();
        assert_eq!(z, vec![2.0, 3.0, 4.0, 2.0, 3.0, 4.0]);
        assert!(be.add_bias(&mut z, &vec![1.0, 2.0], 2, 3).is_err());
        assert!(be.axpy(&mut z, 1.0, &vec![1.0]).is_err());
    }

    #[test]
    fn sum_squares_f64_and_thread_independent() {
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(2);
        let x = randn_f32(&mut rng, 3 * SUM_CHUNK + 17);
        let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let s1 = in_pool(1, || be.sum_squares(&x).unwrap());
        let s2 = in_pool(2, || be.sum_squares(&x).unwrap());
        assert_eq!(s1.to_bits(), s2.to_bits());
        assert!((s1 - want).abs() < 1e-9 * want);
    }

    #[test]
    fn embedding_gathers_rows_and_checks_ids() {
        let be = CpuBackend::<f32>::new();
        let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // [4, 3]
        let mut out = vec![0.0f32; 6];
        be.embedding(&mut out, &table, &[3, 1], 3).unwrap();
        assert_eq!(out, vec![9.0, 10.0, 11.0, 3.0, 4.0, 5.0]);
        let err = be.embedding(&mut out, &table, &[4, 0], 3).unwrap_err();
        assert!(err.to_string().contains("embedding"), "{err}");
        assert!(be.embedding(&mut out, &table, &[0], 3).is_err());
    }

    #[test]
    fn dropout_statistics_and_determinism() {
        let be = CpuBackend::<f32>::new();
        let n = 200_000;
        let x = vec![1.0f32; n];
        let mut a = vec![0.0f32; n];
        let p = 0.1f32;
        in_pool(1, || be.dropout(&mut a, &x, p, 42).unwrap());
        let mut b = vec![0.0f32; n];
        in_pool(2, || be.dropout(&mut b, &x, p, 42).unwrap());
        assert!(same_bits(&a, &b));
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        let rate = 1.0 - kept as f64 / n as f64;
        // Binomial std of the drop rate at n = 2e5 is ~6.7e-4.
        assert!((rate - 0.1).abs() < 4e-3, "drop rate {rate}");
        let s = 1.0f32 / (1.0 - p);
        for (i, &v) in a.iter().enumerate() {
            assert_eq!(v != 0.0, dropout_keep(42, i as u64, p));
            assert!(v == 0.0 || v == s);
        }
        // The mean is preserved in expectation.
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 5e-3, "mean {mean}");
        // Another key gives another mask; neighbouring masks are not shifted copies.
        let mut c = vec![0.0f32; n];
        be.dropout(&mut c, &x, p, 43).unwrap();
        assert!(!same_bits(&a, &c));
        let agree = (0..n - 1)
            .filter(|&i| (a[i] == 0.0) == (c[i + 1] == 0.0))
            .count();
        assert!((agree as f64 / n as f64) < 0.9);
        // p = 0 copies, p outside [0, 1] errors.
        be.dropout(&mut c, &x, 0.0, 43).unwrap();
        assert!(same_bits(&c, &x));
        assert!(be.dropout(&mut c, &x, 1.5, 43).is_err());
    }
}
