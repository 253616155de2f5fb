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
//! results do not depend on the thread count.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::simd::{attn_grad_row, dot as simd_dot, exp_sub_sum, row_max, scale_row};
use super::{check_len, checked_size, Real};
use crate::error::{Error, Result};

/// Validated dims of one attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    op: &'static str,
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    /// Query heads per kv head.
    group: usize,
}

impl Dims {
    /// Check the dims and `starts` (one per token, `starts[i] <= i` within its row).
    pub fn new(
        op: &'static str,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Self> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || hd == 0 {
            return Err(Error::shape(
                op,
                format!("heads={heads} must be a positive multiple of kv_heads={kv_heads}, hd={hd} positive"),
            ));
        }
        let n = checked_size(op, &[batch, seq])?;
        checked_size(op, &[n, heads, hd])?;
        check_len(op, "starts", starts.len(), n, || {
            format!("batch={batch}, seq={seq}")
        })?;
        if let Some((t, &s)) = starts
            .iter()
            .enumerate()
            .find(|(t, &s)| s as usize > t % seq)
        {
            return Err(Error::shape(
                op,
                format!(
                    "token {t} (index {} in its row) has sample start {s}, after itself",
                    t % seq
                ),
            ));
        }
        Ok(Dims {
            op,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
            group: heads / kv_heads,
        })
    }

    fn describe(&self) -> String {
        format!(
            "batch={}, seq={}, heads={}, kv_heads={}, hd={}",
            self.batch, self.seq, self.heads, self.kv_heads, self.hd
        )
    }

    /// Check a `[n, heads·hd]` buffer.
    pub fn check_q(&self, name: &str, len: usize) -> Result<()> {
        let want = self.batch * self.seq * self.heads * self.hd;
        check_len(self.op, name, len, want, || self.describe())
    }

    /// Check a `[n, kv_heads·hd]` buffer.
    pub fn check_kv(&self, name: &str, len: usize) -> Result<()> {
        let want = self.batch * self.seq * self.kv_heads * self.hd;
        check_len(self.op, name, len, want, || self.describe())
    }

    /// Check a `[n, heads]` buffer.
    pub fn check_lse(&self, name: &str, len: usize) -> Result<()> {
        let want = self.batch * self.seq * self.heads;
        check_len(self.op, name, len, want, || self.describe())
    }

    fn scale<T: Real>(&self) -> T {
        T::from_f64(1.0 / (self.hd as f64).sqrt())
    }
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

#[cfg(test)]
#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
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
    let scale: T = d.scale();
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
    let scale: T = d.scale();
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

/// `c = alpha·a·b`, single-threaded (inside a rayon item).
fn matmul<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>, alpha: T) {
    faer::linalg::matmul::matmul(c, Accum::Replace, a, b, alpha, Par::Seq);
}

/// `c += a·b`, single-threaded (inside a rayon item).
fn matmul_acc<T: Real>(c: MatMut<'_, T>, a: MatRef<'_, T>, b: MatRef<'_, T>) {
    faer::linalg::matmul::matmul(c, Accum::Add, a, b, T::ONE, Par::Seq);
}

/// The forward by the definition, one query at a time; one rayon item per batch row.
#[cfg(test)]
pub(crate) fn forward_naive<T: Real>(
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
    if seq == 0 || qw == 0 {
        return;
    }
    let scale: T = d.scale();
    out.par_chunks_mut(seq * qw)
        .zip(lse.par_chunks_mut(seq * heads))
        .enumerate()
        .for_each(|(b, (out, lse))| {
            let q = &q[b * seq * qw..(b + 1) * seq * qw];
            let k = &k[b * seq * kw..(b + 1) * seq * kw];
            let v = &v[b * seq * kw..(b + 1) * seq * kw];
            let starts = &starts[b * seq..(b + 1) * seq];
            let mut p = vec![T::ZERO; seq];
            for h in 0..heads {
                let g = h / d.group;
                for i in 0..seq {
                    let s0 = starts[i] as usize;
                    let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                    let mut mx = T::NEG_INFINITY;
                    for j in s0..=i {
                        let s = dot(qi, &k[j * kw + g * hd..j * kw + (g + 1) * hd]) * scale;
                        p[j] = s;
                        mx = mx.max(s);
                    }
                    let mut l = T::ZERO;
                    for pj in &mut p[s0..=i] {
                        *pj = (*pj - mx).exp();
                        l += *pj;
                    }
                    let oi = &mut out[i * qw + h * hd..i * qw + (h + 1) * hd];
                    oi.fill(T::ZERO);
                    for j in s0..=i {
                        let w = p[j] / l;
                        for (o, &vv) in oi
                            .iter_mut()
                            .zip(&v[j * kw + g * hd..j * kw + (g + 1) * hd])
                        {
                            *o += w * vv;
                        }
                    }
                    lse[i * heads + h] = mx + l.ln();
                }
            }
        });
}

