//! bf16 GEMM of the CPU backend's bf16 mode: `C = beta·C + alpha·A·op(B)` with f32 `A`, `B`
//! and `C`, computed as autocast would on a GPU: both operands rounded to bf16 (nearest
//! even), products summed in f32. The AVX512_BF16 instruction `vdpbf16ps` does 32
//! multiply-adds per instruction against the 16 of an f32 FMA, so on CPUs that have it
//! (Zen 4 and later, Sapphire Rapids, Cooper Lake) the frozen-weight products run up to twice
//! as fast as the f32 GEMM (BENCHMARKS.md measures it).
//!
//! Layout (GotoBLAS style): `k` is cut into [`KC`] blocks, `n` into [`NC`] blocks whose B
//! values are packed as bf16 pairs `(k, k+1)` per column, [`NR`] columns per panel; A rows are
//! packed [`MR`] at a time as pairs too, and a 12 × 32 register tile (24 accumulators) takes
//! one pair per `vdpbf16ps`. Odd `k` is padded with a zero half; ragged tiles
//! compute into a scratch tile whose extra rows and columns are dropped.
//!
//! Determinism: every element of C is one chain over `k` in ascending pairs, started from
//! C's old value (beta = 1) or zero and continued across `k` blocks through C, whatever the
//! tile, task or thread. So results are bit-identical for any thread count and any number
//! of rows `m` (a row's result does not depend on its neighbours). The instruction treats
//! denormal inputs as zero and, per Intel's SDM, computes `(acc + a₁b₁) + a₀b₀` with exact
//! products and each add rounded to nearest even; a test checks every element against that
//! chain bit for bit (it held on an AMD EPYC too: 3.2M of 3.2M random lanes), so bf16 results
//! are reproducible across CPUs that implement the documented instruction.
//!
//! Only `A` row-major (`[m, k]`) is supported: the callers are the frozen-weight products
//! (`X·Wᵀ`, `dY·W`) and the lm_head products of the cross-entropy.

use rayon::prelude::*;

use super::gemm::Gemm;

/// Rows of the register tile.
pub(crate) const MR: usize = 12;
/// Columns of the register tile (two 16-lane registers).
pub(crate) const NR: usize = 32;
/// `k` values per block (even).
const KC: usize = 256;
/// Columns of C per packed block of B.
const NC: usize = 768;
/// Rows of A per packed block.
const MC: usize = 8 * MR;
/// Multiply-adds per parallel task, at least.
const TASK_MAC: usize = 1 << 21;
/// At most this many parallel tasks per product.
const MAX_TASKS: usize = 8;

/// Whether this CPU runs the bf16 kernel (AVX-512F, AVX-512BW and AVX512_BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 as `vcvtneps2bf16` does: nearest, ties to even; denormals flushed to
/// a signed zero; NaN stays a quiet NaN. Returns the bit pattern.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The pair `(lo, hi)` as one 32-bit word, `lo` in the low half (the instruction's element
/// `2j`).
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16_bits(lo)) | (u32::from(bf16_bits(hi)) << 16)
}

/// `dst[p] = pair(src[2p], src[2p + 1])`, a missing last value taken as 0; `dst` holds
/// `⌈src.len() / 2⌉` words.
fn row_to_pairs(src: &[f32], dst: &mut [u32]) {
    let done = {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: callers run only where `available()` holds.
            unsafe { row_to_pairs_avx512(src, dst) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            0
        }
    };
    let mut pairs = src[2 * done..].chunks_exact(2);
    for (d, two) in dst[done..].iter_mut().zip(pairs.by_ref()) {
        *d = pair(two[0], two[1]);
    }
    if let [last] = pairs.remainder() {
        dst[src.len() / 2] = pair(*last, 0.0);
    }
}

/// The vector part of [`row_to_pairs`]: whole groups of 32 values; returns the words written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn row_to_pairs_avx512(src: &[f32], dst: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let groups = src.len() / 32;
    for g in 0..groups {
        let lo = _mm512_loadu_ps(src.as_ptr().add(32 * g));
        let hi = _mm512_loadu_ps(src.as_ptr().add(32 * g + 16));
        // low 16 bf16 from `lo`, high 16 from `hi`: the 32 values in order, 16 pair words
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().add(16 * g).cast(), v);
    }
    16 * groups
}

