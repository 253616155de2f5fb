//! The one typed launcher outside the kernel backend: `cast` (kernels/cast.cu, f32 <-> bf16),
//! for converting weights to bf16 storage. It checks dtypes and lengths, takes its grid from
//! the comment above the kernel and maps launch errors to engine errors naming the kernel and
//! the sizes. Every `Backend` op launches through backend/kernel instead (`CudaDevice`).
//! Neighbours: runtime.rs (context, stream, module, buffers), ../../../../kernels/cast.cu.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::runtime::{CudaBuf, CudaRuntime};
use crate::backend::kernel::{Launch, BLOCK_THREADS};
use crate::error::{Error, Result};

/// Elements per thread of the cast kernel (one bf16 pack, two f32 packs).
const CAST_PER_THREAD: usize = 8;

impl CudaRuntime {
    /// `dst[i] = src[i]` converted between f32 and bf16 (round to nearest even, NaN stays
    /// NaN; bf16 -> f32 is exact). One buffer must be f32 and the other bf16, of equal length.
    ///
    /// Launch (kernels/cast.cu): grid ceil(len / (BLOCK_THREADS·8)), block BLOCK_THREADS.
    pub fn cast(&self, dst: &mut CudaBuf, src: &CudaBuf) -> Result<()> {
        const OP: &str = "cast";
        let len = src.len();
        if dst.len() != len {
            return Err(Error::shape(
                OP,
                format!("dst has {} values, expected {len} for len {len}", dst.len()),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let l = Launch::linear(
            OP,
            len.div_ceil(BLOCK_THREADS as usize * CAST_PER_THREAD),
            BLOCK_THREADS,
        )?;
        let cfg = LaunchConfig {
            grid_dim: (l.grid[0], 1, 1),
            block_dim: (l.block[0], 1, 1),
            shared_mem_bytes: 0,
        };
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
                        d.elem(),
                        s.elem()
                    ),
                ))
            }
        };
        self.driver(r, || format!("launch {name} (len {len})"))?;
        Ok(())
    }
}
