//! Frozen Linear weights on the CPU backend: [`CpuWeight`] keeps a packed matrix (Q4_0,
//! Q4_1, Q8_0, F16, BF16 rows, `model::Frozen`) packed and widens it to f32 just before each
//! product that reads it, into a per-thread scratch that is reused across calls; a dense one
//! is used as it is. The widened values are exactly the loader's (the same decoder), and the
//! product is the backend's `gemm` on them, so results are bit-identical to a dense model.
//!
//! Cost: one decode of the matrix per use (forward, input gradient, recompute). For
//! SmolLM2-135M that is 106M values per pass, against the GEMMs' 2 × 106M × tokens
//! multiply-adds (BENCHMARKS.md measures it). Neighbours: gemm.rs (the product),
//! mod.rs (the `Backend` impl), model/frozen.rs.

use std::any::Any;
use std::cell::RefCell;

use super::gemm::Gemm;
use super::{check_len, checked_size, Real};
use crate::error::{Error, Result};
use crate::model::Frozen;

/// A frozen `[rows, cols]` Linear weight on the CPU backend.
pub enum CpuWeight<T> {
    /// Values in the backend's element type.
    Dense {
        /// Rows (output features).
        rows: usize,
        /// Columns (input features).
        cols: usize,
        /// `[rows, cols]` row-major.
        data: Vec<T>,
    },
    /// As its file stored it (widened per use).
    Packed(Frozen),
}

thread_local! {
    /// The widened values of the last packed weight used on this thread.
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl<T: Real> CpuWeight<T> {
    /// `w` on the CPU: packed matrices stay packed, dense ones are converted to `T`.
    pub fn new(w: &Frozen) -> Result<Self> {
        let (rows, cols) = dims(w)?;
        Ok(match w.as_dense() {
            Some(t) if !w.is_packed() => CpuWeight::Dense {
                rows,
                cols,
                data: t.data.iter().map(|&x| T::from_f32(x)).collect(),
            },
            _ => CpuWeight::Packed(w.clone()),
        })
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            CpuWeight::Dense { rows, cols, .. } => (*rows, *cols),
            CpuWeight::Packed(f) => (f.shape()[0], f.shape()[1]),
        }
    }

    /// Runs `f` on the values as a dense `[rows, cols]` slice of `T`.
    fn with_values<R>(&self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        let packed = match self {
            CpuWeight::Dense { data, .. } => return Ok(f(data)),
            CpuWeight::Packed(p) => p,
        };
        WIDE.with(|cell| {
            let (mut guard, mut owned);
            let s: &mut Vec<f32> = match cell.try_borrow_mut() {
                Ok(g) => {
                    guard = g;
                    &mut guard
                }
                // re-entered on this thread (from a rayon task of an outer product)
                Err(_) => {
                    owned = Vec::new();
                    &mut owned
                }
            };
            s.resize(packed.len(), 0.0);
            packed.dequantize_into(s)?;
            Ok(match (&*s as &dyn Any).downcast_ref::<Vec<T>>() {
                Some(v) => f(v),
                None => f(&s.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>()),
            })
        })
    }

    /// [`CpuWeight::gemm`] with bf16 operands and f32 accumulation (`gemm_bf16.rs`); the
    /// caller has checked that the CPU has AVX512_BF16.
    pub(crate) fn gemm_bf16(
        &self,
        c: &mut [f32],
        a: &[f32],
        m: usize,
        trans_w: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let g = self.check(c.len(), a.len(), m, trans_w)?;
        self.with_values(|w| {
            let w = super::as_f32(w).expect("the bf16 mode is f32 only");
            super::gemm_bf16::gemm(g, c, a, w, alpha, beta)
        })
    }

    /// The product's dims after checking `c` and `a` (see [`CpuWeight::gemm`]).
    fn check(&self, c_len: usize, a_len: usize, m: usize, trans_w: bool) -> Result<Gemm> {
        let (rows, cols) = self.dims();
        let (n, k) = if trans_w { (rows, cols) } else { (cols, rows) };
        let dims = || format!("m={m}, W [{rows}, {cols}], trans_w={trans_w}");
        check_len(
            "gemm_weight",
            "c",
            c_len,
            checked_size("gemm_weight", &[m, n])?,
            dims,
        )?;
        check_len(
            "gemm_weight",
            "a",
            a_len,
            checked_size("gemm_weight", &[m, k])?,
            dims,
        )?;
        Ok(Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: trans_w,
        })
    }

    /// `c = beta·c + alpha·a·op(W)`: `trans_w` → `a [m, cols]`, `c [m, rows]` (`X·Wᵀ`); else
    /// `a [m, rows]`, `c [m, cols]` (`dY·W`).
    pub fn gemm(
        &self,
        c: &mut [T],
        a: &[T],
        m: usize,
        trans_w: bool,
        alpha: T,
        beta: T,
    ) -> Result<()> {
        let g = self.check(c.len(), a.len(), m, trans_w)?;
        self.with_values(|w| g.run(c, a, w, alpha, beta))
    }
}

/// `(rows, cols)` of a 2-D frozen matrix.
fn dims(w: &Frozen) -> Result<(usize, usize)> {
    match *w.shape() {
        [rows, cols] => Ok((rows, cols)),
        ref s => Err(Error::shape(
            "upload_weight",
            format!("a Linear weight is 2-D, got shape {s:?}"),
        )),
    }
}