thread_local! {
    /// Packing buffers of finished products on this thread, reused: fresh ones would
    /// page-fault on first touch (tens of ms for the lm_head's 28M values).
    static POOL: std::cell::RefCell<Vec<Vec<u32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of `len` words, from this thread's pool when it has one, not cleared: the
/// packers write every word a stored element of C reads (the odd-`k` pad half included);
/// the rest, the rows of a last tile past `m` and the columns of a last panel past `n`, only
/// reach tile elements outside C, which are never stored.
fn scratch(len: usize) -> Vec<u32> {
    let mut v = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    v.truncate(len);
    v.resize(len, 0);
    v
}

/// Returns `v` to this thread's pool (at most two kept: A and B of one product).
fn recycle(v: Vec<u32>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < 2 {
            p.push(v);
        }
    });
}

/// `dst[j] = pair(r0[j], r1[j])` (`r1` missing: zeros), for the rows `2p`, `2p + 1` of a
/// `[k, n]` B.
fn interleave_pairs(r0: &[f32], r1: Option<&[f32]>, dst: &mut [u32]) {
    let done = match r1 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers run only where `available()` holds.
        Some(r1) => unsafe { interleave_pairs_avx512(r0, r1, dst) },
        _ => 0,
    };
    for (j, d) in dst.iter_mut().enumerate().skip(done) {
        *d = pair(r0[j], r1.map_or(0.0, |r| r[j]));
    }
}

/// The vector part of [`interleave_pairs`]: whole groups of 16 columns; returns the words
/// written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_pairs_avx512(r0: &[f32], r1: &[f32], dst: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    // bf16 element i of r0 sits at 16-bit slot i, of r1 at 16 + i; want r0[j], r1[j] adjacent
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let groups = dst.len().min(r0.len()).min(r1.len()) / 16;
    for g in 0..groups {
        let lo = _mm512_loadu_ps(r0.as_ptr().add(16 * g));
        let hi = _mm512_loadu_ps(r1.as_ptr().add(16 * g));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(
            dst.as_mut_ptr().add(16 * g).cast(),
            _mm512_permutexvar_epi16(idx, v),
        );
    }
    16 * groups
}

/// `A [m, k]` as bf16 pairs in tiles of [`MR`] rows: tile `t` holds `kp = ⌈k/2⌉` rows of `MR`
/// words (`[t][p][i]`); rows past `m` are unspecified (see [`scratch`]).
struct PackedA {
    kp: usize,
    data: Vec<u32>,
}

fn pack_a(a: &[f32], m: usize, k: usize) -> PackedA {
    PackedA {
        kp: k.div_ceil(2),
        data: pack_rows(a, m, k, MR),
    }
}

/// The rows of a row-major `[rows, k]` matrix as bf16 pairs in groups of `width` rows: group
/// `g` holds `⌈k/2⌉` rows of `width` words, word `[g][p][i]` the pair `p` of row
/// `g·width + i`. A's tiles (`width` = [`MR`]) and, for `X·Wᵀ`, B's panels ([`NR`]).
fn pack_rows(src: &[f32], rows: usize, k: usize, width: usize) -> Vec<u32> {
    let kp = k.div_ceil(2);
    let mut data = scratch(rows.div_ceil(width) * kp * width);
    data.par_chunks_mut((kp * width).max(1))
        .enumerate()
        .for_each_init(
            || vec![0u32; kp],
            |row, (g, group)| {
                for ii in 0..width.min(rows - g * width) {
                    let i = g * width + ii;
                    row_to_pairs(&src[i * k..(i + 1) * k], row);
                    for (p, &w) in row.iter().enumerate() {
                        group[p * width + ii] = w;
                    }
                }
            },
        );
    data
}

impl Drop for PackedA {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.data));
    }
}

/// `op(B)` (`[k, n]`) as bf16 pairs in panels of [`NR`] columns: panel `q` holds `kp = ⌈k/2⌉`
/// rows of `NR` words (`[q][p][j]`); columns past `n` are unspecified (see [`scratch`]).
/// Pack a matrix once and multiply it with many `A`s through [`gemm_packed`].
pub(crate) struct PackedB {
    n: usize,
    k: usize,
    kp: usize,
    data: Vec<u32>,
}