/// The backward by the definition, one query at a time; one rayon item per batch row.
#[cfg(test)]
pub(crate) fn backward_naive<T: Real>(d: &Dims, g: Grads<'_, T>, s: Saved<'_, T>, starts: &[u32]) {
    let (seq, hd, heads, kvh) = (d.seq, d.hd, d.heads, d.kv_heads);
    let (qw, kw) = (heads * hd, kvh * hd);
    if seq == 0 || qw == 0 {
        return;
    }
    let scale: T = d.scale();
    g.dq.par_chunks_mut(seq * qw)
        .zip(g.dk.par_chunks_mut(seq * kw))
        .zip(g.dv.par_chunks_mut(seq * kw))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            dq.fill(T::ZERO);
            dk.fill(T::ZERO);
            dv.fill(T::ZERO);
            let rq = b * seq * qw..(b + 1) * seq * qw;
            let rk = b * seq * kw..(b + 1) * seq * kw;
            let (q, dout, out) = (&s.q[rq.clone()], &s.dout[rq.clone()], &s.out[rq]);
            let (k, v) = (&s.k[rk.clone()], &s.v[rk]);
            let lse = &s.lse[b * seq * heads..(b + 1) * seq * heads];
            let starts = &starts[b * seq..(b + 1) * seq];
            for h in 0..heads {
                let gk = h / d.group;
                for i in 0..seq {
                    let s0 = starts[i] as usize;
                    let qs = i * qw + h * hd..i * qw + (h + 1) * hd;
                    let (qi, doi) = (&q[qs.clone()], &dout[qs.clone()]);
                    let di = dot(doi, &out[qs.clone()]);
                    let li = lse[i * heads + h];
                    for j in s0..=i {
                        let ks = j * kw + gk * hd..j * kw + (gk + 1) * hd;
                        let p = (dot(qi, &k[ks.clone()]) * scale - li).exp();
                        let dp = dot(doi, &v[ks.clone()]);
                        let ds = p * (dp - di) * scale;
                        for c in 0..hd {
                            dv[ks.start + c] += p * doi[c];
                            dq[qs.start + c] += ds * k[ks.start + c];
                            dk[ks.start + c] += ds * qi[c];
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{
        check_grad, dot as fdot, in_pool, randn, randn_f32, same_bits, Rng,
    };
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// One attention problem: dims, sample starts and random q, k, v.
    struct Case {
        batch: usize,
        seq: usize,
        heads: usize,
        kvh: usize,
        hd: usize,
        starts: Vec<u32>,
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
    }

    /// Rows of `seq` tokens split into samples of the given lengths (per row).
    fn case(
        rng: &mut Rng,
        seq: usize,
        samples: &[&[usize]],
        heads: usize,
        kvh: usize,
        hd: usize,
    ) -> Case {
        let batch = samples.len();
        let mut starts = Vec::new();
        for row in samples {
            assert_eq!(row.iter().sum::<usize>(), seq);
            let mut s = 0;
            for &len in row.iter() {
                starts.extend(std::iter::repeat_n(s as u32, len));
                s += len;
            }
        }
        let n = batch * seq;
        Case {
            batch,
            seq,
            heads,
            kvh,
            hd,
            starts,
            q: randn(rng, n * heads * hd),
            k: randn(rng, n * kvh * hd),
            v: randn(rng, n * kvh * hd),
        }
    }

    fn fwd(c: &Case, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let be = CpuBackend::<f64>::new();
        let n = c.batch * c.seq;
        let mut out = vec![f64::NAN; n * c.heads * c.hd];
        let mut lse = vec![f64::NAN; n * c.heads];
        be.attention_forward(
            &mut out,
            &mut lse,
            &q.to_vec(),
            &k.to_vec(),
            &v.to_vec(),
            &c.starts,
            c.batch,
            c.seq,
            c.heads,
            c.kvh,
            c.hd,
        )
        .unwrap();
        (out, lse)
    }

    fn bwd(c: &Case, dout: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let be = CpuBackend::<f64>::new();
        let (out, lse) = fwd(c, &c.q, &c.k, &c.v);
        let mut dq = vec![f64::NAN; c.q.len()];
        let mut dk = vec![f64::NAN; c.k.len()];
        let mut dv = vec![f64::NAN; c.v.len()];
        be.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &dout.to_vec(),
            &c.q,
            &c.k,
            &c.v,
            &out,
            &lse,
            &c.starts,
            c.batch,
            c.seq,
            c.heads,
            c.kvh,
            c.hd,
        )
        .unwrap();
        (dq, dk, dv)
    }

    fn grad_check(c: &Case, seed: u64) {
        let mut rng = Rng(seed);
        let dout = randn(&mut rng, c.q.len());
        let (dq, dk, dv) = bwd(c, &dout);
        let tol = 1e-6;
        check_grad("attention dq", &c.q, &dq, None, tol, |q| {
            fdot(&dout, &fwd(c, q, &c.k, &c.v).0)
        });
        check_grad("attention dk", &c.k, &dk, None, tol, |k| {
            fdot(&dout, &fwd(c, &c.q, k, &c.v).0)
        });
        check_grad("attention dv", &c.v, &dv, None, tol, |v| {
            fdot(&dout, &fwd(c, &c.q, &c.k, v).0)
        });
    }

    #[test]
    fn gradients_gqa_packed_batch2() {
        let mut rng = Rng(20);
        // 4 query heads on 2 kv heads; row 0 holds two samples, row 1 one.
        let c = case(&mut rng, 7, &[&[3, 4], &[7]], 4, 2, 4);
        grad_check(&c, 21);
        // Multi-query (one kv head), three samples in a row.
        let c = case(&mut rng, 6, &[&[1, 2, 3]], 3, 1, 5);
        grad_check(&c, 22);
    }

    /// Attention over a packed row equals attention over each sample run on its own.
    #[test]
    fn packed_equals_separate() {
        let mut rng = Rng(23);
        let (heads, kvh, hd) = (4, 2, 8);
        let lens = [5usize, 9, 2];
        let seq: usize = lens.iter().sum();
        let c = case(&mut rng, seq, &[&lens], heads, kvh, hd);
        let (out, lse) = fwd(&c, &c.q, &c.k, &c.v);
        let mut rng = Rng(24);
        let dout = randn(&mut rng, c.q.len());
        let (dq, dk, dv) = bwd(&c, &dout);
        let (qw, kw) = (heads * hd, kvh * hd);
        let mut s0 = 0;
        for &len in &lens {
            let sub = Case {
                batch: 1,
                seq: len,
                heads,
                kvh,
                hd,
                starts: vec![0; len],
                q: c.q[s0 * qw..(s0 + len) * qw].to_vec(),
                k: c.k[s0 * kw..(s0 + len) * kw].to_vec(),
                v: c.v[s0 * kw..(s0 + len) * kw].to_vec(),
            };
            let (o, l) = fwd(&sub, &sub.q, &sub.k, &sub.v);
            let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
            assert!(close(&o, &out[s0 * qw..(s0 + len) * qw]));
            assert!(close(&l, &lse[s0 * heads..(s0 + len) * heads]));
            let (sq, sk, sv) = bwd(&sub, &dout[s0 * qw..(s0 + len) * qw]);
            assert!(close(&sq, &dq[s0 * qw..(s0 + len) * qw]));
            assert!(close(&sk, &dk[s0 * kw..(s0 + len) * kw]));
            assert!(close(&sv, &dv[s0 * kw..(s0 + len) * kw]));
            s0 += len;
        }
    }

    /// The blocked forward and backward equal the one-query-at-a-time definition, on rows
    /// longer than a query block with samples crossing block boundaries.
    #[test]
    fn blocked_matches_naive() {
        let mut rng = Rng(26);
        let c = case(&mut rng, 150, &[&[30, 70, 50], &[1, 149]], 6, 2, 16);
        let d = Dims::new("test", &c.starts, c.batch, c.seq, c.heads, c.kvh, c.hd).unwrap();
        let (out, lse) = fwd(&c, &c.q, &c.k, &c.v);
        let (mut o2, mut l2) = (vec![0.0; out.len()], vec![0.0; lse.len()]);
        forward_naive(&d, &mut o2, &mut l2, &c.q, &c.k, &c.v, &c.starts);
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() < 1e-12 * x.abs().max(1.0))
        };
        assert!(close(&out, &o2));
        assert!(close(&lse, &l2));
        let dout = randn(&mut rng, out.len());
        let (dq, dk, dv) = bwd(&c, &dout);
        let (mut q2, mut k2, mut v2) = (
            vec![0.0; dq.len()],
            vec![0.0; dk.len()],
            vec![0.0; dv.len()],
        );
        backward_naive(
            &d,
            Grads {
                dq: &mut q2,
                dk: &mut k2,
                dv: &mut v2,
            },
            Saved {
                dout: &dout,
                q: &c.q,
                k: &c.k,
                v: &c.v,
                out: &out,
                lse: &lse,
            },
            &c.starts,
        );
        assert!(close(&dq, &q2));
        assert!(close(&dk, &k2));
        assert!(close(&dv, &v2));
    }

    /// Timing at SmolLM2-135M head shapes, single thread, for `ATT_SHAPE=batch,seq,reps`
    /// (default 4,256,3): `cargo test --lib attention_timing -- --ignored --nocapture`
    /// (under `perf stat -e task-clock` on a busy machine).
    #[test]
    #[ignore]
    fn attention_timing() {
        let spec = std::env::var("ATT_SHAPE").unwrap_or_else(|_| "4,256,3".into());
        let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
        let (batch, seq, reps) = (v[0], v[1], v[2]);
        let be = CpuBackend::<f32>::new();
        let (heads, kvh, hd) = (9, 3, 64);
        let n = batch * seq;
        let mut rng = Rng(27);
        let starts = vec![0u32; n];
        let q = randn_f32(&mut rng, n * heads * hd);
        let k = randn_f32(&mut rng, n * kvh * hd);
        let v = randn_f32(&mut rng, n * kvh * hd);
        let dout = randn_f32(&mut rng, n * heads * hd);
        let mut out = vec![0.0f32; q.len()];
        let mut lse = vec![0.0f32; n * heads];
        let (mut dq, mut dk, mut dv) = (
            vec![0.0f32; q.len()],
            vec![0.0f32; k.len()],
            vec![0.0f32; v.len()],
        );
        let flops = (batch * heads) as f64 * (seq * seq) as f64 / 2.0 * hd as f64 * 2.0;
        in_pool(1, || {
            let (mut tf, mut tb) = (0.0, 0.0);
            for _ in 0..reps {
                let t = std::time::Instant::now();
                be.attention_forward(
                    &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
                )
                .unwrap();
                tf += t.elapsed().as_secs_f64();
                let t = std::time::Instant::now();
                be.attention_backward(
                    &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                    heads, kvh, hd,
                )
                .unwrap();
                tb += t.elapsed().as_secs_f64();
            }
            let r = reps as f64;
            println!(
                "batch {batch} seq {seq}: fwd {:.2} ms ({:.1} GFLOP/s), bwd {:.2} ms ({:.1} GFLOP/s)",
                tf / r * 1e3,
                2.0 * flops * r / tf * 1e-9,
                tb / r * 1e3,
                5.0 * flops * r / tb * 1e-9
            );
        });
    }

    #[test]
    fn rejects_bad_starts_and_shapes() {
        let be = CpuBackend::<f32>::new();
        let (mut out, mut lse) = (vec![0.0f32; 2 * 4], vec![0.0f32; 2]);
        let q = vec![0.0f32; 8];
        let kv = vec![0.0f32; 8];
        let err = be
            .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 2], 1, 2, 1, 1, 4)
            .unwrap_err();
        assert!(err.to_string().contains("attention_forward"), "{err}");
        assert!(be
            .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 0], 1, 2, 2, 1, 4)
            .is_err());
        assert!(be
            .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 0], 1, 2, 1, 2, 4)
            .is_err());
    }

    #[test]
    fn thread_count_bit_identity() {
        let be = CpuBackend::<f32>::new();
        let (batch, seq, heads, kvh, hd) = (2, 96, 6, 2, 16);
        let n = batch * seq;
        let mut rng = Rng(25);
        let starts: Vec<u32> = (0..n).map(|t| if t % seq < 40 { 0 } else { 40 }).collect();
        let q = randn_f32(&mut rng, n * heads * hd);
        let k = randn_f32(&mut rng, n * kvh * hd);
        let v = randn_f32(&mut rng, n * kvh * hd);
        let dout = randn_f32(&mut rng, n * heads * hd);
        let run = |threads| {
            in_pool(threads, || {
                let mut out = vec![0.0f32; q.len()];
                let mut lse = vec![0.0f32; n * heads];
                be.attention_forward(
                    &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
                )
                .unwrap();
                let (mut dq, mut dk, mut dv) = (
                    vec![0.0f32; q.len()],
                    vec![0.0f32; k.len()],
                    vec![0.0f32; v.len()],
                );
                be.attention_backward(
                    &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                    heads, kvh, hd,
                )
                .unwrap();
                [out, lse, dq, dk, dv]
            })
        };
        let a = run(1);
        for threads in [2, 3] {
            let b = run(threads);
            for (x, y) in a.iter().zip(&b) {
                assert!(same_bits(x, y), "{threads} threads");
            }
        }
    }
}
