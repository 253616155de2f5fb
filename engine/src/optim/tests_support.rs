//! Test helpers for optim/: reading the JSON fixtures that tools/make_optim_fixtures.py
//! writes under tests/fixtures/ (torch reference values for adamw.rs and clip.rs).

use serde_json::Value;

/// Parse `tests/fixtures/<name>` from the repository root.
pub fn load_fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of numbers as f32s (exact for values torch wrote from f32 tensors).
pub fn vec_f32(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A JSON array of arrays of numbers as f32 vectors.
pub fn vecs(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("array of arrays")
        .iter()
        .map(vec_f32)
        .collect()
}
