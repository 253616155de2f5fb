//! Reading dataset files into records: a JSON array of objects, JSON Lines, CSV with a
//! header row, or Apache Parquet (parquet.rs, the `parquet` crate's record API).
//!
//! Every format yields the same thing, a `Vec<Record>` (one JSON object per row), so the
//! column mappings (mapping.rs) and tokenisation (tokenize.rs) never know the file type.
//! CSV cells are strings; Parquet values keep their types (lists of structs, the usual shape
//! of a `conversations` column, become arrays of objects). Errors name the file and, where
//! there is one, the 1-based line or row. A `.json` file that does not start with `[` is read
//! as JSON Lines, as Hugging Face `datasets`' json loader does.

use std::path::Path;

use serde_json::Value;

use super::Record;
use crate::error::{Error, Result};

/// A dataset file type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of objects (`.json`; JSON Lines content is also accepted).
    Json,
    /// One JSON object per line (`.jsonl`, `.ndjson`); blank lines are skipped.
    Jsonl,
    /// Comma-separated values with a header row (`.csv`).
    Csv,
    /// Apache Parquet (`.parquet`; uncompressed, snappy, gzip or zstd pages).
    Parquet,
}

impl Format {
    /// The format named by `path`'s extension (case-insensitive).
    pub fn from_path(path: &Path) -> Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "json" => Ok(Format::Json),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" => Ok(Format::Parquet),
            _ => Err(Error::format(
                path,
                format!(
                    "unknown dataset extension `{ext}` (expected .json, .jsonl, .csv or .parquet)"
                ),
            )),
        }
    }
}

/// Read every row of `path`, choosing the format from its extension. An empty file or one
/// with no rows is an error naming the file.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    read_records_as(path, Format::from_path(path)?)
}

/// Read every row of `path` as `format`.
pub fn read_records_as(path: &Path, format: Format) -> Result<Vec<Record>> {
    let rows = match format {
        Format::Json | Format::Jsonl | Format::Csv => {
            let raw = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            // a UTF-8 byte-order mark (Excel's CSVs) is not part of the first column's name
            let text = raw.strip_prefix('\u{feff}').unwrap_or(&raw);
            match format {
                Format::Json if text.trim_start().starts_with('[') => parse_json_array(path, text)?,
                Format::Json | Format::Jsonl => parse_jsonl(path, text)?,
                _ => parse_csv(path, text)?,
            }
        }
        Format::Parquet => super::parquet::read_parquet(path)?,
    };
    if rows.is_empty() {
        return Err(Error::format(path, "the dataset has no rows"));
    }
    Ok(rows)
}

/// A JSON array whose elements are objects.
pub fn parse_json_array(path: &Path, text: &str) -> Result<Vec<Record>> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Error::format(
            path,
            format!(
                "invalid json at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(Error::format(path, "expected a json array of objects"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(m) => Ok(m),
            other => Err(Error::format(
                path,
                format!(
                    "row {}: expected a json object, got {}",
                    i + 1,
                    kind(&other)
                ),
            )),
        })
        .collect()
}

/// One JSON object per non-blank line; a malformed line is an error naming its 1-based number.
pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: invalid json: {e}", i + 1)))?;
        match value {
            Value::Object(m) => rows.push(m),
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: expected a json object, got {}",
                        i + 1,
                        kind(&other)
                    ),
                ))
            }
        }
    }
    Ok(rows)
}

/// CSV with a header row; every cell becomes a JSON string.
pub fn parse_csv(path: &Path, text: &str) -> Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| Error::format(path, format!("csv header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        return Err(Error::format(path, "csv file has no header row"));
    }
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(i as u64 + 2);
            Error::format(path, format!("csv line {line}: {e}"))
        })?;
        let row: Record = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

/// A JSON value's kind, for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(name: &str, body: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn json_array_jsonl_and_csv_read_the_same_rows() {
        let (_d1, a) = file(
            "d.json",
            r#"[{"instruction": "hi", "output": "yo"}, {"instruction": "a,b", "output": "c"}]"#,
        );
        let (_d2, b) = file(
            "d.jsonl",
            "{\"instruction\": \"hi\", \"output\": \"yo\"}\n\n{\"instruction\": \"a,b\", \"output\": \"c\"}\n",
        );
        let (_d3, c) = file("d.csv", "\u{feff}instruction,output\nhi,yo\n\"a,b\",c\n");
        let (ra, rb, rc) = (
            read_records(&a).unwrap(),
            read_records(&b).unwrap(),
            read_records(&c).unwrap(),
        );
        assert_eq!(ra.len(), 2);
        assert_eq!(ra, rb);
        assert_eq!(ra, rc);
        assert_eq!(rc[1]["instruction"], "a,b");
        // .json holding JSON Lines is accepted, like HF datasets' json loader
        let (_d4, d) = file("lines.json", "{\"x\": 1}\n{\"x\": 2}\n");
        assert_eq!(read_records(&d).unwrap().len(), 2);
    }

    #[test]
    fn malformed_jsonl_names_file_and_line() {
        let (_d, p) = file("bad.jsonl", "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": \n");
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl") && err.contains("line 4"), "{err}");
        let (_d, p) = file("arr.jsonl", "{\"a\": 1}\n[1, 2]\n");
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("an array"), "{err}");
    }

    #[test]
    fn empty_files_and_non_objects_are_rejected() {
        for (name, body) in [
            ("e.json", ""),
            ("e2.json", "[]"),
            ("e.jsonl", "\n  \n"),
            ("e.csv", "a,b\n"),
            ("e2.csv", ""),
        ] {
            let (_d, p) = file(name, body);
            let err = read_records(&p).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        let (_d, p) = file("n.json", "[{\"a\": 1}, 3]");
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("row 2") && err.contains("a number"), "{err}");
        let (_d, p) = file("r.csv", "a,b\n1,2\n3\n");
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("r.csv") && err.contains("line 3"), "{err}");
        let (_d, p) = file("x.txt", "hi");
        assert!(read_records(&p).unwrap_err().to_string().contains("x.txt"));
    }
}
