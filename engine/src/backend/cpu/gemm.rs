//! GEMM for the CPU backend: `C = beta·C + alpha·op(A)·op(B)` on row-major `Vec<T>` buffers,
//! wrapped as faer views (a transpose is a view with swapped strides, no copy) and computed
//! by faer's single-threaded `matmul` in coarse rayon tasks.
//!
//! Parallelism and determinism: a product is cut into tasks by its shape alone (never by the
//! thread count): blocks of C's rows (or columns, whichever is larger), or, when `k` dwarfs
//! both, pieces of `k` whose partial products are added in piece order. Each task runs faer
//! sequentially, so results are bit-identical for any thread count (the tests check 1, 2, 3
//! and 8). faer's own threading is not used: it synchronises threads with spinning barriers
//! inside every product, which measured slower than one thread on a busy 2-core machine.
//! Used by `mod.rs` (the `gemm` op), `xent.rs` and `attention.rs` (through [`matmul`]).

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{check_len, checked_size, Real};
use crate::error::Result;

/// Multiply-adds per parallel task, at least; smaller products run on the calling thread.
/// 2M MAC (~30 µs at faer's single-core rate) splits the rank-8 LoRA products of a
/// 1,024-token step (4.7M–12.6M MAC) into 2–6 tasks: run whole, they left the other core idle
/// for ~9% of a training step.
const TASK_MAC: usize = 1 << 21;
/// At most this many parallel tasks per product.
const MAX_TASKS: usize = 8;
/// Rows (or columns) of C per task, at least.
const MIN_BLOCK: usize = 32;
/// Row (or column) blocks are multiples of this.
const ALIGN: usize = 16;
/// Length of the `k` pieces of a long-`k` product.
const K_BLOCK: usize = 4096;

/// The dims of one GEMM call: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, C is `[m, n]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored `[k, m]`.
    pub trans_a: bool,
    /// B is stored `[n, k]`.
    pub trans_b: bool,
}

impl Gemm {
    /// Check buffer lengths against the dims.
    pub fn check(&self, c_len: usize, a_len: usize, b_len: usize) -> Result<()> {
        let Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
        } = *self;
        let dims = || format!("m={m}, n={n}, k={k}, trans_a={trans_a}, trans_b={trans_b}");
        check_len("gemm", "c", c_len, checked_size("gemm", &[m, n])?, dims)?;
        check_len("gemm", "a", a_len, checked_size("gemm", &[m, k])?, dims)?;
        check_len("gemm", "b", b_len, checked_size("gemm", &[k, n])?, dims)
    }

    /// `c = beta·c + alpha·op(a)·op(b)`; `beta == 0` overwrites `c` without reading it.
    /// Lengths must have passed [`Gemm::check`].
    pub fn run<T: Real>(&self, c: &mut [T], a: &[T], b: &[T], alpha: T, beta: T) {
        let Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
        } = *self;
        let a = if trans_a {
            MatRef::from_row_major_slice(a, k, m).transpose()
        } else {
            MatRef::from_row_major_slice(a, m, k)
        };
        let b = if trans_b {
            MatRef::from_row_major_slice(b, n, k).transpose()
        } else {
            MatRef::from_row_major_slice(b, k, n)
        };
        let c = MatMut::from_row_major_slice_mut(c, m, n);
        matmul(c, a, b, alpha, beta);
    }
}

/// `c = beta·c + alpha·a·b` on faer views. `beta == 0` overwrites (NaN in `c` does not
/// propagate), `beta == 1` accumulates, any other `beta` scales `c` first.
pub(crate) fn matmul<T: Real>(
    mut c: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    beta: T,
) {
    let (m, n) = (c.nrows(), c.ncols());
    let accum = if beta == T::ZERO {
        Accum::Replace
    } else {
        if beta != T::ONE {
            for i in 0..m {
                for j in 0..n {
                    c[(i, j)] = beta * c[(i, j)];
                }
            }
        }
        Accum::Add
    };
    let k = a.ncols();
    let work = m.saturating_mul(n).saturating_mul(k);
    let tasks = (work / TASK_MAC).min(MAX_TASKS);
    if tasks < 2 {
        faer_matmul(c, accum, a, b, alpha, Par::Seq);
    } else if k >= 4 * m.max(n) && k >= 2 * K_BLOCK {
        split_k(c, accum, a, b, alpha);
    } else if m >= n && m >= 2 * MIN_BLOCK {
        let block = m.div_ceil(tasks).max(MIN_BLOCK).next_multiple_of(ALIGN);
        c.par_row_chunks_mut(block).enumerate().for_each(|(i, cb)| {
            let rows = cb.nrows();
            faer_matmul(cb, accum, a.subrows(i * block, rows), b, alpha, Par::Seq);
        });
    } else if n >= 2 * MIN_BLOCK {
        let block = n.div_ceil(tasks).max(MIN_BLOCK).next_multiple_of(ALIGN);
        c.par_col_chunks_mut(block).enumerate().for_each(|(j, cb)| {
            let cols = cb.ncols();
            faer_matmul(cb, accum, a, b.subcols(j * block, cols), alpha, Par::Seq);
        });
    } else {
        faer_matmul(c, accum, a, b, alpha, Par::Seq);
    }
}

