//! GGUF (v2, v3) files: the header, every metadata value type, tensor infos, and tensor data
//! read through a memory map and dequantised to f32 host tensors.
//!
//! [`GgufFile::open`] parses and checks the whole header (magic, version, counts, strings,
//! `general.alignment`, every tensor's bytes inside the file) and keeps the map; the metadata
//! lives in [`GgufMeta`], which the tokenizer (tokenizer.rs) and `gradients inspect` read.
//! [`GgufFile::tensor`] dequantises one tensor (gguf_quant.rs) and reverses GGUF's
//! fastest-first dims into HF order. Turning a llama GGUF into a `ModelConfig` and
//! `ModelWeights` is gguf_load.rs.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::gguf_quant::{dequantize, GgmlType};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8 (UTF-8).
    String(String),
    /// Type 9: values of one element type (possibly arrays themselves).
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// The value as an integer, for any integer type.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, for any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, for an array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF name of the value's type (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The flag, for a bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Arrays longer than this are shown by their first elements and their length.
const DISPLAY_ITEMS: usize = 8;

/// A one-line rendering for listings (`gradients inspect`): strings quoted, long strings and
/// arrays shortened.
impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::String(s) => {
                let short: String = s.chars().take(120).collect();
                if short.len() < s.len() {
                    write!(f, "{short:?}… ({} bytes)", s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            GgufValue::Array(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().take(DISPLAY_ITEMS).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() > DISPLAY_ITEMS {
                    write!(f, ", … ({} items)", items.len())?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Where one tensor lives and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as the file lists them: fastest-varying first.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data, `None` for a type whose layout is unknown.
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    /// Dimensions in HF order (outermost first): the file's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of values.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The parsed header of a GGUF file: version, metadata, tensor infos.
#[derive(Clone, Debug)]
pub struct GgufMeta {
    /// The file it came from.
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Every metadata key and value, in file order.
    pub kv: Vec<(String, GgufValue)>,
    /// Every tensor, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    kv_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufMeta {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    /// The info of tensor `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(GgufValue::as_str)
    }

    fn type_error(&self, key: &str, want: &str, got: &GgufValue) -> Error {
        Error::config(
            self.path.display().to_string(),
            key,
            format!("expected {want}, found {}", got.type_name()),
        )
    }

    /// `key` as a non-negative integer (any integer type); errors when of another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i128().map(u64::try_from) {
                Some(Ok(n)) => Ok(Some(n)),
                _ => Err(self.type_error(key, "a non-negative integer", v)),
            },
        }
    }

    /// `key` as a float (any numeric type); errors when of another type.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a number", v)),
        }
    }

    /// `key` as a string; errors when of another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a string", v)),
        }
    }

    /// `key` as an array of strings; errors when of another type.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(GgufValue::as_str).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.type_error(key, "an array of strings", v)),
        }
    }

    /// `key` as an array of integers; errors when of another type.
    pub fn get_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_i128().and_then(|n| i64::try_from(n).ok()))
                        .collect::<Option<Vec<_>>>()
                })
                .map(Some)
                .ok_or_else(|| self.type_error(key, "an array of integers", v)),
        }
    }

    /// Parse the header of a GGUF file held in `bytes` (the whole file); `path` names it in
    /// errors. Checks that every tensor of a known type lies inside `bytes`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader {
            path,
            bytes,
            pos: 0,
        };
        let magic = r.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::format(
                path,
                format!("not a gguf file (magic {magic:02x?}, expected \"GGUF\")"),
            ));
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            let hint = if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                " (a big-endian file)"
            } else {
                ""
            };
            return Err(Error::format(
                path,
                format!("unsupported gguf version {version}{hint}; supported: 2, 3"),
            ));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let mut kv = Vec::new();
        let mut kv_index = HashMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("key of metadata entry {i}"))?;
            let ty = r.u32(&format!("type of `{key}`"))?;
            let value = r.value(ty, &key, 0)?;
            if kv_index.insert(key.clone(), kv.len()).is_some() {
                return Err(Error::format(
                    path,
                    format!("duplicate metadata key `{key}`"),
                ));
            }
            kv.push((key, value));
        }
        let mut tensors = Vec::new();
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let info = r.tensor_info(i)?;
            if tensor_index
                .insert(info.name.clone(), tensors.len())
                .is_some()
            {
                return Err(Error::tensor(path, &info.name, "appears twice in the file"));
            }
            tensors.push(info);
        }
        let mut meta = GgufMeta {
            path: path.to_path_buf(),
            version,
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
            kv,
            tensors,
            kv_index,
            tensor_index,
        };
        if let Some(a) = meta.get_u64("general.alignment")? {
            if a == 0 || !a.is_power_of_two() {
                return Err(Error::config(
                    path.display().to_string(),
                    "general.alignment",
                    format!("{a} is not a power of two"),
                ));
            }
            meta.alignment = a;
        }
        meta.data_offset = (r.pos as u64).next_multiple_of(meta.alignment);
        meta.check_tensor_extents(bytes.len() as u64)?;
        Ok(meta)
    }

    fn check_tensor_extents(&self, file_len: u64) -> Result<()> {
        for t in &self.tensors {
            if t.offset % self.alignment != 0 {
                return Err(Error::tensor(
                    &self.path,
                    &t.name,
                    format!(
                        "data offset {} is not aligned to {}",
                        t.offset, self.alignment
                    ),
                ));
            }
            if let Some(n) = t.n_bytes {
                let start = self.data_offset.checked_add(t.offset);
                let end = start.and_then(|s| s.checked_add(n));
                if end.is_none_or(|e| e > file_len) {
                    return Err(Error::tensor(
                        &self.path,
                        &t.name,
                        format!(
                            "data at offset {}+{} ({n} bytes) lies beyond the end of the file \
                             ({file_len} bytes; truncated?)",
                            self.data_offset, t.offset
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

/// Nesting limit for arrays of arrays (a corrupt file must not exhaust the stack).
const MAX_ARRAY_DEPTH: usize = 8;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::format(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item` bytes each, checked against the bytes left.
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(Error::format(
                self.path,
                format!(
                    "truncated: {what} is {n} at offset {}, more than the {left} bytes left",
                    self.pos
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let at = self.pos;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| {
            Error::format(
                self.path,
                format!("{what} at offset {at} is not valid utf-8"),
            )
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let w = || format!("value of `{key}`");
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(&w())?[0]),
            1 => GgufValue::I8(self.array::<1>(&w())?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&w())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&w())?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&w())?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&w())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&w())?)),
            7 => match self.array::<1>(&w())?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(Error::format(
                        self.path,
                        format!("bool value of `{key}` is {b}, not 0 or 1"),
                    ))
                }
            },
            8 => GgufValue::String(self.string(&w())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::format(
                        self.path,
                        format!("arrays in `{key}` nest deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem = self.u32(&format!("element type of `{key}`"))?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count(min, &format!("length of `{key}`"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&w())?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&w())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&w())?)),
            other => {
                return Err(Error::format(
                    self.path,
                    format!("metadata `{key}` has unknown value type {other}"),
                ))
            }
        })
    }

    fn tensor_info(&mut self, i: u64) -> Result<GgufTensorInfo> {
        let name = self.string(&format!("name of tensor {i}"))?;
        let n_dims = self.u32(&format!("rank of tensor `{name}`"))?;
        if n_dims > 8 {
            return Err(Error::tensor(
                self.path,
                &name,
                format!("rank {n_dims} is more than 8"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&format!("dims of tensor `{name}`"))?);
        }
        let ty = GgmlType::from_id(self.u32(&format!("type of tensor `{name}`"))?);
        let offset = self.u64(&format!("offset of tensor `{name}`"))?;
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::tensor(self.path, &name, format!("dims {dims:?} overflow")))?;
        let n_bytes = match ty.block_layout() {
            None => None,
            Some(_) => Some(
                ty.byte_size(n, dims.first().copied().unwrap_or(1))
                    .map_err(|msg| Error::tensor(self.path, &name, msg))?,
            ),
        };
        Ok(GgufTensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        })
    }
}

/// An open GGUF file: its parsed header and a memory map of its bytes.
pub struct GgufFile {
    meta: GgufMeta,
    map: Mmap,
}

impl GgufFile {
    /// Open and parse `path`; the data stays mapped until the file is dropped.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and the engine never writes model files; like every
        // mmap-based loader we rely on no other process truncating or rewriting the file
        // while it is open (a truncation would fault, a rewrite would only change values).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let meta = GgufMeta::parse(path, &map)?;
        Ok(GgufFile { meta, map })
    }

    /// The parsed header.
    pub fn meta(&self) -> &GgufMeta {
        &self.meta
    }

    /// Drop the map and keep the header.
    pub fn into_meta(self) -> GgufMeta {
        self.meta
    }

    /// The raw bytes of tensor `name` with its info.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8])> {
        let path = &self.meta.path;
        let info = self
            .meta
            .tensor(name)
            .ok_or_else(|| Error::tensor(path, name, "not found in the file"))?;
        let n = info.n_bytes.ok_or_else(|| {
            Error::tensor(
                path,
                name,
                format!("ggml type {} has no known layout", info.ty.name()),
            )
        })?;
        // `parse` checked that this range lies inside the file.
        let start = (self.meta.data_offset + info.offset) as usize;
        Ok((info, &self.map[start..start + n as usize]))
    }

    /// Tensor `name` dequantised to f32, in HF order (the file's dims reversed).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let n = usize::try_from(info.n_elements())
            .map_err(|_| Error::tensor(&self.meta.path, name, "too many elements"))?;
        let data = dequantize(&self.meta.path, name, info.ty, bytes, n)?;
        Tensor::new(info.shape(), data)
    }
}
