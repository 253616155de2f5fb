//! Apache Parquet datasets → [`Record`]s, through the `parquet` crate's record API (no
//! arrow): every row becomes one JSON object with the file's top-level columns as keys, the
//! same row/column model as the JSON, JSONL and CSV readers in formats.rs.
//!
//! Values: strings stay strings, integers and floats become JSON numbers, booleans booleans,
//! nulls null; binary columns must hold UTF-8 text (pandas writes some string columns as
//! plain binary); dates, times, timestamps and decimals become their display strings. Lists
//! become arrays and structs objects, so a `conversations` column stored as a list of
//! `{from, value}` structs (how `datasets` / pyarrow write chat data) reads as the array of
//! turn objects the chat mapping expects. Maps become objects keyed by the key's text. Pages
//! may be uncompressed or snappy, gzip or zstd compressed (the codecs built in). Errors name
//! the file and, for a bad value, the 1-based row and the column.

use std::fs::File;
use std::path::Path;

use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::{Field, Row};
use serde_json::{Number, Value};

use super::Record;
use crate::error::{Error, Result};

/// Read every row of the Parquet file `path` as a [`Record`].
pub fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Error::format(path, format!("not a readable parquet file: {e}")))?;
    let expected = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Error::format(path, format!("reading the row groups: {e}")))?;
    let mut out = Vec::with_capacity(expected);
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| Error::format(path, format!("row {}: {e}", i + 1)))?;
        out.push(row_to_record(&row, path, i + 1)?);
    }
    Ok(out)
}

/// One row's columns as a JSON object; `row_no` (1-based) goes into errors.
fn row_to_record(row: &Row, path: &Path, row_no: usize) -> Result<Record> {
    row.get_column_iter()
        .map(|(name, field)| {
            let v = field_to_json(field).map_err(|why| {
                Error::format(path, format!("row {row_no}, column `{name}`: {why}"))
            })?;
            Ok((name.clone(), v))
        })
        .collect()
}

