//! Causal GQA attention of the CPU backend with packed samples: forward (saving the
//! log-sum-exp per query and head) and the flash-style backward.
//!
//! Layout: q/out `[n, heads·hd]`, k/v `[n, kv_heads·hd]`, lse `[n, heads]`, `n = batch·seq`;
//! query head `h` reads kv head `h / (heads/kv_heads)`. Token `i` of a row attends to tokens
//! `j` of the same row with `starts[i] <= j <= i`.
//! Forward, per query `i` and head: `s_j = (q_i·k_j)/sqrt(hd)`, `lse_i = log Σ_j e^(s_j)`,
//! `P_ij = e^(s_j − lse_i)`, `out_i = Σ_j P_ij v_j`.
//! Backward: `D_i = dout_i·out_i`, `dv_j = Σ_i P_ij dout_i`, `dP_ij = dout_i·v_j`,
//! `dS_ij = P_ij (dP_ij − D_i)`, `dq_i = Σ_j dS_ij k_j /sqrt(hd)`,
//! `dk_j = Σ_i dS_ij q_i /sqrt(hd)` (summed over the query heads sharing the kv head).
//! Work is split into (batch row, head) items; every sum runs in a fixed order inside one
//! item (the backward's sum over the heads of a kv group runs in head order after them), so
//! results do not depend on the thread count. The reference by the definition and the tests
//! live in `attention_tests.rs`; the argument checks in backend/attention_dims.rs.
//! Decoding ([`decode`]): one query per sequence against its cached keys and values
//! (`Backend::attention_decode`), the same softmax by the definition, one rayon item per
//! (query, head).

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::simd::{attn_grad_row, dot as simd_dot, exp_sub_sum, row_max, scale_row};
use super::Real;
use crate::backend::decode_check::DecodeDims;

/// Validated dims of one attention call (the checks every backend shares).
pub(crate) use crate::backend::attention_dims::AttnDims as Dims;

/// `1/sqrt(hd)` in `T`.
pub(crate) fn score_scale<T: Real>(d: &Dims) -> T {
    T::from_f64(d.scale())
}

/// The gradients the backward overwrites.
pub(crate) struct Grads<'a, T> {
    pub dq: &'a mut [T],
    pub dk: &'a mut [T],
    pub dv: &'a mut [T],
}

/// The forward's inputs, outputs and the incoming gradient.
pub(crate) struct Saved<'a, T> {
    pub dout: &'a [T],
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub out: &'a [T],
    pub lse: &'a [T],
}

/// Queries per block: a block's scores against its keys are one `[BQ, keys]` GEMM.
const BQ: usize = 32;

/// A raw pointer shared by rayon items that write disjoint elements of one buffer.
#[derive(Clone, Copy)]
struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the pointer is only dereferenced through `SharedMut::view`, whose callers
// guarantee that concurrent items touch disjoint elements; `T` itself is Send + Sync.
unsafe impl<T: Send + Sync> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    fn new(buf: &mut [T]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// The `[rows, cols]` block at (`row0`, `col0`) of the row-major matrix of row width
    /// `width` held by the buffer.
    ///
    /// # Safety
    /// No other live view (in any thread) may touch an element of the block, and the
    /// buffer must outlive the view.
    unsafe fn view<'a>(
        &self,
        row0: usize,
        rows: usize,
        width: usize,
        col0: usize,
        cols: usize,
    ) -> MatMut<'a, T> {
        assert!(rows > 0 && cols > 0 && col0 + cols <= width);
        assert!((row0 + rows - 1) * width + col0 + cols <= self.len);
        // SAFETY: the block lies inside the buffer (asserted above); exclusivity is the
        // caller's contract.
        unsafe {
            MatMut::from_raw_parts_mut(
                self.ptr.add(row0 * width + col0),
                rows,
                cols,
                width as isize,
                1,
            )
        }
    }
}

/// The `[rows, cols]` block at (`row0`, `col0`) of a row-major matrix of row width `width`.
fn view<T>(
    buf: &[T],
    row0: usize,
    rows: usize,
    width: usize,
    col0: usize,
    cols: usize,
) -> MatRef<'_, T> {
    MatRef::from_row_major_slice_with_stride(&buf[row0 * width + col0..], rows, cols, width)
}

/// The query blocks of a row: `(q0, q1, k_lo)`: queries `q0..q1` see keys `k_lo..q1` at most.
fn blocks(starts: &[u32]) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..starts.len()).step_by(BQ).map(move |q0| {
        let q1 = (q0 + BQ).min(starts.len());
        let k_lo = starts[q0..q1].iter().copied().min().unwrap_or(0) as usize;
        (q0, q1, k_lo)
    })
}

