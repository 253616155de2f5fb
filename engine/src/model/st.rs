//! The safetensors file format: memory-mapped reading of one file ([`SafetensorsFile`]) or of
//! a sharded set behind `model.safetensors.index.json` ([`TensorStore`]), and an f32 writer
//! ([`write_safetensors`]).
//!
//! Named `st` so it does not shadow the `safetensors` crate. The header is parsed here rather
//! than by the crate so that every error names the file and, where there is one, the tensor
//! (the crate reports e.g. a size mismatch without saying which tensor). Tensors of dtype
//! F32, F16 and BF16 decode to f32 [`Tensor`]s through [`DType::decode`]; other dtypes may be
//! present in a file and are refused only when asked for. Its neighbour `hf_model.rs` maps
//! HF tensor names onto `ModelWeights`; `lora/peft.rs` uses both ends for adapters.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::io::write_atomic_with;
use crate::tensor::{DType, Tensor};

/// Largest header we accept (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Where one tensor lives inside a file, as the header says.
#[derive(Clone, Debug)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    /// Byte range inside the data section.
    start: usize,
    end: usize,
}

/// One memory-mapped `.safetensors` file with its parsed, checked header.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8 + header length).
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    metadata: Option<HashMap<String, String>>,
}

/// Bytes per element of a safetensors dtype name, for the dtypes with whole-byte elements.
fn dtype_bytes(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// The engine dtype for a safetensors dtype name, if the engine reads it.
fn engine_dtype(name: &str) -> Option<DType> {
    match name {
        "F32" => Some(DType::F32),
        "F16" => Some(DType::F16),
        "BF16" => Some(DType::BF16),
        _ => None,
    }
}

impl SafetensorsFile {
    /// Map `path` and parse and check its header (offsets, sizes, dtypes of known width).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 8 {
            return Err(Error::format(
                path,
                format!("file is {len} bytes, too short for a safetensors header"),
            ));
        }
        // SAFETY: the file is opened read-only and we only read through the map. The safety
        // contract of mmap is that nobody truncates or rewrites the file while it is mapped;
        // model files are treated as immutable while loaded (as HF's loaders do), and the
        // engine's own writers replace files by rename (io::write_atomic), never in place.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bytes: &[u8] = &mmap;
        // Sizes come from the map itself, in case the file changed since `metadata`.
        let len = bytes.len() as u64;
        if len < 8 {
            return Err(Error::format(
                path,
                format!("file is {len} bytes, too short for a safetensors header"),
            ));
        }
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(n8);
        if n > len - 8 {
            return Err(Error::format(
                path,
                format!(
                    "header length {n} runs past the end of the file ({len} bytes): truncated or not safetensors"
                ),
            ));
        }
        if n > MAX_HEADER {
            return Err(Error::format(
                path,
                format!("header length {n} exceeds the {MAX_HEADER}-byte limit"),
            ));
        }
        let data_start = 8 + n as usize;
        let data_len = bytes.len() - data_start;
        let header = std::str::from_utf8(&bytes[8..data_start])
            .map_err(|e| Error::format(path, format!("header is not valid utf-8: {e}")))?;
        let header: Map<String, Value> = serde_json::from_str(header)
            .map_err(|e| Error::format(path, format!("invalid json header: {e}")))?;

        let mut entries = BTreeMap::new();
        let mut metadata = None;
        for (name, v) in header {
            if name == "__metadata__" {
                metadata = Some(parse_metadata(path, &v)?);
                continue;
            }
            let entry = parse_entry(path, &name, &v)?;
            if entry.start > entry.end || entry.end > data_len {
                return Err(Error::tensor(
                    path,
                    name,
                    format!(
                        "data offsets [{}, {}] out of range: the data section is {data_len} bytes (truncated file?)",
                        entry.start, entry.end
                    ),
                ));
            }
            if let Some(size) = dtype_bytes(&entry.dtype) {
                let want = entry.shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
                if want != Some(entry.end - entry.start) {
                    return Err(Error::tensor(
                        path,
                        name,
                        format!(
                            "{} {:?} needs {} bytes but its data offsets span {}",
                            entry.dtype,
                            entry.shape,
                            want.map_or("too many".to_string(), |w| w.to_string()),
                            entry.end - entry.start
                        ),
                    ));
                }
            }
            entries.insert(name, entry);
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            data_start,
            entries,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// True when the file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The safetensors dtype name (`"BF16"`, ...) of tensor `name`, if present.
    pub fn dtype(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|e| e.dtype.as_str())
    }

    /// The `__metadata__` string map, if the file has one.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Decode tensor `name` to f32; errors name the file and tensor.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::tensor(&self.path, name, "not found in this file"))?;
        let dtype = engine_dtype(&e.dtype).ok_or_else(|| {
            Error::tensor(
                &self.path,
                name,
                format!(
                    "dtype {} is not supported (expected F32, F16 or BF16)",
                    e.dtype
                ),
            )
        })?;
        let bytes = &self.mmap[self.data_start + e.start..self.data_start + e.end];
        let mut data = Vec::new();
        dtype
            .decode(bytes, &mut data)
            .and_then(|()| Tensor::new(e.shape.clone(), data))
            .map_err(|err| Error::tensor(&self.path, name, err.to_string()))
    }
}

