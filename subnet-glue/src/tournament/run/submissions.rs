//! Method files into tournament submissions (used by the CLI and tests through
//! run/mod.rs): one miner per file, uid and hotkey from the file's position and name, and
//! an optional top-level `parent` hash (the library's lineage) read off before the method
//! itself is parsed and hashed.

use std::path::PathBuf;

use super::super::{terr, Entry, Result};
use super::Submission;
use crate::method::Method;

/// Read method files (`.toml`, or `.json`) and directories of them (their `.toml`/`.json`
/// files, sorted by name) into submissions: the i-th file (in the order given, directories
/// expanded in name order) is miner uid `first_uid + i` with hotkey `miner-<file stem>`,
/// submitted at time i. A method file may name its parent method with a top-level
/// `parent = "<64 hex digits>"` (read here, not part of the method or its hash).
pub fn submissions_from_paths(paths: &[PathBuf], first_uid: u16) -> Result<Vec<Submission>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| gradients_engine::Error::io(p, e))?;
            let mut found: Vec<PathBuf> = Vec::new();
            for f in rd {
                let f = f.map_err(|e| gradients_engine::Error::io(p, e))?.path();
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
                if f.is_file() && (ext == "toml" || ext == "json") {
                    found.push(f);
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| gradients_engine::Error::io(f, e))?;
        let json = f.extension().and_then(|e| e.to_str()) == Some("json");
        let source = f.display().to_string();
        let (text, parent) = split_parent(&text, &source, json)?;
        let method = Method::parse(&text, &source, json)?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("method");
        let uid = u16::try_from(first_uid as usize + i)
            .map_err(|_| terr!("methods", "too many method files for u16 uids"))?;
        out.push(Submission {
            entry: Entry {
                uid,
                hotkey: format!("miner-{stem}"),
                method_hash: method.hash(),
                submitted_at: i as i64,
            },
            method,
            parent,
        });
    }
    Ok(out)
}

/// Remove a top-level `parent` field from a method file's text, returning the rest (as the
/// same format) and the parent hash.
fn split_parent(text: &str, source: &str, json: bool) -> Result<(String, Option<String>)> {
    let bad = |msg: String| gradients_engine::Error::config(source, "parent", msg);
    let check = |v: Option<String>| -> Result<Option<String>> {
        match v {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(h.to_ascii_lowercase()))
            }
            Some(h) => Err(bad(format!(
                "must be a method hash (64 hex digits), got {h:?}"
            ))),
            None => Ok(None),
        }
    };
    if json {
        let mut v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| gradients_engine::Error::config(source, "", e.to_string()))?;
        let parent = match v.as_object_mut().and_then(|o| o.remove("parent")) {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => return Err(bad(format!("must be a string, got {other}"))),
        };
        Ok((v.to_string(), check(parent)?))
    } else {
        let mut t: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            gradients_engine::Error::config(source, "", e.to_string())
        })?;
        let parent = match t.remove("parent") {
            None => None,
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => return Err(bad(format!("must be a string, got {other}"))),
        };
        if parent.is_none() {
            return Ok((text.to_string(), None));
        }
        let rest = toml::to_string(&t).map_err(|e| bad(e.to_string()))?;
        Ok((rest, check(parent)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_is_read_and_removed() {
        let h = "Ab".repeat(32);
        let (rest, p) = split_parent(
            &format!("parent = \"{h}\"\nname = \"x\"\n"),
            "m.toml",
            false,
        )
        .unwrap();
        assert_eq!(p, Some(h.to_ascii_lowercase()));
        assert!(!rest.contains("parent") && rest.contains("name"));
        let (rest, p) = split_parent(
            &format!("{{\"parent\": \"{h}\", \"name\": \"x\"}}"),
            "m.json",
            true,
        )
        .unwrap();
        assert!(p.is_some() && !rest.contains("parent"));
        let (rest, p) = split_parent("name = \"x\"\n", "m.toml", false).unwrap();
        assert_eq!((rest.as_str(), p), ("name = \"x\"\n", None));
        for bad in ["parent = \"abc\"", "parent = 3"] {
            let e = split_parent(bad, "m.toml", false).unwrap_err().to_string();
            assert!(e.contains("parent") && e.contains("m.toml"), "{e}");
        }
    }

    #[test]
    fn method_files_become_one_entry_per_miner() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "name = \"b\"\n[optimizer]\nlr = 1e-3\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("a.toml"), "name = \"a\"\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let subs = submissions_from_paths(&[dir.path().to_path_buf()], 1).unwrap();
        let got: Vec<(u16, &str)> = subs
            .iter()
            .map(|s| (s.entry.uid, s.entry.hotkey.as_str()))
            .collect();
        assert_eq!(got, [(1, "miner-a"), (2, "miner-b")]);
        assert_eq!(subs[0].entry.method_hash, subs[0].method.hash());
        assert_ne!(subs[0].entry.method_hash, subs[1].entry.method_hash);
        std::fs::write(dir.path().join("c.toml"), "[lora]\nr = 0\n").unwrap();
        let e = submissions_from_paths(&[dir.path().to_path_buf()], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("lora.r"), "{e}");
    }
}