/// Forward: writes `out` and `lse`. One rayon item per (batch row, query head); each
/// processes [`BQ`] queries at a time: `S = scale·Q·Kᵀ` (faer), the masked softmax
/// (index-order sums), `O = P·V` (faer).
pub(crate) fn forward<T: Real>(
    d: &Dims,
    out: &mut [T],
    lse: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    starts: &[u32],
) {
    let (seq, hd, heads, kvh) = (d.seq, d.hd, d.heads, d.kv_heads);
    let (qw, kw) = (heads * hd, kvh * hd);
    if seq == 0 || d.batch == 0 {
        return;
    }
    let scale: T = score_scale(d);
    let (out_p, lse_p) = (SharedMut::new(out), SharedMut::new(lse));
    (0..d.batch * heads).into_par_iter().for_each(|item| {
        let (b, h) = (item / heads, item % heads);
        let g = h / d.group;
        let r0 = b * seq;
        let starts = &starts[r0..r0 + seq];
        let mut s = vec![T::ZERO; BQ.min(seq) * seq];
        for (q0, q1, k_lo) in blocks(starts) {
            let (bq, l) = (q1 - q0, q1 - k_lo);
            let sm = &mut s[..bq * l];
            matmul(
                MatMut::from_row_major_slice_mut(sm, bq, l),
                view(q, r0 + q0, bq, qw, h * hd, hd),
                view(k, r0 + k_lo, l, kw, g * hd, hd).transpose(),
                scale,
            );
            for (r, row) in sm.chunks_exact_mut(l).enumerate() {
                let i = q0 + r;
                let (lo, hi) = (starts[i] as usize - k_lo, i - k_lo);
                let valid = &mut row[lo..=hi];
                let mx = row_max(valid);
                let sum = exp_sub_sum(valid, mx);
                scale_row(valid, T::ONE / sum);
                row[..lo].fill(T::ZERO);
                row[hi + 1..].fill(T::ZERO);
                // SAFETY: element (r0 + i, h) of lse belongs to this item alone.
                let mut lse_v = unsafe { lse_p.view(r0 + i, 1, heads, h, 1) };
                lse_v[(0, 0)] = mx + sum.ln();
            }
            // SAFETY: rows r0+q0..r0+q1, columns of head h of `out` belong to this item alone.
            let o = unsafe { out_p.view(r0 + q0, bq, qw, h * hd, hd) };
            matmul(
                o,
                MatRef::from_row_major_slice(sm, bq, l),
                view(v, r0 + k_lo, l, kw, g * hd, hd),
                T::ONE,
            );
        }
    });
}

