//! A test-only GGUF writer: metadata values of every type and raw tensor bytes, laid out
//! with `general.alignment` the way llama.cpp writes files. Used by gguf_tests.rs and the
//! tokenizer's tests to build tiny files in code.

use std::path::{Path, PathBuf};

use super::gguf::GgufValue;
use crate::tensor::Tensor;

/// Writes GGUF v2/v3 files for tests: metadata values and raw tensor bytes.
pub(crate) struct GgufWriter {
    /// Format version to write.
    pub version: u32,
    /// Data alignment; written as `general.alignment` unless it is the default 32.
    pub alignment: u64,
    /// Metadata in file order.
    pub kv: Vec<(String, GgufValue)>,
    /// (name, dims fastest-first, type id, bytes).
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufWriter {
    pub(crate) fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub(crate) fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.kv.push((key.to_string(), value));
        self
    }

    /// A tensor with dims fastest-first (GGUF order), type id and raw bytes.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, bytes));
        self
    }

    /// An f32 tensor given in HF shape (outermost first).
    pub(crate) fn f32_tensor(&mut self, name: &str, t: &Tensor) -> &mut Self {
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &dims, 0, bytes)
    }

    fn value_type(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => Self::put_str(out, s),
            GgufValue::Array(items) => {
                let ty = items.first().map_or(0, Self::value_type);
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    Self::put_value(out, item);
                }
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut kv = self.kv.clone();
        if self.alignment != 32 {
            kv.push((
                "general.alignment".into(),
                GgufValue::U32(self.alignment as u32),
            ));
        }
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in &kv {
            Self::put_str(&mut out, k);
            out.extend(Self::value_type(v).to_le_bytes());
            Self::put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in &self.tensors {
            Self::put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).next_multiple_of(self.alignment);
        }
        let last = self.tensors.len().saturating_sub(1);
        for (i, (_, _, _, bytes)) in self.tensors.iter().enumerate() {
            out.resize(
                (out.len() as u64).next_multiple_of(self.alignment) as usize,
                0,
            );
            out.extend(bytes);
            // No padding after the last tensor: every strict prefix of the file is truncated.
            debug_assert!(i <= last);
        }
        out
    }

    pub(crate) fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.to_bytes()).expect("write test gguf");
        path
    }
}
