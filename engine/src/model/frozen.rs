//! Frozen weight matrices in the encoding their file stored them in.
//!
//! A [`Frozen`] matrix is either dense f32 or packed: the rows of a GGUF tensor as its blocks
//! (Q4_0, Q4_1, Q8_0: 32 values per block along the row) or 16-bit floats (F16, BF16). The
//! CPU backend keeps packed matrices packed and widens one to f32 just before each GEMM that
//! reads it (`backend::cpu`'s `gemm_weight`), through the same decoder the loader uses
//! (`gguf_quant::decode_blocks`), so the values multiplied are bit for bit those of a
//! dense load: SmolLM2-135M's 210 Q4_1 matrices take 66 MB instead of 405 MiB. Backends that
//! store weights in their own precision widen them once, on upload ([`Frozen::to_tensor`]).
//!
//! Neighbours: gguf_load.rs (makes packed matrices), gguf_quant.rs (block layouts and the
//! decoder), mod.rs (`LayerWeights` holds one per Linear), llama.rs (uploads them).

use rayon::prelude::*;

use super::gguf_quant::{decode_blocks, GgmlType};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Values decoded per rayon task (the loader's task size).
const VALUES_PER_TASK: usize = 1 << 16;

/// A frozen `[rows, cols]` weight matrix, dense or packed (see the module doc).
#[derive(Clone, PartialEq)]
pub struct Frozen {
    /// `[rows, cols]`.
    shape: Vec<usize>,
    store: Store,
}

#[derive(Clone, PartialEq)]
enum Store {
    Dense(Tensor),
    /// `rows × row_bytes` bytes of `ty`.
    Packed {
        ty: GgmlType,
        bytes: Vec<u8>,
        row_bytes: usize,
    },
}

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frozen({} {:?})", self.encoding(), self.shape)
    }
}

impl From<Tensor> for Frozen {
    /// A dense matrix.
    fn from(t: Tensor) -> Self {
        Frozen {
            shape: t.shape.clone(),
            store: Store::Dense(t),
        }
    }
}

