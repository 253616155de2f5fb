//! The CPU backend: the engine's reference semantics. GEMMs through faer, rayon elsewhere.
//! Results are bit-identical for any rayon thread count: work is split into items whose
//! boundaries depend on the problem size only, and every reduction inside an item runs in a
//! fixed order.
//!
//! `CpuBackend<T>` stores `Vec<T>` with `T` in {`f32`, `f64`} (the [`Real`] trait); `f64` is for
//! finite-difference gradient checks. The op kernels live one family per file beside this one
//! (`gemm`, `norm`, `rope`, `attention`, `swiglu`, `xent`, `elementwise`, `adamw`; `simd` holds
//! the vectorised row kernels they share); this file
//! holds the element trait, the shape checks and the `Backend` impl that validates arguments
//! and dispatches to them.

pub(crate) mod adamw; // adamw: torch.optim.AdamW update
mod attention; // attention_forward, attention_backward (causal GQA, packed samples), attention_decode
#[cfg(test)]
mod attention_tests; // naive attention reference and the attention tests
mod elementwise; // axpy, scale, add_bias, sum_squares, embedding, copy_rows, dropout
pub(crate) mod gemm; // gemm through faer
pub(crate) mod gemm_bf16; // bf16 × bf16 → f32 GEMM on AVX512_BF16 (the bf16 mode)
mod norm; // rmsnorm_forward, rmsnorm_backward
mod rope; // rope (forward and inverse rotation)
pub mod simd; // exp_f32 and vectorised row max/exp/sum kernels with AVX2 dispatch
mod swiglu; // swiglu_forward, swiglu_backward
#[cfg(test)]
pub(crate) mod testutil; // splitmix data, finite differences, thread-count checks
mod weight; // CpuWeight: frozen Linear weights, packed ones widened per product
mod xent; // cross_entropy (chunked lm_head + log-softmax)

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::backend::decode_check::{check_copy_rows, DecodeDims};
use crate::backend::{Backend, Precision, RopeTable};
use crate::error::{Error, Result};

pub use elementwise::dropout_keep;
pub(crate) use elementwise::dropout_threshold;
pub use gemm_bf16::available as bf16_available;
pub use weight::CpuWeight;