/// Backward: overwrites `dq`, `dk`, `dv`, in two passes.
/// 1. One rayon item per (batch row, query head) walks its query blocks in order,
///    recomputing `P` from the saved `lse`; it writes its head's `dq` and accumulates its
///    head's share of `dk`/`dv` into a private `[seq, hd]` scratch pair.
/// 2. One rayon item per token sums the shares of the heads of each kv group in head order.
pub(crate) fn backward<T: Real>(d: &Dims, g: Grads<'_, T>, s: Saved<'_, T>, starts: &[u32]) {
    let (seq, hd, heads, kvh) = (d.seq, d.hd, d.heads, d.kv_heads);
    let (qw, kw) = (heads * hd, kvh * hd);
    if seq == 0 || d.batch == 0 || heads == 0 {
        g.dk.fill(T::ZERO);
        g.dv.fill(T::ZERO);
        return;
    }
    let scale: T = score_scale(d);
    let dq_p = SharedMut::new(g.dq);
    let share = seq * hd;
    // [batch·heads][dk | dv][seq, hd]
    let mut shares = vec![T::ZERO; d.batch * heads * 2 * share];
    shares
        .par_chunks_mut(2 * share)
        .enumerate()
        .for_each(|(item, sh)| {
            let (b, h) = (item / heads, item % heads);
            let gk = h / d.group;
            let r0 = b * seq;
            let starts = &starts[r0..r0 + seq];
            let (dk_sh, dv_sh) = sh.split_at_mut(share);
            let mut dk_all = MatMut::from_row_major_slice_mut(dk_sh, seq, hd);
            let mut dv_all = MatMut::from_row_major_slice_mut(dv_sh, seq, hd);
            let mut p = vec![T::ZERO; BQ.min(seq) * seq];
            let mut dp = vec![T::ZERO; BQ.min(seq) * seq];
            for (q0, q1, k_lo) in blocks(starts) {
                let (bq, l) = (q1 - q0, q1 - k_lo);
                let (pm, dpm) = (&mut p[..bq * l], &mut dp[..bq * l]);
                let q_blk = view(s.q, r0 + q0, bq, qw, h * hd, hd);
                let do_blk = view(s.dout, r0 + q0, bq, qw, h * hd, hd);
                let k_span = view(s.k, r0 + k_lo, l, kw, gk * hd, hd);
                let v_span = view(s.v, r0 + k_lo, l, kw, gk * hd, hd);
                matmul(
                    MatMut::from_row_major_slice_mut(pm, bq, l),
                    q_blk,
                    k_span.transpose(),
                    scale,
                );
                matmul(
                    MatMut::from_row_major_slice_mut(dpm, bq, l),
                    do_blk,
                    v_span.transpose(),
                    T::ONE,
                );
                for (r, (prow, dprow)) in pm
                    .chunks_exact_mut(l)
                    .zip(dpm.chunks_exact_mut(l))
                    .enumerate()
                {
                    let i = q0 + r;
                    let t = r0 + i;
                    let (lo, hi) = (starts[i] as usize - k_lo, i - k_lo);
                    let o = &s.out[t * qw + h * hd..t * qw + (h + 1) * hd];
                    let dy = &s.dout[t * qw + h * hd..t * qw + (h + 1) * hd];
                    let di = simd_dot(dy, o);
                    let li = s.lse[t * heads + h];
                    attn_grad_row(&mut prow[lo..=hi], &mut dprow[lo..=hi], li, di, scale);
                    prow[..lo].fill(T::ZERO);
                    prow[hi + 1..].fill(T::ZERO);
                    dprow[..lo].fill(T::ZERO);
                    dprow[hi + 1..].fill(T::ZERO);
                }
                let (pr, dsr) = (
                    MatRef::from_row_major_slice(&*pm, bq, l),
                    MatRef::from_row_major_slice(&*dpm, bq, l),
                );
                // SAFETY: rows r0+q0..r0+q1, columns of head h of dq belong to this item alone.
                let dq_blk = unsafe { dq_p.view(r0 + q0, bq, qw, h * hd, hd) };
                matmul(dq_blk, dsr, k_span, T::ONE);
                matmul_acc(dk_all.as_mut().subrows_mut(k_lo, l), dsr.transpose(), q_blk);
                matmul_acc(dv_all.as_mut().subrows_mut(k_lo, l), pr.transpose(), do_blk);
            }
        });
    let group = d.group;
    g.dk.par_chunks_mut(kw)
        .zip(g.dv.par_chunks_mut(kw))
        .enumerate()
        .for_each(|(t, (dk, dv))| {
            let (b, i) = (t / seq, t % seq);
            for gk in 0..kvh {
                for (half, out) in [(0, &mut *dk), (1, &mut *dv)] {
                    let out = &mut out[gk * hd..(gk + 1) * hd];
                    for (j, h) in (gk * group..(gk + 1) * group).enumerate() {
                        let base = ((b * heads + h) * 2 + half) * share + i * hd;
                        let src = &shares[base..base + hd];
                        if j == 0 {
                            out.copy_from_slice(src);
                        } else {
                            for (o, &v) in out.iter_mut().zip(src) {
                                *o += v;
                            }
                        }
                    }
                }
            }
        });
}

/// Decoding attention (checked dims): for query `i` and head `h` (kv head `g`), keys
/// `j = first[i] ..= first[i] + last[i]` of the cache: `s_j = scale·(q_i·k_j)` (a fixed-order
/// dot), `P = softmax(s)` (max, then the exp sum in key order), `out_i = Σ_j P_j v_j` in key
/// order. One rayon item per (query, head), each writing its own `hd` outputs.
pub(crate) fn decode<T: Real>(
    d: &DecodeDims,
    out: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    first: &[u32],
    last: &[u32],
) {
    let (hd, heads) = (d.hd, d.heads);
    let kw = d.kv_heads * hd;
    let group = heads / d.kv_heads;
    let scale = T::from_f64(d.scale());
    out.par_chunks_mut(hd).enumerate().for_each(|(item, o)| {
        let (i, h) = (item / heads, item % heads);
        let col = (h / group) * hd;
        let qi = &q[item * hd..(item + 1) * hd];
        let j0 = first[i] as usize;
        let keys = j0..=j0 + last[i] as usize;
        let mut p: Vec<T> = keys
            .clone()
            .map(|j| simd_dot(qi, &k[j * kw + col..j * kw + col + hd]) * scale)
            .collect();
        let mx = row_max(&p);
        let sum = exp_sub_sum(&mut p, mx);
        scale_row(&mut p, T::ONE / sum);
        o.fill(T::ZERO);
        for (j, &pj) in keys.zip(&p) {
            for (x, &vv) in o.iter_mut().zip(&v[j * kw + col..j * kw + col + hd]) {
                *x += pj * vv;
            }
        }
    });
}

/// `c = alpha·a·b`, single-threaded (inside a rayon item).
fn matmul<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>, alpha: T) {
    faer::linalg::matmul::matmul(c, Accum::Replace, a, b, alpha, Par::Seq);
}

/// `c += a·b`, single-threaded (inside a rayon item).
fn matmul_acc<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>) {
    faer::linalg::matmul::matmul(c, Accum::Add, a, b, T::ONE, Par::Seq);
}
