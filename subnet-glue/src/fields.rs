//! Field-by-field reading of user files (task specs, methods) so every error names the field
//! at fault, whatever the file format: TOML or JSON text becomes one JSON value, and
//! [`Fields`] takes each known key with its type, names unknown keys, and prefixes nested
//! sections (`lora.r`, `search.lr[2]`). task.rs and method.rs read their files through it;
//! their serde structs keep `deny_unknown_fields` for the stored (canonical) form.

use gradients_engine::{Error, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parse `text` as JSON when `json`, else as TOML, into one JSON value; `source` names the
/// file in errors.
pub fn parse_text(text: &str, source: &str, json: bool) -> Result<Value> {
    if json {
        serde_json::from_str(text).map_err(|e| Error::config(source, "json", e.to_string()))
    } else {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(source, "toml", e.to_string().trim_end().to_string()))?;
        serde_json::to_value(table).map_err(|e| Error::config(source, "toml", e.to_string()))
    }
}

/// The keys of one object (a file's top level or a section), taken one by one.
pub struct Fields {
    source: String,
    prefix: String,
    map: Map<String, Value>,
}

impl Fields {
    /// The object `value`; `prefix` is its path (`""` for the top level).
    pub fn new(source: &str, prefix: &str, value: Value) -> Result<Fields> {
        match value {
            Value::Object(map) => Ok(Fields {
                source: source.to_string(),
                prefix: prefix.to_string(),
                map,
            }),
            other => Err(Error::config(
                source,
                if prefix.is_empty() {
                    "(top level)"
                } else {
                    prefix
                },
                format!("expected a table, got {}", kind(&other)),
            )),
        }
    }

    /// The full path of key `name`.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// An error about key `name`.
    pub fn error(&self, name: &str, msg: impl Into<String>) -> Error {
        Error::config(&self.source, self.path(name), msg)
    }

    /// Take key `name` as a `T`; absent (or JSON null) → `None`; a wrong type is an error
    /// naming the key.
    pub fn opt<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>> {
        match self.map.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| self.error(name, e.to_string())),
        }
    }

    /// Take key `name`, which must be present.
    pub fn req<T: DeserializeOwned>(&mut self, name: &str) -> Result<T> {
        self.opt(name)?
            .ok_or_else(|| self.error(name, "is required"))
    }

    /// Take key `name` or use `default`.
    pub fn or<T: DeserializeOwned>(&mut self, name: &str, default: T) -> Result<T> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// Take key `name` as it is (no type check).
    pub fn raw(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|v| !v.is_null())
    }

    /// Take the section (table) `name`, if present.
    pub fn section(&mut self, name: &str) -> Result<Option<Fields>> {
        match self.raw(name) {
            None => Ok(None),
            Some(v) => Fields::new(&self.source, &self.path(name), v).map(Some),
        }
    }

    /// Finish: any key not taken is an unknown field, named with the ones expected.
    pub fn finish(self, expected: &[&str]) -> Result<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(self.error(
                k,
                format!("unknown field (expected one of: {})", expected.join(", ")),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// Check `lo <= v <= hi` for a finite `v`, naming `field`.
pub fn check_f64(f: &Fields, name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v.is_finite() && (lo..=hi).contains(&v)) {
        return Err(f.error(name, format!("must be in [{lo}, {hi}], got {v}")));
    }
    Ok(())
}

/// Check `lo <= v <= hi`, naming `field`.
pub fn check_u64(f: &Fields, name: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        return Err(f.error(name, format!("must be in {lo}..={hi}, got {v}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_types_unknown_keys_and_sections() {
        for (text, json) in [
            ("a = 1\n[s]\nb = \"x\"\nextra = true\n", false),
            (r#"{"a": 1, "s": {"b": "x", "extra": true}}"#, true),
        ] {
            let v = parse_text(text, "f", json).unwrap();
            let mut f = Fields::new("f", "", v).unwrap();
            assert_eq!(f.req::<u32>("a").unwrap(), 1);
            let mut s = f.section("s").unwrap().unwrap();
            let e = s.opt::<u32>("b").unwrap_err().to_string();
            assert!(
                e.contains("field `s.b`") && e.contains("invalid type"),
                "{e}"
            );
            let e = s.finish(&["b"]).unwrap_err().to_string();
            assert!(
                e.contains("`s.extra`") && e.contains("unknown field"),
                "{e}"
            );
            assert!(f.req::<u32>("zz").unwrap_err().to_string().contains("`zz`"));
            f.finish(&[]).unwrap();
        }
        let e = parse_text("a = ", "file.toml", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("file.toml"), "{e}");
    }
}