mod sealed {
    /// Only `f32` and `f64` are CPU element types.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element type of a CPU buffer: `f32` (training) or `f64` (gradient checks).
/// Sealed: implemented for those two types only.
pub trait Real:
    sealed::Sealed
    + faer::traits::ComplexField
    + Copy
    + Default
    + PartialOrd
    + Debug
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// −∞.
    const NEG_INFINITY: Self;
    /// Round (or widen) an f32.
    fn from_f32(x: f32) -> Self;
    /// Round (or keep) to f32.
    fn to_f32(self) -> f32;
    /// Round (or keep) an f64.
    fn from_f64(x: f64) -> Self;
    /// Widen to f64.
    fn to_f64(self) -> f64;
    /// eˣ (libm).
    fn exp(self) -> Self;
    /// eˣ as the vectorisable kernels compute it: [`simd::exp_f32`]'s polynomial for f32,
    /// libm for f64 (gradient checks).
    fn exp_fast(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// The larger of two values (the other one when `self` is NaN).
    fn max(self, other: Self) -> Self;
    /// `self * a + b` with one rounding.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! impl_real {
    ($t:ty, $fast:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                $fast(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}
impl_real!(f32, simd::exp_f32);
impl_real!(f64, f64::exp);

/// The CPU backend, storing `Vec<T>` (`f32` by default; `f64` for gradient checks).
pub struct CpuBackend<T = f32> {
    _elem: PhantomData<fn() -> T>,
    /// bf16 mode (f32 elements only), `Some(min_rows)`: the frozen-weight and lm_head
    /// products of at least `min_rows` rows round their operands to bf16 and accumulate in f32
    /// (`gemm_bf16.rs`); everything else is f32.
    bf16: Option<usize>,
}

impl<T: Real> CpuBackend<T> {
    /// A CPU backend in f32; ops run on the current rayon thread pool.
    pub fn new() -> Self {
        CpuBackend {
            _elem: PhantomData,
            bf16: None,
        }
    }
}

impl CpuBackend<f32> {
    /// A CPU backend in `precision`. [`Precision::Bf16`] here means what autocast means: the
    /// frozen-weight products (`X·Wᵀ`, `dY·W`) and the lm_head products run bf16 × bf16 with
    /// f32 accumulation on AVX512_BF16 (about twice the f32 GEMM rate), while activations,
    /// LoRA products and gradients, attention, norms and the optimiser stay f32. Products of
    /// fewer than [`BF16_MIN_ROWS`] rows (decode steps, tiny evaluations) stay f32 too: packing
    /// the weight into bf16 pairs costs more than bf16 saves on them. Errors on a CPU without
    /// AVX512_BF16, naming what is missing.
    pub fn with_precision(precision: Precision) -> Result<Self> {
        match precision {
            Precision::F32 => Ok(Self::new()),
            Precision::Bf16 if gemm_bf16::available() => Ok(CpuBackend {
                _elem: PhantomData,
                bf16: Some(BF16_MIN_ROWS),
            }),
            Precision::Bf16 => Err(Error::unsupported(
                "precision bf16 on the CPU needs AVX512_BF16 (Zen 4, Sapphire Rapids, Cooper Lake \
                 or later), which this CPU lacks; use `--precision f32` (or bf16 on `--device cuda`)",
            )),
        }
    }
}

/// Rows a product needs for the bf16 mode to run it in bf16 (see
/// [`CpuBackend::with_precision`]; measured in BENCHMARKS.md).
pub const BF16_MIN_ROWS: usize = 64;

impl CpuBackend<f32> {
    /// In the bf16 mode, run products of at least `rows` rows in bf16 (default
    /// [`BF16_MIN_ROWS`]); tests use 1 to reach the bf16 products at tiny shapes. No effect in
    /// f32.
    pub fn with_bf16_min_rows(mut self, rows: usize) -> Self {
        if self.bf16.is_some() {
            self.bf16 = Some(rows);
        }
        self
    }
}

impl<T: Real> CpuBackend<T> {
    /// Whether a product of `m` rows runs in bf16.
    fn bf16_for(&self, m: usize) -> bool {
        self.bf16.is_some_and(|min| m >= min)
    }
}

/// `s` as `&[f32]` when `T` is f32.
fn as_f32<T: Real>(s: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32.
        .then(|| unsafe { &*(s as *const [T] as *const [f32]) })
}

/// `s` as `&mut [f32]` when `T` is f32.
fn as_f32_mut<T: Real>(s: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32.
        .then(|| unsafe { &mut *(s as *mut [T] as *mut [f32]) })
}

impl<T: Real> Default for CpuBackend<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> Clone for CpuBackend<T> {
    fn clone(&self) -> Self {
        CpuBackend {
            _elem: PhantomData,
            bf16: self.bf16,
        }
    }
}

impl<T: Real> Debug for CpuBackend<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.bf16.is_some() {
            ", bf16 products"
        } else {
            ""
        };
        write!(f, "CpuBackend<{}{mode}>", std::any::type_name::<T>())
    }
}

/// `Err(shape)` unless buffer `name` of `op` holds `want` values; `dims` describes the shape.
pub(crate) fn check_len(
    op: &'static str,
    name: &str,
    len: usize,
    want: usize,
    dims: impl FnOnce() -> String,
) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{name} has {len} values, expected {want} for {}", dims()),
        ))
    }
}

/// `a * b * ...` with overflow reported as a shape error of `op`.
pub(crate) fn checked_size(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::shape(op, format!("size of {dims:?} overflows")))
    })
}

impl<T: Real> Backend for CpuBackend<T> {
    type Buf = Vec<T>;
    type Weight = CpuWeight<T>;

    fn upload_weight(&self, w: &crate::model::Frozen) -> Result<CpuWeight<T>> {
        CpuWeight::new(w)
    }

    fn weight_dims(&self, w: &CpuWeight<T>) -> (usize, usize) {
        w.dims()
    }

    fn gemm_weight(
        &self,
        c: &mut Vec<T>,
        a: &Vec<T>,
        w: &CpuWeight<T>,
        m: usize,
        trans_w: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if self.bf16_for(m) {
            if let (Some(c), Some(a)) = (as_f32_mut(c), as_f32(a)) {
                return w.gemm_bf16(c, a, m, trans_w, alpha, beta);
            }
        }
        w.gemm(c, a, m, trans_w, T::from_f32(alpha), T::from_f32(beta))
    }

