//! GEMM for the CPU backend: `C = beta·C + alpha·op(A)·op(B)` on row-major `Vec<T>` buffers,
//! wrapped as faer views (a transpose is a view with swapped strides, no copy) and computed
//! by faer's `matmul` on the current rayon pool.
//!
//! Determinism: faer splits the output into tiles and every tile's dot products run along `k`
//! in the same order whatever thread computes it; the only thread-count-dependent split in
//! faer is the matrix-vector path (`m == 1` or `n == 1`), which splits `k` across threads, so
//! those shapes run sequentially. The tests check bit-identity for 1 and 2 threads.
//! Used by `mod.rs` (the `gemm` op), `xent.rs` and `attention.rs` (through [`matmul`]).

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::{check_len, checked_size, Real};
use crate::error::Result;

/// Products smaller than this (in multiply-adds) run on one thread.
const PAR_MIN_FLOPS: usize = 1 << 18;

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
    let k = a.ncols();
    let accum = if beta == T::ZERO {
        Accum::Replace
    } else {
        if beta != T::ONE {
            for j in 0..n {
                for i in 0..m {
                    c[(i, j)] = beta * c[(i, j)];
                }
            }
        }
        Accum::Add
    };
    let work = m.saturating_mul(n).saturating_mul(k);
    // m == 1 or n == 1 goes to faer's matvec, whose parallel form splits k across threads.
    let par = if work < PAR_MIN_FLOPS || m == 1 || n == 1 {
        Par::Seq
    } else {
        Par::rayon(0)
    };
    faer_matmul(c, accum, a, b, alpha, par);
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

    /// GEMM timing for one shape given by `GEMM_SHAPE=m,n,k,ta,tb,reps` (single thread):
    /// `GEMM_SHAPE=64,256,64,0,1,2000 perf stat -e cycles:u <test binary> gemm_timing --ignored`.
    #[test]
    #[ignore]
    fn gemm_timing() {
        let spec = std::env::var("GEMM_SHAPE").unwrap_or_else(|_| "512,576,576,0,1,20".into());
        let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
        let (m, n, k, ta, tb, reps) = (v[0], v[1], v[2], v[3] == 1, v[4] == 1, v[5]);
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(1);
        let a: Vec<f32> = randn(&mut rng, m * k).iter().map(|&x| x as f32).collect();
        let b: Vec<f32> = randn(&mut rng, k * n).iter().map(|&x| x as f32).collect();
        let mut c = vec![0.0f32; m * n];
        in_pool(1, || {
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