/// `c (=|+=) alpha·a·b` for a long `k`: pieces of [`K_BLOCK`] along `k` are multiplied in
/// parallel into private partials, which are then added into `c` in piece order.
fn split_k<T: Real>(c: MatMut<'_, T>, accum: Accum, a: MatRef<'_, T>, b: MatRef<'_, T>, alpha: T) {
    let (m, n, k) = (c.nrows(), c.ncols(), a.ncols());
    let pieces = k.div_ceil(K_BLOCK);
    let mut partials = vec![T::ZERO; pieces * m * n];
    partials
        .par_chunks_mut(m * n)
        .enumerate()
        .for_each(|(p, part)| {
            let k0 = p * K_BLOCK;
            let kl = K_BLOCK.min(k - k0);
            faer_matmul(
                MatMut::from_row_major_slice_mut(part, m, n),
                Accum::Replace,
                a.subcols(k0, kl),
                b.subrows(k0, kl),
                alpha,
                Par::Seq,
            );
        });
    let partials = &partials;
    c.par_row_chunks_mut(1)
        .enumerate()
        .for_each(|(i, mut row)| {
            for j in 0..n {
                let mut acc = partials[i * n + j];
                for p in 1..pieces {
                    acc += partials[(p * m + i) * n + j];
                }
                row[(0, j)] = match accum {
                    Accum::Replace => acc,
                    Accum::Add => row[(0, j)] + acc,
                };
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{in_pool, randn, same_bits, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// `beta·C + alpha·op(A)·op(B)` by the definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(c: &[f64], a: &[f64], b: &[f64], g: Gemm, alpha: f64, beta: f64) -> Vec<f64> {
        let mut out = vec![0.0; g.m * g.n];
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0;
                for p in 0..g.k {
                    let av = if g.trans_a {
                        a[p * g.m + i]
                    } else {
                        a[i * g.k + p]
                    };
                    let bv = if g.trans_b {
                        b[j * g.k + p]
                    } else {
                        b[p * g.n + j]
                    };
                    s += av * bv;
                }
                let base = if beta == 0.0 {
                    0.0
                } else {
                    beta * c[i * g.n + j]
                };
                out[i * g.n + j] = base + alpha * s;
            }
        }
        out
    }

    #[test]
    fn matches_naive_all_transposes() {
        let be = CpuBackend::<f64>::new();
        let mut rng = Rng(7);
        for &(m, n, k) in &[(5, 8, 7), (16, 8, 24), (24, 20, 8), (1, 9, 13), (9, 1, 13)] {
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    for &(alpha, beta) in &[(1.0, 0.0), (0.5, 1.0), (2.0, -0.5)] {
                        let g = Gemm {
                            m,
                            n,
                            k,
                            trans_a,
                            trans_b,
                        };
                        let a = randn(&mut rng, m * k);
                        let b = randn(&mut rng, k * n);
                        let c0 = randn(&mut rng, m * n);
                        let want = naive(&c0, &a, &b, g, alpha, beta);
                        let mut c = c0.clone();
                        be.gemm(
                            &mut c,
                            &a,
                            &b,
                            m,
                            n,
                            k,
                            trans_a,
                            trans_b,
                            alpha as f32,
                            beta as f32,
                        )
                        .unwrap();
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - y).abs() < 1e-12, "{g:?} {alpha} {beta}: {x} vs {y}");
                        }
                    }
                }
            }
        }
    }

    /// The parallel paths (row blocks, column blocks, `k` pieces) against the definition.
    #[test]
    fn parallel_splits_match_naive() {
        let be = CpuBackend::<f64>::new();
        let mut rng = Rng(17);
        // Row blocks, column blocks, and k pieces (k = 2.4 pieces).
        for &(m, n, k, ta, tb) in &[
            (700, 40, 700, false, true),
            (40, 700, 700, true, false),
            (48, 40, 2 * K_BLOCK + K_BLOCK / 2, false, false),
            (48, 40, 2 * K_BLOCK + 7, true, true),
        ] {
            let g = Gemm {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
            };
            let a = randn(&mut rng, m * k);
            let b = randn(&mut rng, k * n);
            let c0 = randn(&mut rng, m * n);
            for beta in [0.0, 1.0] {
                let want = naive(&c0, &a, &b, g, 0.5, beta);
                let mut c = c0.clone();
                be.gemm(&mut c, &a, &b, m, n, k, ta, tb, 0.5, beta as f32)
                    .unwrap();
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-10, "{g:?} beta={beta}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn beta_zero_overwrites_nan() {
        let be = CpuBackend::<f32>::new();
        let a = vec![1.0f32; 6];
        let b = vec![2.0f32; 6];
        let mut c = vec![f32::NAN; 4];
        be.gemm(&mut c, &a, &b, 2, 2, 3, false, false, 1.0, 0.0)
            .unwrap();
        assert_eq!(c, vec![6.0; 4]);
    }

    #[test]
    fn shape_errors_name_the_op() {
        let be = CpuBackend::<f32>::new();
        let mut c = vec![0.0f32; 4];
        let err = be
            .gemm(
                &mut c,
                &vec![0.0; 5],
                &vec![0.0; 6],
                2,
                2,
                3,
                false,
                false,
                1.0,
                0.0,
            )
            .unwrap_err();
        assert!(err.to_string().contains("gemm"), "{err}");
        assert!(err.to_string().contains("m=2"), "{err}");
    }

    /// SmolLM2-like projection and rank-8 LoRA shapes give bit-identical results on 1, 2, 3
    /// and 8 threads, for every transpose combination.
    #[test]
    fn thread_count_bit_identity() {
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(11);
        for &(m, n, k) in &[
            (512, 576, 576),
            (512, 8, 576),
            (512, 576, 8),
            (576, 8, 512),
            (64, 48, 4096),
            (32, 64, 2 * K_BLOCK + 100),
        ] {
            let a: Vec<f32> = randn(&mut rng, m * k).iter().map(|&x| x as f32).collect();
            let b: Vec<f32> = randn(&mut rng, k * n).iter().map(|&x| x as f32).collect();
            let c0: Vec<f32> = randn(&mut rng, m * n).iter().map(|&x| x as f32).collect();
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    let run = |threads| {
                        in_pool(threads, || {
                            let mut c = c0.clone();
                            be.gemm(&mut c, &a, &b, m, n, k, trans_a, trans_b, 0.7, 1.0)
                                .unwrap();
                            c
                        })
                    };
                    let c1 = run(1);
                    for threads in [2, 3, 8] {
                        assert!(
                            same_bits(&c1, &run(threads)),
                            "m={m} n={n} k={k} ta={trans_a} tb={trans_b} threads={threads}"
                        );
                    }
                }
            }
        }
    }

    /// GEMM timing for one shape given by `GEMM_SHAPE=m,n,k,ta,tb,reps[,threads]`:
    /// `GEMM_SHAPE=64,256,64,0,1,2000 perf stat -e cycles:u <test binary> gemm_timing --ignored`.
    #[test]
    #[ignore]
    fn gemm_timing() {
        let spec = std::env::var("GEMM_SHAPE").unwrap_or_else(|_| "512,576,576,0,1,20".into());
        let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
        let (m, n, k, ta, tb, reps) = (v[0], v[1], v[2], v[3] == 1, v[4] == 1, v[5]);
        let threads = v.get(6).copied().unwrap_or(1);
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(1);
        let a: Vec<f32> = randn(&mut rng, m * k).iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = randn(&mut rng, k * n).iter().map(|&x| x as f32).collect();
        let mut c = vec![0.0f32; m * n];
        in_pool(threads, || {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                be.gemm(&mut c, &a, &b, m, n, k, ta, tb, 1.0, 0.0).unwrap();
            }
            let dt = t.elapsed().as_secs_f64();
            let gflop = 2.0 * (m * n * k * reps) as f64 * 1e-9;
            println!(
                "{spec}: {gflop:.2} GFLOP in {dt:.3} s = {:.1} GFLOP/s",
                gflop / dt
            );
        });
    }
}