    fn precision(&self) -> Precision {
        if self.bf16.is_some() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    fn name(&self) -> String {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f64>() {
            "cpu-f64".to_string()
        } else {
            "cpu".to_string()
        }
    }

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<T>> {
        Ok(data.iter().map(|&x| T::from_f32(x)).collect())
    }

    fn download(&self, buf: &Vec<T>) -> Result<Vec<f32>> {
        Ok(buf.iter().map(|&x| x.to_f32()).collect())
    }

    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn fill(&self, buf: &mut Vec<T>, value: f32) -> Result<()> {
        buf.fill(T::from_f32(value));
        Ok(())
    }

    fn copy(&self, dst: &mut Vec<T>, src: &Vec<T>) -> Result<()> {
        check_len("copy", "dst", dst.len(), src.len(), || {
            format!("src [{}]", src.len())
        })?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn gemm(
        &self,
        c: &mut Vec<T>,
        a: &Vec<T>,
        b: &Vec<T>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        let g = gemm::Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        g.check(c.len(), a.len(), b.len())?;
        g.run(c, a, b, T::from_f32(alpha), T::from_f32(beta));
        Ok(())
    }

    fn axpy(&self, x: &mut Vec<T>, alpha: f32, y: &Vec<T>) -> Result<()> {
        check_len("axpy", "y", y.len(), x.len(), || format!("x [{}]", x.len()))?;
        elementwise::axpy(x, T::from_f32(alpha), y);
        Ok(())
    }

    fn scale(&self, x: &mut Vec<T>, alpha: f32) -> Result<()> {
        elementwise::scale(x, T::from_f32(alpha));
        Ok(())
    }

    fn add_bias(&self, x: &mut Vec<T>, bias: &Vec<T>, n: usize, d: usize) -> Result<()> {
        let dims = || format!("n={n}, d={d}");
        check_len(
            "add_bias",
            "x",
            x.len(),
            checked_size("add_bias", &[n, d])?,
            dims,
        )?;
        check_len("add_bias", "bias", bias.len(), d, dims)?;
        elementwise::add_bias(x, bias, d);
        Ok(())
    }

    fn sum_squares(&self, x: &Vec<T>) -> Result<f64> {
        Ok(elementwise::sum_squares(x))
    }

    fn embedding(&self, out: &mut Vec<T>, table: &Vec<T>, ids: &[u32], h: usize) -> Result<()> {
        let dims = || format!("{} ids, h={h}", ids.len());
        check_len(
            "embedding",
            "out",
            out.len(),
            checked_size("embedding", &[ids.len(), h])?,
            dims,
        )?;
        if h == 0 || !table.len().is_multiple_of(h) {
            return Err(Error::shape(
                "embedding",
                format!("table has {} values, not a multiple of h={h}", table.len()),
            ));
        }
        elementwise::embedding(out, table, ids, h)
    }

    fn rmsnorm_forward(
        &self,
        out: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        let op = "rmsnorm_forward";
        let nh = checked_size(op, &[n, h])?;
        let dims = || format!("n={n}, h={h}");
        check_len(op, "out", out.len(), nh, dims)?;
        check_len(op, "x", x.len(), nh, dims)?;
        check_len(op, "w", w.len(), h, dims)?;
        check_len(op, "rstd", rstd.len(), n, dims)?;
        norm::rmsnorm_forward(out, rstd, x, w, h, T::from_f32(eps));
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<T>,
        dout: &Vec<T>,
        x: &Vec<T>,
        w: &Vec<T>,
        rstd: &Vec<T>,
        n: usize,
        h: usize,
    ) -> Result<()> {
        let op = "rmsnorm_backward";
        let nh = checked_size(op, &[n, h])?;
        let dims = || format!("n={n}, h={h}");
        check_len(op, "dx", dx.len(), nh, dims)?;
        check_len(op, "dout", dout.len(), nh, dims)?;
        check_len(op, "x", x.len(), nh, dims)?;
        check_len(op, "w", w.len(), h, dims)?;
        check_len(op, "rstd", rstd.len(), n, dims)?;
        norm::rmsnorm_backward(dx, dout, x, w, rstd, h);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<T>,
        table: &RopeTable<Self>,
        positions: &[u32],
        n: usize,
        heads: usize,
        inverse: bool,
    ) -> Result<()> {
        rope::rope(x, table, positions, n, heads, inverse)
    }

    fn attention_forward(
        &self,
        out: &mut Vec<T>,
        lse: &mut Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let dims =
            attention::Dims::new("attention_forward", starts, batch, seq, heads, kv_heads, hd)?;
        dims.check_q("out", out.len())?;
        dims.check_q("q", q.len())?;
        dims.check_kv("k", k.len())?;
        dims.check_kv("v", v.len())?;
        dims.check_lse("lse", lse.len())?;
        attention::forward(&dims, out, lse, q, k, v, starts);
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
        dout: &Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        out: &Vec<T>,
        lse: &Vec<T>,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let dims = attention::Dims::new(
            "attention_backward",
            starts,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
        )?;
        dims.check_q("dq", dq.len())?;
        dims.check_kv("dk", dk.len())?;
        dims.check_kv("dv", dv.len())?;
        dims.check_q("dout", dout.len())?;
        dims.check_q("q", q.len())?;
        dims.check_kv("k", k.len())?;
        dims.check_kv("v", v.len())?;
        dims.check_q("out", out.len())?;
        dims.check_lse("lse", lse.len())?;
        attention::backward(
            &dims,
            attention::Grads { dq, dk, dv },
            attention::Saved {
                dout,
                q,
                k,
                v,
                out,
                lse,
            },
            starts,
        );
        Ok(())
    }

    fn copy_rows(&self, dst: &mut Vec<T>, src: &Vec<T>, rows: &[u32], width: usize) -> Result<()> {
        check_copy_rows(dst.len(), src.len(), rows, width)?;
        elementwise::copy_rows(dst, src, rows, width);
        Ok(())
    }

    fn attention_decode(
        &self,
        out: &mut Vec<T>,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        first: &[u32],
        last: &[u32],
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<()> {
        let lens = [out.len(), q.len(), k.len(), v.len()];
        let d = DecodeDims::new(lens, first, last, heads, kv_heads, hd)?;
        attention::decode(&d, out, q, k, v, first, last);
        Ok(())
    }

    fn swiglu_forward(&self, out: &mut Vec<T>, gate: &Vec<T>, up: &Vec<T>) -> Result<()> {
        let op = "swiglu_forward";
        let dims = || format!("gate [{}]", gate.len());
        check_len(op, "out", out.len(), gate.len(), dims)?;
        check_len(op, "up", up.len(), gate.len(), dims)?;
        swiglu::forward(out, gate, up);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut Vec<T>,
        dup: &mut Vec<T>,
        dout: &Vec<T>,
        gate: &Vec<T>,
        up: &Vec<T>,
    ) -> Result<()> {
        let op = "swiglu_backward";
        let dims = || format!("gate [{}]", gate.len());
        check_len(op, "dgate", dgate.len(), gate.len(), dims)?;
        check_len(op, "dup", dup.len(), gate.len(), dims)?;
        check_len(op, "dout", dout.len(), gate.len(), dims)?;
        check_len(op, "up", up.len(), gate.len(), dims)?;
        swiglu::backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn dropout(&self, out: &mut Vec<T>, x: &Vec<T>, p: f32, key: u64) -> Result<()> {
        check_len("dropout", "out", out.len(), x.len(), || {
            format!("x [{}]", x.len())
        })?;
        elementwise::dropout(out, x, p, key)
    }

    fn cross_entropy(
        &self,
        dhidden: Option<&mut Vec<T>>,
        hidden: &Vec<T>,
        lm_head: &Vec<T>,
        targets: &[i32],
        n: usize,
        h: usize,
        vocab: usize,
        loss_scale: f32,
    ) -> Result<Vec<f32>> {
        let op = "cross_entropy";
        let dims = || format!("n={n}, h={h}, vocab={vocab}");
        let nh = checked_size(op, &[n, h])?;
        check_len(op, "hidden", hidden.len(), nh, dims)?;
        check_len(
            op,
            "lm_head",
            lm_head.len(),
            checked_size(op, &[vocab, h])?,
            dims,
        )?;
        check_len(op, "targets", targets.len(), n, dims)?;
        if let Some(d) = dhidden.as_deref() {
            check_len(op, "dhidden", d.len(), nh, dims)?;
        }
        xent::cross_entropy(
            dhidden,
            hidden,
            lm_head,
            targets,
            xent::Dims { n, h, vocab },
            T::from_f32(loss_scale),
            self.bf16,
        )
    }

    fn adamw(
        &self,
        param: &mut Vec<T>,
        grad: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        step: u32,
    ) -> Result<()> {
        let op = "adamw";
        let dims = || format!("param [{}]", param.len());
        check_len(op, "grad", grad.len(), param.len(), dims)?;
        check_len(op, "m", m.len(), param.len(), dims)?;
        check_len(op, "v", v.len(), param.len(), dims)?;
        if step == 0 {
            return Err(Error::shape(op, "step is 1-based; got 0"));
        }
        let h = adamw::Hyper::new(lr, beta1, beta2, eps, weight_decay, step);
        adamw::adamw(param, grad, m, v, &h);
        Ok(())
    }
}