/// A Parquet value as JSON (see the module doc); the error says what could not be converted.
fn field_to_json(field: &Field) -> std::result::Result<Value, String> {
    let num = |v: f64| Number::from_f64(v).map_or(Value::Null, Value::Number);
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float16(n) => num(f64::from(*n)),
        Field::Float(n) => num(f64::from(*n)),
        Field::Double(n) => num(*n),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(e) => return Err(format!("binary value is not utf-8 text ({e})")),
        },
        Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_) => Value::String(field.to_string()),
        Field::Group(row) => {
            let mut m = Record::new();
            for (k, v) in row.get_column_iter() {
                m.insert(
                    k.clone(),
                    field_to_json(v).map_err(|e| format!("{k}: {e}"))?,
                );
            }
            Value::Object(m)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, f)| field_to_json(f).map_err(|e| format!("[{i}]: {e}")))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut m = Record::new();
            for (k, v) in map.entries() {
                let key = match field_to_json(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let val = field_to_json(v).map_err(|e| format!("{key}: {e}"))?;
                m.insert(key, val);
            }
            Value::Object(m)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ::parquet::basic::{Compression, GzipLevel, ZstdLevel};
    use ::parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::data::formats::read_records;
    use crate::data::mapping::{ChatMapping, Example, InstructMapping};

    /// pyarrow's layout: plain string columns, an int64 id, and a list-of-struct
    /// `conversations` column (LIST → repeated `list` → optional `element` struct).
    const SCHEMA: &str = "
        message schema {
          REQUIRED BYTE_ARRAY instruction (UTF8);
          OPTIONAL BYTE_ARRAY input (UTF8);
          OPTIONAL BYTE_ARRAY output;
          REQUIRED INT64 id;
          OPTIONAL group conversations (LIST) {
            REPEATED group list {
              OPTIONAL group element {
                OPTIONAL BYTE_ARRAY from (UTF8);
                OPTIONAL BYTE_ARRAY value (UTF8);
              }
            }
          }
        }";

    fn bytes(v: &[&[u8]]) -> Vec<ByteArray> {
        v.iter().map(|s| ByteArray::from(s.to_vec())).collect()
    }

    /// Three rows: row 2 has a null input and one turn, row 3 an empty conversation; `output`
    /// of row 3 is `bad_output` (plain binary, so non-UTF-8 bytes are possible).
    fn write(path: &Path, compression: Compression, bad_output: &[u8]) {
        let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(compression)
                .build(),
        );
        let file = File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            match col {
                0 => {
                    let v = bytes(&[b"Name a colour.", b"Add 2 and 3.", b"Say hi."]);
                    c.typed::<ByteArrayType>().write_batch(&v, None, None)
                }
                1 => {
                    let v = bytes(&[b"briefly", b"politely"]);
                    c.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&[1, 0, 1]), None)
                }
                2 => {
                    let v = bytes(&[b"Blue.", b"5", bad_output]);
                    c.typed::<ByteArrayType>()
                        .write_batch(&v, Some(&[1, 1, 1]), None)
                }
                3 => c
                    .typed::<Int64Type>()
                    .write_batch(&[10, 11, 12], None, None),
                // conversations.list.element.{from,value}: row 1 two turns, row 2 one
                // turn, row 3 an empty list (definition level 1)
                4 => {
                    let v = bytes(&[b"user", b"assistant", b"user"]);
                    c.typed::<ByteArrayType>().write_batch(
                        &v,
                        Some(&[4, 4, 4, 1]),
                        Some(&[0, 1, 0, 0]),
                    )
                }
                _ => {
                    let v = bytes(&[b"Hi?", b"Hello!", b"Bye?"]);
                    c.typed::<ByteArrayType>().write_batch(
                        &v,
                        Some(&[4, 4, 4, 1]),
                        Some(&[0, 1, 0, 0]),
                    )
                }
            }
            .unwrap();
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn parquet_rows_read_like_json_with_every_codec() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("same.json");
        std::fs::write(
            &json,
            r#"[{"instruction": "Name a colour.", "input": "briefly", "output": "Blue.", "id": 10,
                 "conversations": [{"from": "user", "value": "Hi?"},
                                   {"from": "assistant", "value": "Hello!"}]},
                {"instruction": "Add 2 and 3.", "input": null, "output": "5", "id": 11,
                 "conversations": [{"from": "user", "value": "Bye?"}]},
                {"instruction": "Say hi.", "input": "politely", "output": "hi", "id": 12,
                 "conversations": []}]"#,
        )
        .unwrap();
        let want = read_records(&json).unwrap();
        for (name, codec) in [
            ("plain.parquet", Compression::UNCOMPRESSED),
            ("snappy.parquet", Compression::SNAPPY),
            ("gzip.parquet", Compression::GZIP(GzipLevel::default())),
            ("zstd.parquet", Compression::ZSTD(ZstdLevel::default())),
        ] {
            let p = dir.path().join(name);
            write(&p, codec, b"hi");
            let got = read_records(&p).unwrap();
            assert_eq!(got, want, "{name}");
        }
        // the mappings see the same examples: instruct columns and chat turns
        let rows = read_records(&dir.path().join("zstd.parquet")).unwrap();
        let inst = InstructMapping {
            field_instruction: "instruction".into(),
            field_input: Some("input".into()),
            field_output: Some("output".into()),
            ..InstructMapping::default()
        };
        let chat = ChatMapping::default();
        let p = Path::new("zstd.parquet");
        match inst.example(&rows[1], p, 2).unwrap() {
            Example::Text { prompt, completion } => {
                assert_eq!(
                    (prompt.as_str(), completion.as_str()),
                    ("Add 2 and 3.", "5")
                )
            }
            other => panic!("{other:?}"),
        }
        match chat.example(&rows[0], p, 1).unwrap() {
            Example::Chat(turns) => {
                assert_eq!(turns.len(), 2);
                assert_eq!(turns[1].content, "Hello!");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_parquet_is_an_error_naming_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin.parquet");
        write(&p, Compression::SNAPPY, &[0xff, 0xfe, b'x']);
        let err = read_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("bin.parquet") && err.contains("row 3") && err.contains("`output`"),
            "{err}"
        );
        // not a parquet file at all, and a truncated one
        let junk = dir.path().join("junk.parquet");
        std::fs::write(&junk, b"PAR1 this is not parquet").unwrap();
        let err = read_records(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.parquet"), "{err}");
        let good = dir.path().join("good.parquet");
        write(&good, Compression::SNAPPY, b"ok");
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_records(&cut).unwrap_err().to_string();
        assert!(err.contains("cut.parquet"), "{err}");
        let err = read_records(&dir.path().join("missing.parquet"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.parquet"), "{err}");
    }
}
