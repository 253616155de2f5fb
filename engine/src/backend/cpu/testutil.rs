//! Test helpers for the CPU op tests: a splitmix64 generator for data, a rayon pool of a
//! given size, bit-identity comparison and a central finite-difference gradient check.

/// A tiny deterministic generator (splitmix64).
pub(crate) struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Roughly standard normal (sum of four uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }
}

/// `len` roughly standard-normal values.
pub(crate) fn randn(rng: &mut Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.normal()).collect()
}

/// `len` roughly standard-normal f32 values.
pub(crate) fn randn_f32(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// Run `f` inside a fresh rayon pool of `threads` threads.
pub(crate) fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
        .install(f)
}

/// True when the two slices hold the same bits.
pub(crate) fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Central finite differences of the scalar `f` at `x`, compared against `grad`, on the
/// given indices (all when `None`). Panics naming `what` and the index on a mismatch
/// beyond `tol` (relative to max(1, |fd|)).
pub(crate) fn check_grad(
    what: &str,
    x: &[f64],
    grad: &[f64],
    indices: Option<&[usize]>,
    tol: f64,
    mut f: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient length");
    let all: Vec<usize> = (0..x.len()).collect();
    let idx = indices.unwrap_or(&all);
    let h = 1e-6;
    let mut xp = x.to_vec();
    for &i in idx {
        xp[i] = x[i] + h;
        let fp = f(&xp);
        xp[i] = x[i] - h;
        let fm = f(&xp);
        xp[i] = x[i];
        let fd = (fp - fm) / (2.0 * h);
        let err = (fd - grad[i]).abs() / fd.abs().max(1.0);
        assert!(
            err < tol,
            "{what}[{i}]: analytic {} vs finite difference {fd}",
            grad[i]
        );
    }
}

/// Σ wᵢ·yᵢ: a random linear functional used to turn an op's output into a scalar loss.
pub(crate) fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}