impl Frozen {
    /// A packed `[rows, cols]` matrix of GGML type `ty` (F16, BF16, Q8_0, Q4_0 or Q4_1) from its
    /// row-major bytes; errors (naming `what`) when the type cannot be packed or the byte count
    /// does not hold `rows × cols` values.
    pub fn packed(
        what: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self> {
        let packable = matches!(
            ty,
            GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1
        );
        let bad = |msg: String| Error::shape("frozen weight", format!("{what}: {msg}"));
        let Some((block, block_bytes)) = ty.block_layout().filter(|_| packable) else {
            return Err(bad(format!(
                "ggml type {} is not kept packed (F16, BF16, Q8_0, Q4_0, Q4_1 are)",
                ty.name()
            )));
        };
        if !cols.is_multiple_of(block) {
            return Err(bad(format!(
                "{cols} columns are not whole {}-value blocks of {}",
                block,
                ty.name()
            )));
        }
        let row_bytes = cols / block * block_bytes;
        if Some(bytes.len()) != rows.checked_mul(row_bytes) {
            return Err(bad(format!(
                "{} bytes of {} do not hold [{rows}, {cols}]",
                bytes.len(),
                ty.name()
            )));
        }
        Ok(Frozen {
            shape: vec![rows, cols],
            store: Store::Packed {
                ty,
                bytes,
                row_bytes,
            },
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for a packed matrix.
    pub fn is_packed(&self) -> bool {
        matches!(self.store, Store::Packed { .. })
    }

    /// The stored encoding: `F32` for a dense matrix, else the GGML type name (`Q4_1`, ...).
    pub fn encoding(&self) -> String {
        match &self.store {
            Store::Dense(_) => "F32".to_string(),
            Store::Packed { ty, .. } => ty.name(),
        }
    }

    /// Bytes of storage.
    pub fn stored_bytes(&self) -> usize {
        match &self.store {
            Store::Dense(t) => 4 * t.len(),
            Store::Packed { bytes, .. } => bytes.len(),
        }
    }

    /// Writes the values, row-major, into `out` (`len()` values): a copy for a dense matrix,
    /// else the loader's decoder in parallel over row ranges (bit-identical to a dense load).
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.len() {
            return Err(Error::shape(
                "frozen weight",
                format!("{} values asked of a {:?} matrix", out.len(), self.shape),
            ));
        }
        match &self.store {
            Store::Dense(t) => out.copy_from_slice(&t.data),
            Store::Packed {
                ty,
                bytes,
                row_bytes,
            } => {
                let cols = self.shape[1].max(1);
                let rows_per_task = (VALUES_PER_TASK / cols).max(1);
                out.par_chunks_mut(rows_per_task * cols)
                    .zip(bytes.par_chunks(rows_per_task * row_bytes))
                    .for_each(|(dst, src)| decode_blocks(*ty, src, dst));
            }
        }
        Ok(())
    }

    /// The values as a dense tensor of shape `[rows, cols]`.
    pub fn to_tensor(&self) -> Tensor {
        match &self.store {
            Store::Dense(t) => t.clone(),
            Store::Packed { .. } => {
                let mut data = vec![0f32; self.len()];
                // the length is ours, so this cannot fail
                let _ = self.dequantize_into(&mut data);
                Tensor {
                    shape: self.shape.clone(),
                    data,
                }
            }
        }
    }

    /// The dense tensor, when the matrix is dense.
    pub fn as_dense(&self) -> Option<&Tensor> {
        match &self.store {
            Store::Dense(t) => Some(t),
            Store::Packed { .. } => None,
        }
    }

    /// The values as a dense tensor, borrowed when dense, widened when packed.
    pub fn dense(&self) -> std::borrow::Cow<'_, Tensor> {
        match &self.store {
            Store::Dense(t) => std::borrow::Cow::Borrowed(t),
            Store::Packed { .. } => std::borrow::Cow::Owned(self.to_tensor()),
        }
    }

    /// The dense tensor to change in place (a packed matrix is widened to f32 first, for
    /// good: a merge writes new values no packing could hold).
    pub fn dense_mut(&mut self) -> &mut Tensor {
        if let Store::Packed { .. } = self.store {
            self.store = Store::Dense(self.to_tensor());
        }
        match &mut self.store {
            Store::Dense(t) => t,
            Store::Packed { .. } => unreachable!("widened above"),
        }
    }

    /// The matrix with its rows reordered: row `i` of the result is row `order[i]` of this one
    /// (`order` a permutation of the rows).
    pub fn permute_rows(&self, order: &[usize]) -> Frozen {
        fn reorder<T: Copy>(src: &[T], order: &[usize]) -> Vec<T> {
            let row = src.len() / order.len().max(1);
            let mut out = Vec::with_capacity(src.len());
            for &r in order {
                out.extend_from_slice(&src[r * row..(r + 1) * row]);
            }
            out
        }
        let store = match &self.store {
            Store::Dense(t) => Store::Dense(Tensor {
                shape: t.shape.clone(),
                data: reorder(&t.data, order),
            }),
            Store::Packed {
                ty,
                bytes,
                row_bytes,
            } => Store::Packed {
                ty: *ty,
                bytes: reorder(bytes, order),
                row_bytes: *row_bytes,
            },
        };
        Frozen {
            shape: self.shape.clone(),
            store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// `rows` rows of `cols / 32` Q4_1 blocks with varied scales, minimums and nibbles.
    fn q4_1(rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * cols / 32 {
            out.extend(f16::from_f32(0.01 + 0.001 * (b % 7) as f32).to_le_bytes());
            out.extend(f16::from_f32(-0.05 + 0.01 * (b % 5) as f32).to_le_bytes());
            out.extend((0..16).map(|j| ((b * 31 + j * 17) % 256) as u8));
        }
        out
    }

    #[test]
    fn packed_matches_the_loaders_decoder_and_permutes_rows() {
        let (rows, cols) = (5, 64);
        let bytes = q4_1(rows, cols);
        let want = crate::model::gguf_quant::dequantize(
            std::path::Path::new("t"),
            "w",
            GgmlType::Q4_1,
            &bytes,
            rows * cols,
        )
        .unwrap();
        let f = Frozen::packed("w", GgmlType::Q4_1, rows, cols, bytes).unwrap();
        assert!(f.is_packed() && f.encoding() == "Q4_1");
        assert_eq!(f.stored_bytes(), rows * cols / 32 * 20);
        let got = f.to_tensor();
        assert_eq!(got.shape, vec![rows, cols]);
        assert_eq!(
            got.data, want,
            "bit-identical to the loader's dequantisation"
        );
        let order = [3, 0, 4, 1, 2];
        let p = f.permute_rows(&order).to_tensor();
        let d = Frozen::from(got.clone()).permute_rows(&order);
        assert_eq!(p, d.to_tensor(), "packed and dense permute alike");
        for (i, &r) in order.iter().enumerate() {
            assert_eq!(
                p.data[i * cols..(i + 1) * cols],
                want[r * cols..(r + 1) * cols]
            );
        }
        let mut short = vec![0f32; 3];
        assert!(f.dequantize_into(&mut short).is_err());
    }

    #[test]
    fn bad_packings_are_errors_naming_the_tensor() {
        let e = Frozen::packed("blk.0.attn_q", GgmlType::Q4_1, 2, 48, vec![0; 60])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("blk.0.attn_q") && e.contains("48 columns"),
            "{e}"
        );
        let e = Frozen::packed("w", GgmlType::Q4_1, 2, 64, vec![0; 79])
            .unwrap_err()
            .to_string();
        assert!(e.contains("79 bytes"), "{e}");
        let e = Frozen::packed("w", GgmlType::Q4K, 2, 256, vec![0; 288])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Q4_K"), "{e}");
        let d = Frozen::from(Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap());
        assert!(!d.is_packed() && d.encoding() == "F32" && d.stored_bytes() == 16);
    }
}
