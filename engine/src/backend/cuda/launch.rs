//! Typed launchers of the first kernels, end to end on [`CudaRuntime`]: `cast` (kernels/cast.cu,
//! f32 <-> bf16) and `rmsnorm_forward` (kernels/rmsnorm.cu, f32 and bf16). Each launcher checks
//! dtypes and lengths, takes its grid and block from the comment above the kernel, dispatches
//! on dtype once to the `{op}_{dtype}` kernel and maps launch errors to engine errors naming
//! the kernel and the sizes. The rest of the op set comes with the CUDA Backend.
//! Neighbours: runtime.rs (context, stream, module, buffers), ../../../../kernels/*.cu.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::runtime::{CudaBuf, CudaRuntime};
use crate::error::{Error, Result};

/// Threads per block of every kernel (`BLOCK_THREADS` in kernels/common.cuh; a test checks).
pub const BLOCK_THREADS: u32 = 256;
/// Elements per thread of the cast kernel (one bf16 pack, two f32 packs).
const CAST_PER_THREAD: usize = 8;

/// A 1-D launch of `blocks` blocks of [`BLOCK_THREADS`], or a shape error of `op`.
fn grid_1d(op: &'static str, blocks: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::shape(op, format!("{blocks} blocks exceed the grid limit")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// `Err(shape)` unless buffer `name` of `op` holds `want` values.
fn check_len(op: &'static str, name: &str, buf: &CudaBuf, want: usize, dims: &str) -> Result<()> {
    if buf.len() == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!(
                "{name} has {} values, expected {want} for {dims}",
                buf.len()
            ),
        ))
    }
}

impl CudaRuntime {
    /// `dst[i] = src[i]` converted between f32 and bf16 (round to nearest even, NaN stays
    /// NaN; bf16 -> f32 is exact). One buffer must be f32 and the other bf16, of equal length.
    ///
    /// Launch (kernels/cast.cu): grid ceil(len / (BLOCK_THREADS·8)), block BLOCK_THREADS.
    pub fn cast(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        const OP: &str = "cast";
        let len = src.len();
        check_len(OP, "dst", dst, len, &format!("len {len}"))?;
        if len == 0 {
            return Ok(());
        }
        let cfg = grid_1d(OP, len.div_ceil(BLOCK_THREADS as usize * CAST_PER_THREAD))?;
        let (name, r) = match (dst, src) {
            (CudaBuf::Bf16(d), CudaBuf::F32(s)) => {
                let f = self.function("cast_f32_to_bf16")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(d).arg(s).arg(&len);
                // SAFETY: cast_f32_to_bf16(bf16* dst, const float* src, size_t len): the
                // arguments match in type and order, and both buffers hold `len` values.
                ("cast_f32_to_bf16", unsafe { b.launch(cfg) })
            }
            (CudaBuf::F32(d), CudaBuf::Bf16(s)) => {
                let f = self.function("cast_bf16_to_f32")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(d).arg(s).arg(&len);
                // SAFETY: cast_bf16_to_f32(float* dst, const bf16* src, size_t len): the
                // arguments match in type and order, and both buffers hold `len` values.
                ("cast_bf16_to_f32", unsafe { b.launch(cfg) })
            }
            (d, s) => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "dst is {:?} and src is {:?}; one must be F32 and the other BF16",
                        d.dtype(),
                        s.dtype()
                    ),
                ))
            }
        };
        self.driver(r, || format!("launch {name} (len {len})"))?;
        Ok(())
    }

    /// `out = x * rstd * w` per row with `rstd = 1/sqrt(mean(x²) + eps)` (the semantics of
    /// `Backend::rmsnorm_forward`): `out`, `x` `[n, h]` and `w` `[h]` all f32 or all bf16,
    /// `rstd [n]` f32. Nothing is written when `n` or `h` is 0.
    ///
    /// Launch (kernels/rmsnorm.cu): grid (n), block (BLOCK_THREADS), one block per row.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_forward(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        h: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "rmsnorm_forward";
        let dims = format!("n {n}, h {h}");
        let nh = n
            .checked_mul(h)
            .ok_or_else(|| Error::shape(OP, format!("size of [{n}, {h}] overflows")))?;
        check_len(OP, "out", out, nh, &dims)?;
        check_len(OP, "x", x, nh, &dims)?;
        check_len(OP, "w", w, h, &dims)?;
        check_len(OP, "rstd", rstd, n, &dims)?;
        if n == 0 || h == 0 {
            return Ok(());
        }
        let h32 = i32::try_from(h)
            .map_err(|_| Error::shape(OP, format!("h {h} exceeds the kernel's int width")))?;
        let cfg = grid_1d(OP, n)?;
        let CudaBuf::F32(rstd) = rstd else {
            return Err(Error::shape(OP, "rstd must be F32"));
        };
        let (name, r) = match (out, x, w) {
            (CudaBuf::F32(o), CudaBuf::F32(x), CudaBuf::F32(w)) => {
                let f = self.function("rmsnorm_forward_f32")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(o).arg(rstd).arg(x).arg(w).arg(&h32).arg(&eps);
                // SAFETY: rmsnorm_forward_f32(float* out, float* rstd, const float* x,
                // const float* w, int h, float eps): types and order match, and the lengths
                // were checked against the grid of n rows of h values.
                ("rmsnorm_forward_f32", unsafe { b.launch(cfg) })
            }
            (CudaBuf::Bf16(o), CudaBuf::Bf16(x), CudaBuf::Bf16(w)) => {
                let f = self.function("rmsnorm_forward_bf16")?;
                let mut b = self.stream().launch_builder(&f);
                b.arg(o).arg(rstd).arg(x).arg(w).arg(&h32).arg(&eps);
                // SAFETY: rmsnorm_forward_bf16(bf16* out, float* rstd, const bf16* x,
                // const bf16* w, int h, float eps): types and order match, and the lengths
                // were checked against the grid of n rows of h values.
                ("rmsnorm_forward_bf16", unsafe { b.launch(cfg) })
            }
            (o, x, w) => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "out, x, w are {:?}, {:?}, {:?}; they must share one dtype (F32 or BF16)",
                        o.dtype(),
                        x.dtype(),
                        w.dtype()
                    ),
                ))
            }
        };
        self.driver(r, || format!("launch {name} ({dims})"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_threads_matches_common_cuh() {
        let src = include_str!("../../../../kernels/common.cuh");
        let value = src
            .lines()
            .find_map(|l| l.trim().strip_prefix("#define BLOCK_THREADS "))
            .map(str::trim)
            .expect("kernels/common.cuh defines BLOCK_THREADS");
        assert_eq!(value.parse::<u32>().unwrap(), BLOCK_THREADS);
    }

    #[test]
    fn grid_limit_is_a_shape_error() {
        assert_eq!(grid_1d("t", 5).unwrap().grid_dim, (5, 1, 1));
        let e = grid_1d("t", 1usize << 40).unwrap_err();
        assert!(e.to_string().contains("exceed the grid limit"), "{e}");
    }
}
