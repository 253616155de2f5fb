//! Vectorisable row kernels shared by the softmax-style ops (`attention.rs`, `xent.rs`):
//! a polynomial `exp` for f32 ([`exp_f32`]), and max / exp / sum loops over a row written so
//! LLVM vectorises them, dispatched at run time to an AVX2 build of the same code when the
//! CPU has it.
//!
//! Determinism: the code is plain IEEE arithmetic with no fused multiply-adds (Rust never
//! contracts `a*b + c`), and every reduction has a fixed order: [`LANES`] partial sums where
//! partial `j` takes elements `i ≡ j (mod LANES)` in index order, then the partials are
//! combined pairwise in a fixed tree. So the SSE2 and AVX2 builds, and any thread count, give
//! the same bits.

use super::Real;

/// Partial accumulators per reduction.
pub(crate) const LANES: usize = 8;

/// `eˣ` for f32 by Cody–Waite range reduction and Cephes' degree-6 polynomial (about 1 ulp on
/// the normal range). `x = n·ln2 + r` with `n = round(x·log2 e)` (by the 1.5·2²³ trick),
/// `eˣ = 2ⁿ·p(r)`; results below the smallest normal (`x < −87.3`) flush to 0, and `x` is
/// capped at 88.7 (near f32's largest finite result). Integer-and-float only, so a CUDA
/// port can reproduce it.
#[inline(always)]
#[allow(clippy::manual_clamp)] // clamp asserts, which blocks vectorisation
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.722_83;
    // Selects rather than `clamp` (which asserts) and wrapping integer ops (no overflow
    // checks), so the loops calling this vectorise in every profile.
    let xc = if x < LO {
        LO
    } else if x > HI {
        HI
    } else {
        x
    };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // n = bits(t) − bits(MAGIC), exactly, for |n| < 2^22.
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // Split 2^n in two factors so n = 128 (x near 88.7) does not overflow the exponent.
    let half = ni >> 1;
    let s1 = f32::from_bits((half.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) as u32) << 23);
    let out = y * s1 * s2;
    if x < LO {
        0.0
    } else {
        out
    }
}

/// Fixed-tree combination of the lane partials.
#[inline(always)]
fn combine<T: Real>(l: [T; LANES]) -> T {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

#[inline(always)]
fn max_impl<T: Real>(x: &[T]) -> T {
    let mut l = [T::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            l[j] = if c[j] > l[j] { c[j] } else { l[j] };
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        l[j] = if v > l[j] { v } else { l[j] };
    }
    let mut m = l[0];
    for &v in &l[1..] {
        m = if v > m { v } else { m };
    }
    m
}

#[inline(always)]
fn exp_sum_impl<T: Real>(x: &mut [T], sub: T) -> T {
    for v in x.iter_mut() {
        *v = (*v - sub).exp_fast();
    }
    sum_impl(x)
}

#[inline(always)]
fn sum_impl<T: Real>(x: &[T]) -> T {
    let mut l = [T::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            l[j] += c[j];
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        l[j] += v;
    }
    combine(l)
}

#[inline(always)]
fn scale_impl<T: Real>(x: &mut [T], c: T) {
    for v in x.iter_mut() {
        *v *= c;
    }
}

#[inline(always)]
fn attn_grad_impl<T: Real>(p: &mut [T], dp: &mut [T], lse: T, d: T, scale: T) {
    for (x, g) in p.iter_mut().zip(dp.iter_mut()) {
        let pv = (*x - lse).exp_fast();
        *x = pv;
        *g = pv * (*g - d) * scale;
    }
}

/// Defines `pub(crate) fn $name` that runs the `#[inline(always)]` generic `$imp` through an
/// AVX2 build of it when the CPU has AVX2, and the baseline build otherwise.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $avx:ident, $imp:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        fn $avx<T: Real>($($arg: $ty),*) -> $ret {
            $imp($($arg),*)
        }

        $(#[$doc])*
        #[inline]
        pub(crate) fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above), the only feature
                // the function is compiled for.
                return unsafe { $avx($($arg),*) };
            }
            $imp($($arg),*)
        }
    };
}

pub(crate) use dispatch;

#[inline(always)]
fn dot_impl<T: Real>(a: &[T], b: &[T]) -> T {
    let mut l = [T::ZERO; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..LANES {
            l[j] += x[j] * y[j];
        }
    }
    for (j, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        l[j] += x * y;
    }
    combine(l)
}

dispatch!(
    /// `Σ a_i·b_i` over the common length, in lane order (see the module doc).
    dot, dot_avx2, dot_impl, (a: &[T], b: &[T]) -> T
);
dispatch!(
    /// The largest value of `x` (−∞ when empty).
    row_max, row_max_avx2, max_impl, (x: &[T]) -> T
);
dispatch!(
    /// `x ← exp(x − sub)`; returns `Σ x` (lane order, see the module doc).
    exp_sub_sum, exp_sub_sum_avx2, exp_sum_impl, (x: &mut [T], sub: T) -> T
);
dispatch!(
    /// `x ← x · c`.
    scale_row, scale_row_avx2, scale_impl, (x: &mut [T], c: T) -> ()
);
dispatch!(
    /// Attention backward on one row of a block: `p ← exp(p − lse)` (p holds the scaled
    /// scores), `dp ← p·(dp − d)·scale`.
    attn_grad_row, attn_grad_row_avx2, attn_grad_impl,
    (p: &mut [T], dp: &mut [T], lse: T, d: T, scale: T) -> ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = f64::from(exp_f32(x));
            let want = f64::from(x).exp();
            worst = worst.max((got - want).abs() / want);
            x += 0.001_37;
        }
        assert!(
            worst < 3.0 * f64::from(f32::EPSILON),
            "worst relative error {worst}"
        );
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(88.7).is_finite());
    }

    #[test]
    fn reductions_match_scalar_versions() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.01 - 0.3)
            .collect();
        assert_eq!(
            row_max(&x),
            x.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        );
        let mut y = x.clone();
        let s = exp_sub_sum(&mut y, 0.5);
        let want: f64 = x.iter().map(|&v| f64::from(v - 0.5).exp()).sum();
        assert!((f64::from(s) - want).abs() < 1e-5 * want);
        assert_eq!(sum_impl(&y), s);
        let mut z = y.clone();
        scale_row(&mut z, 2.0);
        assert!(z.iter().zip(&y).all(|(a, b)| *a == 2.0 * b));
        assert_eq!(row_max::<f32>(&[]), f32::NEG_INFINITY);
        let d = dot(&x, &y);
        let want: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        assert!((f64::from(d) - want).abs() < 1e-5 * want.abs().max(1.0));
    }
}