/// Parse the `__metadata__` entry: a map of strings to strings.
fn parse_metadata(path: &Path, v: &Value) -> Result<HashMap<String, String>> {
    let bad = || Error::format(path, "`__metadata__` must map strings to strings");
    let Value::Object(m) = v else {
        return Err(bad());
    };
    m.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect()
}

/// Parse one tensor's header entry `{dtype, shape, data_offsets}`.
fn parse_entry(path: &Path, name: &str, v: &Value) -> Result<Entry> {
    let bad = |what: &str| Error::tensor(path, name, format!("invalid header entry: {what}"));
    let obj = v.as_object().ok_or_else(|| bad("not an object"))?;
    let dtype = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`dtype` missing or not a string"))?
        .to_string();
    let ints = |field: &str| -> Option<Vec<usize>> {
        obj.get(field)?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
            .collect()
    };
    let shape = ints("shape").ok_or_else(|| bad("`shape` missing or not a list of sizes"))?;
    let offsets = ints("data_offsets")
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("`data_offsets` missing or not two integers"))?;
    Ok(Entry {
        dtype,
        shape,
        start: offsets[0],
        end: offsets[1],
    })
}

/// The tensors of a model: one safetensors file, or several behind an index.
#[derive(Debug)]
pub struct TensorStore {
    /// What errors about missing tensors name: the file, or the index.
    source: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    map: BTreeMap<String, usize>,
}

/// Name of the single-file checkpoint in an HF model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index in an HF model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl TensorStore {
    /// Open an HF model directory: `model.safetensors.index.json` if present, else
    /// `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::from_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_file(&single);
        }
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (pytorch_model.bin is not supported: convert it to safetensors)"
        } else {
            ""
        };
        Err(Error::format(
            dir,
            format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory{hint}"),
        ))
    }

    /// A store over one file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let map = file.names().map(|n| (n.to_string(), 0)).collect();
        Ok(TensorStore {
            source: path.to_path_buf(),
            files: vec![file],
            map,
        })
    }

    /// A store over the shards named by `index` (a `model.safetensors.index.json`).
    ///
    /// Every shard must exist and hold the tensors the index assigns to it.
    pub fn from_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(index, format!("invalid json: {e}")))?;
        let weight_map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::format(index, "`weight_map` missing or not an object"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut files = Vec::new();
        let mut map = BTreeMap::new();
        for (name, shard) in weight_map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::format(
                    index,
                    format!("weight_map entry for `{name}` is not a file name"),
                )
            })?;
            let id = match shard_ids.get(shard) {
                Some(&id) => id,
                None => {
                    let rel = Path::new(shard);
                    if rel.components().count() != 1 || rel.is_absolute() {
                        return Err(Error::format(
                            index,
                            format!(
                                "shard `{shard}` must be a plain file name in the same directory"
                            ),
                        ));
                    }
                    let shard_path = dir.join(rel);
                    if !shard_path.is_file() {
                        return Err(Error::format(
                            index,
                            format!(
                                "shard `{shard}` named in weight_map is missing ({})",
                                shard_path.display()
                            ),
                        ));
                    }
                    files.push(SafetensorsFile::open(&shard_path)?);
                    shard_ids.insert(shard, files.len() - 1);
                    files.len() - 1
                }
            };
            if !files[id].contains(name) {
                return Err(Error::tensor(
                    files[id].path(),
                    name.clone(),
                    format!("listed for this shard in {} but absent", index.display()),
                ));
            }
            map.insert(name.clone(), id);
        }
        Ok(TensorStore {
            source: index.to_path_buf(),
            files,
            map,
        })
    }

    /// The file (or index) this store was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// True when the store holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.map.get(name).and_then(|&i| self.files[i].shape(name))
    }

    /// The file holding tensor `name`; the store's source when it is absent.
    pub fn file_of(&self, name: &str) -> &Path {
        self.map
            .get(name)
            .map_or(self.source.as_path(), |&i| self.files[i].path())
    }

    /// Decode tensor `name` to f32; a missing tensor is an error naming the store's source.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        match self.map.get(name) {
            Some(&i) => self.files[i].tensor(name),
            None => Err(Error::tensor(&self.source, name, "missing")),
        }
    }
}

/// Write `tensors` as an f32 safetensors file at `path`, atomically and streaming (no copy
/// of the whole file in memory). Names must be unique; `metadata` becomes `__metadata__`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let mut sorted: Vec<(&str, &Tensor)> = tensors.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = Map::new();
    if let Some(m) = metadata {
        let m: Map<String, Value> = m
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in &sorted {
        if header.contains_key(*name) {
            return Err(Error::tensor(path, *name, "duplicate tensor name"));
        }
        if t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::tensor(
                path,
                *name,
                format!("shape {:?} does not hold {} values", t.shape, t.data.len()),
            ));
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| Error::format(path, format!("cannot encode header: {e}")))?;
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    write_atomic_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (_, t) in &sorted {
            for chunk in t.data.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}