impl Drop for PackedB {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.data));
    }
}

/// Packs `b`: `[n, k]` when `trans_b` (a Linear weight for `X·Wᵀ`), else `[k, n]`.
pub(crate) fn pack_b(b: &[f32], n: usize, k: usize, trans_b: bool) -> PackedB {
    let kp = k.div_ceil(2);
    let data = if trans_b {
        pack_rows(b, n, k, NR)
    } else {
        let mut data = scratch(n.div_ceil(NR) * kp * NR);
        data.par_chunks_mut((kp * NR).max(1))
            .enumerate()
            .for_each(|(q, panel)| {
                let cols = NR.min(n - q * NR);
                for p in 0..kp {
                    let r0 = &b[2 * p * n + q * NR..][..cols];
                    let r1 = (2 * p + 1 < k).then(|| &b[(2 * p + 1) * n + q * NR..][..cols]);
                    interleave_pairs(r0, r1, &mut panel[p * NR..p * NR + cols]);
                }
            });
        data
    };
    PackedB { n, k, kp, data }
}

/// A raw pointer to C shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint elements of C (disjoint row or column ranges), and the
// buffer outlives the parallel scope that uses it.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

/// `c = beta·c + alpha·a·op(b)` with `a [m, k]` row-major (`g.trans_a` must be false) and `b`
/// `[n, k]` (`g.trans_b`) or `[k, n]`. Lengths must have passed [`Gemm::check`]; the caller
/// has checked [`available`]. `beta == 0` overwrites `c` without reading it.
pub(crate) fn gemm(g: Gemm, c: &mut [f32], a: &[f32], b: &[f32], alpha: f32, beta: f32) {
    assert!(!g.trans_a, "gemm_bf16: A must be row-major");
    let pb = pack_b(b, g.n, g.k, g.trans_b);
    gemm_packed(c, a, g.m, &pb, alpha, beta);
}

