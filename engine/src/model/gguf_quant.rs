//! GGML tensor types and their dequantisation to f32, for the GGUF loader (gguf.rs).
//!
//! [`GgmlType`] names every type id a GGUF file may carry and knows the block layout of the
//! common ones (so the parser can check that each tensor's bytes lie inside the file).
//! [`dequantize`] turns the bytes of an F32, F16, BF16, Q8_0, Q4_0 or Q4_1 tensor into f32
//! values in file order, in parallel over block ranges with rayon; other types are an error
//! naming the tensor and the type.
//!
//! Block layouts (32 values per block, little-endian):
//! - Q8_0: f16 `d`, 32 × i8 `q`; value = q·d (34 bytes).
//! - Q4_0: f16 `d`, 16 bytes of nibbles; value = (q − 8)·d (18 bytes).
//! - Q4_1: f16 `d`, f16 `m`, 16 bytes of nibbles; value = q·d + m (20 bytes).
//!
//! In Q4 blocks byte `j` holds element `j` in its low nibble and element `j + 16` in its high.

use std::path::Path;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A GGML tensor type, by its id in the GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 0: f32.
    F32,
    /// 1: f16.
    F16,
    /// 2: 4-bit, scale only.
    Q4_0,
    /// 3: 4-bit, scale and minimum.
    Q4_1,
    /// 6: 5-bit, scale only.
    Q5_0,
    /// 7: 5-bit, scale and minimum.
    Q5_1,
    /// 8: 8-bit, scale only.
    Q8_0,
    /// 9: 8-bit with a block sum.
    Q8_1,
    /// 10: 2-bit k-quant.
    Q2K,
    /// 11: 3-bit k-quant.
    Q3K,
    /// 12: 4-bit k-quant.
    Q4K,
    /// 13: 5-bit k-quant.
    Q5K,
    /// 14: 6-bit k-quant.
    Q6K,
    /// 15: 8-bit k-quant.
    Q8K,
    /// 24: i8.
    I8,
    /// 25: i16.
    I16,
    /// 26: i32.
    I32,
    /// 27: i64.
    I64,
    /// 28: f64.
    F64,
    /// 30: bfloat16.
    BF16,
    /// Any other id (the i-quants, ternary types, ...): readable metadata, no data layout.
    Other(u32),
}

impl GgmlType {
    /// The type for a GGUF type id.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            24 => GgmlType::I8,
            25 => GgmlType::I16,
            26 => GgmlType::I32,
            27 => GgmlType::I64,
            28 => GgmlType::F64,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The GGUF type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(values per block, bytes per block)`, or `None` for a type whose layout is unknown.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 | GgmlType::I32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 | GgmlType::I16 => (1, 2),
            GgmlType::I8 => (1, 1),
            GgmlType::I64 | GgmlType::F64 => (1, 8),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes taken by `n` values whose fastest dimension is `row`, or an explanation of why
    /// they cannot be stored in this type.
    pub fn byte_size(self, n: u64, row: u64) -> std::result::Result<u64, String> {
        let (block, bytes) = self
            .block_layout()
            .ok_or_else(|| format!("unknown ggml type id {}", self.id()))?;
        let block = block as u64;
        if !row.is_multiple_of(block) {
            return Err(format!(
                "type {} needs the first dimension ({row}) to be a multiple of {block}",
                self.name()
            ));
        }
        (n / block)
            .checked_mul(bytes as u64)
            .ok_or_else(|| "byte size overflows".to_string())
    }

    /// The name llama.cpp uses (`Q4_1`, `F32`, ...).
    pub fn name(self) -> String {
        match self {
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            GgmlType::Other(id) => format!("type{id}"),
            other => format!("{other:?}"),
        }
    }

    /// True for the types [`dequantize`] supports.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
        )
    }
}

/// Blocks handed to one rayon task: large enough to amortise scheduling, small enough to
/// spread one big tensor over every core.
const BLOCKS_PER_TASK: usize = 2048;

/// Dequantise `bytes`, holding `n` values of type `ty`, to f32 in file order.
///
/// `path` and `tensor` name the source for errors: an unsupported type, or a byte count that
/// does not match `n`.
pub fn dequantize(
    path: &Path,
    tensor: &str,
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
) -> Result<Vec<f32>> {
    if !ty.is_supported() {
        return Err(Error::tensor(
            path,
            tensor,
            format!(
                "ggml type {} cannot be dequantised (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                ty.name()
            ),
        ));
    }
    let (block, block_bytes) = ty.block_layout().unwrap_or((1, 4));
    if !n.is_multiple_of(block) || bytes.len() != n / block * block_bytes {
        return Err(Error::tensor(
            path,
            tensor,
            format!(
                "{} bytes of {} do not hold {n} values",
                bytes.len(),
                ty.name()
            ),
        ));
    }
    let mut out = vec![0f32; n];
    let vals_per_task = block * BLOCKS_PER_TASK;
    out.par_chunks_mut(vals_per_task)
        .zip(bytes.par_chunks(block_bytes * BLOCKS_PER_TASK))
        .for_each(|(dst, src)| decode_blocks(ty, src, dst));
    Ok(out)
}

/// Decode whole blocks of `src` into `dst` (sizes already checked to agree).
pub(crate) fn decode_blocks(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (d, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                let scale = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (o, &q) in d.iter_mut().zip(&b[2..34]) {
                    *o = f32::from(q as i8) * scale;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (d, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(18)) {
                let scale = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let (lo, hi) = d.split_at_mut(16);
                for j in 0..16 {
                    let q = b[2 + j];
                    lo[j] = (f32::from(q & 0x0f) - 8.0) * scale;
                    hi[j] = (f32::from(q >> 4) - 8.0) * scale;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (d, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(20)) {
                let scale = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let min = f16::from_le_bytes([b[2], b[3]]).to_f32();
                let (lo, hi) = d.split_at_mut(16);
                for j in 0..16 {
                    let q = b[4 + j];
                    lo[j] = f32::from(q & 0x0f) * scale + min;
                    hi[j] = f32::from(q >> 4) * scale + min;
                }
            }
        }
        // `dequantize` rejects every other type before decoding.
        _ => dst.fill(f32::NAN),
    }
}
