//! Host tensors: a shape and f32 storage, plus the dtypes files store (f32, bf16, f16).
//!
//! Storage only: no autograd, no ops. Loaders (model/) turn file bytes of any supported dtype
//! into f32 [`Tensor`]s; the backends (backend/) upload them into their own buffers.

use crate::error::{Error, Result};

/// Element types the engine reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Decode little-endian `bytes` of this dtype into f32 values.
    ///
    /// Errors when the byte count is not a multiple of the element size.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
        if !bytes.len().is_multiple_of(self.size()) {
            return Err(Error::shape(
                "decode",
                format!(
                    "{} bytes is not a whole number of {:?} elements",
                    bytes.len(),
                    self
                ),
            ));
        }
        out.reserve(bytes.len() / self.size());
        match self {
            DType::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            DType::F16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DType::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
        }
        Ok(())
    }
}

/// A dense row-major f32 tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (HF order: a Linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and data; errors when the sizes disagree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "tensor",
                format!("shape {:?} needs {} values, got {}", shape, n, data.len()),
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The single dimension of a rank-1 tensor.
    pub fn dims1(&self) -> Result<usize> {
        match self.shape[..] {
            [a] => Ok(a),
            _ => Err(Error::shape(
                "dims1",
                format!("expected rank 1, got {:?}", self.shape),
            )),
        }
    }

    /// The two dimensions of a rank-2 tensor.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [a, b] => Ok((a, b)),
            _ => Err(Error::shape(
                "dims2",
                format!("expected rank 2, got {:?}", self.shape),
            )),
        }
    }

    /// The three dimensions of a rank-3 tensor.
    pub fn dims3(&self) -> Result<(usize, usize, usize)> {
        match self.shape[..] {
            [a, b, c] => Ok((a, b, c)),
            _ => Err(Error::shape(
                "dims3",
                format!("expected rank 3, got {:?}", self.shape),
            )),
        }
    }
}