/// [`gemm`] with `op(b)` packed by [`pack_b`]: `c [m, n] = beta·c + alpha·a [m, k]·op(b)`.
pub(crate) fn gemm_packed(c: &mut [f32], a: &[f32], m: usize, b: &PackedB, alpha: f32, beta: f32) {
    assert!(available(), "gemm_bf16: this CPU lacks AVX512_BF16");
    let (n, k) = (b.n, b.k);
    assert!(
        c.len() == m * n && a.len() == m * k,
        "gemm_bf16: c [{}] and a [{}] do not fit m={m}, n={n}, k={k}",
        c.len(),
        a.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let pa = pack_a(a, m, k);
    if alpha == 1.0 && (beta == 0.0 || beta == 1.0) {
        run(m, c, &pa, b, beta == 1.0);
        return;
    }
    let mut t = vec![0.0f32; m * n];
    run(m, &mut t, &pa, b, false);
    if beta == 0.0 {
        c.iter_mut().zip(&t).for_each(|(c, &t)| *c = alpha * t);
    } else {
        c.iter_mut()
            .zip(&t)
            .for_each(|(c, &t)| *c = beta * *c + alpha * t);
    }
}

/// `c (+)= a·op(b)`: parallel over blocks of rows, or of columns when there are few rows.
fn run(m: usize, c: &mut [f32], a: &PackedA, b: &PackedB, accumulate: bool) {
    let (n, k) = (b.n, b.k);
    let tasks = (m.saturating_mul(n).saturating_mul(k) / TASK_MAC).clamp(1, MAX_TASKS);
    let cp = CPtr(c.as_mut_ptr());
    // rows when there are at least as many as columns, else columns (the lm_head's 49,152
    // columns against 128 rows)
    let ranges: Vec<((usize, usize), (usize, usize))> = if m >= n || n < 2 * NR {
        let block = m.div_ceil(tasks).next_multiple_of(MR);
        (0..m)
            .step_by(block)
            .map(|r| ((r, (r + block).min(m)), (0, n)))
            .collect()
    } else {
        let block = n.div_ceil(tasks).next_multiple_of(NR);
        (0..n)
            .step_by(block)
            .map(|s| ((0, m), (s, (s + block).min(n))))
            .collect()
    };
    let task = |&(rows, cols): &((usize, usize), (usize, usize))| {
        // SAFETY: the tasks' `rows × cols` rectangles are disjoint and inside C, and
        // `gemm_packed` checked `available()`.
        unsafe { rect(n, k, cp, a, b, rows, cols, accumulate) }
    };
    if ranges.len() == 1 {
        task(&ranges[0]);
    } else {
        ranges.par_iter().for_each(task);
    }
}

/// Computes the rectangle `rows × cols` of C (`[m, n]`), `rows` starting at a multiple of
/// [`MR`] and `cols` at a multiple of [`NR`].
///
/// # Safety
/// `c` points to C (alive and not accessed elsewhere inside the rectangle), the rectangle
/// lies inside it, and the CPU has AVX512_BF16.
#[allow(clippy::too_many_arguments)]
unsafe fn rect(
    n: usize,
    k: usize,
    c: CPtr,
    a: &PackedA,
    b: &PackedB,
    rows: (usize, usize),
    cols: (usize, usize),
    accumulate: bool,
) {
    let mut edge = [0.0f32; MR * NR];
    // a C block of MC × NC stays in L2 while k runs through it; each k block's B panels
    // (KC × NC bf16) are reused across the block's MC rows
    for n0 in (cols.0..cols.1).step_by(NC) {
        let nc = NC.min(cols.1 - n0);
        for m0 in (rows.0..rows.1).step_by(MC) {
            let mc = MC.min(rows.1 - m0);
            for k0 in (0..k.max(1)).step_by(KC) {
                let (p0, kpb) = (k0 / 2, KC.min(k - k0).div_ceil(2));
                let load = accumulate || k0 > 0;
                for j0 in (n0..n0 + nc).step_by(NR) {
                    let bp = b.data.as_ptr().add((j0 / NR * b.kp + p0) * NR);
                    let cn = NR.min(n - j0);
                    for i0 in (m0..m0 + mc).step_by(MR) {
                        let ap = a.data.as_ptr().add((i0 / MR * a.kp + p0) * MR);
                        let cm = MR.min(rows.1 - i0);
                        let cij = c.0.add(i0 * n + j0);
                        if cm == MR && cn == NR {
                            kernel(kpb, ap, bp, cij, n, load);
                        } else {
                            for i in 0..cm {
                                for j in 0..cn {
                                    edge[i * NR + j] = if load { *cij.add(i * n + j) } else { 0.0 };
                                }
                            }
                            kernel(kpb, ap, bp, edge.as_mut_ptr(), NR, true);
                            for i in 0..cm {
                                for j in 0..cn {
                                    *cij.add(i * n + j) = edge[i * NR + j];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The `MR × NR` register tile: `c[i, j] (+)= Σ_p a_pair(p, i) · b_pair(p, j)` over `kp`
/// pairs, `c` with row stride `ldc`, starting from `c`'s values when `load`.
///
/// # Safety
/// `a` holds `kp · MR` words, `b` `kp · NR`, `c` an `MR × NR` tile with stride `ldc`; the CPU
/// has AVX512_BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel(kp: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if load {
        for (i, r) in acc.iter_mut().enumerate() {
            r[0] = _mm512_loadu_ps(c.add(i * ldc));
            r[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
        }
    }
    for p in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        let ap = a.add(p * MR);
        for (i, r) in acc.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
            r[0] = _mm512_dpbf16_ps(r[0], ai, b0);
            r[1] = _mm512_dpbf16_ps(r[1], ai, b1);
        }
    }
    for (i, r) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * ldc), r[0]);
        _mm512_storeu_ps(c.add(i * ldc + 16), r[1]);
    }
}

/// Never called: [`available`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: usize, _: *const u32, _: *const u32, _: *mut f32, _: usize, _: bool) {
    unreachable!("gemm_bf16 needs x86-64 AVX512_BF16")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{in_pool, randn_f32, same_bits, Rng};

    /// Whether the kernel cannot run on this CPU (after printing that the test is skipped).
    fn unavailable() -> bool {
        let no = !available();
        if no {
            eprintln!("skipped: this CPU has no AVX512_BF16 (the kernel cannot run here)");
        }
        no
    }

    /// `x` rounded to bf16, as f32.
    fn bf(x: f32) -> f32 {
        f32::from_bits(u32::from(bf16_bits(x)) << 16)
    }

    /// `op(b)[kk, j]`.
    fn b_at(g: Gemm, b: &[f32], kk: usize, j: usize) -> f32 {
        if g.trans_b {
            b[j * g.k + kk]
        } else {
            b[kk * g.n + j]
        }
    }

    /// `alpha·a·op(b) + beta·c` in f64 on the bf16-rounded operands.
    fn reference(g: Gemm, c: &[f32], a: &[f32], b: &[f32], alpha: f32, beta: f32) -> Vec<f64> {
        let Gemm { m, n, k, .. } = g;
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| f64::from(bf(a[i * k + kk])) * f64::from(bf(b_at(g, b, kk, j))))
                    .sum();
                let old = if beta == 0.0 {
                    0.0
                } else {
                    f64::from(beta) * f64::from(c[i * n + j])
                };
                out[i * n + j] = f64::from(alpha) * s + old;
            }
        }
        out
    }

    /// Random `a [m, k]`, `b` (`n·k` values) and `c [m, n]`.
    fn operands(rng: &mut Rng, g: Gemm) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (a, b) = (randn_f32(rng, g.m * g.k), randn_f32(rng, g.n * g.k));
        (a, b, randn_f32(rng, g.m * g.n))
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        let cases = [
            (1.0f32, 0x3f80u16),
            (f32::from_bits(0x3f80_8000), 0x3f80), // tie, even stays
            (f32::from_bits(0x3f81_8000), 0x3f82), // tie, odd rounds up
            (f32::from_bits(0x3f80_8001), 0x3f81),
            (-2.5, 0xc020),
            (f32::INFINITY, 0x7f80),
            (f32::MAX, 0x7f80), // rounds to infinity
            (1e-39, 0x0000),    // denormal: flushed
            (-1e-39, 0x8000),
        ];
        for (x, want) in cases {
            assert_eq!(bf16_bits(x), want, "{x:e} ({:#x})", x.to_bits());
        }
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
    }

    #[test]
    fn matches_the_f64_product_of_the_rounded_operands_at_every_shape() {
        if unavailable() {
            return;
        }
        let mut rng = Rng(7);
        // ragged in every dim: tails of MR, NR, KC, NC and an odd k
        for &(m, n, k, trans_b, alpha, beta) in &[
            (1, 1, 1, true, 1.0, 0.0),
            (13, 33, 7, true, 1.0, 0.0),
            (25, 70, 257, false, 1.0, 1.0),
            (100, 800, 600, true, 1.0, 0.0),
            (37, 45, 513, false, 0.5, 0.25),
            (24, 64, 64, true, -1.0, 1.0),
        ] {
            let g = Gemm {
                m,
                n,
                k,
                trans_a: false,
                trans_b,
            };
            let (a, b, c0) = operands(&mut rng, g);
            let want = reference(g, &c0, &a, &b, alpha, beta);
            let mut c = c0.clone();
            gemm(g, &mut c, &a, &b, alpha, beta);
            for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                // f32 accumulation of k exact products: a few ulps of the magnitudes
                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs()) + 1e-6 * k as f64;
                assert!(
                    (f64::from(got) - w).abs() <= tol,
                    "m={m} n={n} k={k} trans_b={trans_b}: c[{i}] = {got}, want {w}"
                );
            }
        }
    }

    #[test]
    fn bits_do_not_depend_on_threads_or_on_the_other_rows() {
        if unavailable() {
            return;
        }
        let mut rng = Rng(11);
        let (m, n, k) = (200, 300, 700);
        let a = randn_f32(&mut rng, m * k);
        let b = randn_f32(&mut rng, n * k);
        let g = Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
        };
        let full = |threads: usize| {
            in_pool(threads, || {
                let mut c = vec![f32::NAN; m * n];
                gemm(g, &mut c, &a, &b, 1.0, 0.0);
                c
            })
        };
        let one = full(1);
        for t in [2, 3, 8] {
            assert!(same_bits(&one, &full(t)), "{t} threads");
        }
        // rows 37..41 alone give the same bits as inside the full product
        let (r0, r1) = (37, 41);
        let mut part = vec![0.0f32; (r1 - r0) * n];
        gemm(
            Gemm { m: r1 - r0, ..g },
            &mut part,
            &a[r0 * k..r1 * k],
            &b,
            1.0,
            0.0,
        );
        assert!(same_bits(&part, &one[r0 * n..r1 * n]));
    }

    /// Through the backend: `gemm_weight` with at least `BF16_MIN_ROWS` rows runs in bf16
    /// (other bits than f32, close to them); with fewer (a decode step) exactly the f32 bits.
    #[test]
    fn the_backend_runs_products_of_few_rows_in_f32() {
        use crate::backend::cpu::{CpuBackend, BF16_MIN_ROWS};
        use crate::backend::{Backend, Precision};
        use crate::model::Frozen;
        use crate::Tensor;
        if unavailable() {
            return;
        }
        let bf = CpuBackend::<f32>::with_precision(Precision::Bf16).unwrap();
        let f = CpuBackend::<f32>::new();
        let mut rng = Rng(21);
        let (rows, cols) = (96, 80);
        let w =
            Frozen::from(Tensor::new(vec![rows, cols], randn_f32(&mut rng, rows * cols)).unwrap());
        let (wb, wf) = (bf.upload_weight(&w).unwrap(), f.upload_weight(&w).unwrap());
        for m in [1, BF16_MIN_ROWS - 1, BF16_MIN_ROWS] {
            let x = randn_f32(&mut rng, m * cols);
            let (mut yb, mut yf) = (vec![0.0; m * rows], vec![0.0; m * rows]);
            bf.gemm_weight(&mut yb, &x, &wb, m, true, 1.0, 0.0).unwrap();
            f.gemm_weight(&mut yf, &x, &wf, m, true, 1.0, 0.0).unwrap();
            if m < BF16_MIN_ROWS {
                assert!(same_bits(&yb, &yf), "m={m}: not the f32 product");
            } else {
                assert!(!same_bits(&yb, &yf), "m={m}: not the bf16 product");
                for (b, f) in yb.iter().zip(&yf) {
                    assert!((b - f).abs() < 0.1 + 2e-2 * f.abs(), "m={m}: {b} vs {f}");
                }
            }
        }
    }

    /// Every element of C is Intel's documented `vdpbf16ps` chain, in f32 step by step:
    /// for each pair `p` of `k`, `acc = (acc + a[2p+1]·b[2p+1]) + a[2p]·b[2p]` (bf16 products
    /// are exact in f32; each add rounds to nearest even), from 0 or C's old value. A CPU
    /// whose instruction computes anything else fails here, and its bf16 results would not
    /// be reproducible on other CPUs.
    #[test]
    fn each_element_is_the_documented_instruction_chain() {
        if unavailable() {
            return;
        }
        let mut rng = Rng(31);
        for &(m, n, k, trans_b, beta) in &[(13, 37, 301, true, 0.0), (30, 70, 600, false, 1.0)] {
            let g = Gemm {
                m,
                n,
                k,
                trans_a: false,
                trans_b,
            };
            let (a, b, c0) = operands(&mut rng, g);
            let mut c = c0.clone();
            gemm(g, &mut c, &a, &b, 1.0, beta);
            let prod = |kk: usize, i: usize, j: usize| bf(a[i * k + kk]) * bf(b_at(g, &b, kk, j));
            for i in 0..m {
                for j in 0..n {
                    let mut acc = if beta == 0.0 { 0.0f32 } else { c0[i * n + j] };
                    for p in 0..k.div_ceil(2) {
                        let (lo, hi) = (2 * p, 2 * p + 1);
                        let p_hi = if hi < k { prod(hi, i, j) } else { 0.0 };
                        acc = (acc + p_hi) + prod(lo, i, j);
                    }
                    assert_eq!(
                        c[i * n + j].to_bits(),
                        acc.to_bits(),
                        "m={m} n={n} k={k}: c[{i}, {j}]"
                    );
                }
            }
        }
    }
}
