//! Locating the real test assets (the SmolLM2 GGUF, the llamafactory demo datasets).
//!
//! They live in `${GRADIENTS_CACHE:-$HOME/.cache/gradients}/assets`, filled by
//! `scripts/fetch-assets.sh` (found beside this crate's `Cargo.toml`). Each function returns
//! the cached path, running the script once when the file is missing; the `Err` string says
//! why the asset is unavailable, so tests that need it can print the reason and skip.
//! Nothing here is used by the engine proper: loaders (model/gguf.rs) take any path.

use std::path::{Path, PathBuf};
use std::process::Command;

/// File name of the model inside the assets cache.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the alpaca demo dataset inside the assets cache.
pub const ALPACA_EN_DEMO: &str = "alpaca_en_demo.json";
/// File name of the DPO demo dataset inside the assets cache.
pub const DPO_EN_DEMO: &str = "dpo_en_demo.json";

/// The assets cache directory: `${GRADIENTS_CACHE:-$HOME/.cache/gradients}/assets`.
pub fn cache_dir() -> Result<PathBuf, String> {
    let root = match std::env::var_os("GRADIENTS_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home).join(".cache").join("gradients"),
            _ => return Err("neither GRADIENTS_CACHE nor HOME is set".to_string()),
        },
    };
    Ok(root.join("assets"))
}

/// The fetch script, `scripts/fetch-assets.sh` beside this crate's `Cargo.toml`.
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("fetch-assets.sh")
}

/// Path of the SmolLM2-135M-Instruct Q4_1 GGUF, fetching it if missing.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    asset(SMOLLM2_GGUF)
}

/// Path of llamafactory's `alpaca_en_demo.json`, fetching it if missing.
pub fn alpaca_en_demo() -> Result<PathBuf, String> {
    asset(ALPACA_EN_DEMO)
}

/// Path of llamafactory's `dpo_en_demo.json`, fetching it if missing.
pub fn dpo_en_demo() -> Result<PathBuf, String> {
    asset(DPO_EN_DEMO)
}

/// The cached file `name`, running the fetch script when it is absent or empty.
fn asset(name: &str) -> Result<PathBuf, String> {
    let path = cache_dir()?.join(name);
    if is_nonempty_file(&path) {
        return Ok(path);
    }
    let script = fetch_script();
    if !script.is_file() {
        return Err(format!(
            "{} is missing and the fetch script {} does not exist",
            path.display(),
            script.display()
        ));
    }
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} is missing and {} failed ({}): {}",
            path.display(),
            script.display(),
            out.status,
            stderr.trim()
        ));
    }
    if is_nonempty_file(&path) {
        Ok(path)
    } else {
        Err(format!(
            "{} succeeded but {} is still missing",
            script.display(),
            path.display()
        ))
    }
}

fn is_nonempty_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.len() > 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_script_exists_beside_the_manifest() {
        let script = fetch_script();
        assert!(script.is_file(), "{} is missing", script.display());
    }

    #[test]
    fn cached_assets_are_found_or_the_reason_is_given() {
        for (name, got) in [
            (SMOLLM2_GGUF, smollm2_gguf()),
            (ALPACA_EN_DEMO, alpaca_en_demo()),
            (DPO_EN_DEMO, dpo_en_demo()),
        ] {
            match got {
                Ok(path) => {
                    assert!(path.ends_with(name), "{}", path.display());
                    assert!(is_nonempty_file(&path), "{}", path.display());
                }
                Err(why) => {
                    assert!(!why.is_empty());
                    eprintln!("skipping {name}: {why}");
                }
            }
        }
    }

    fn run_script(cache: &Path) -> std::process::Output {
        Command::new("bash")
            .arg(fetch_script())
            .env("GRADIENTS_CACHE", cache)
            .env("PIP", "false") // a pip that always fails: no registry
            .output()
            .expect("run bash")
    }

    #[test]
    fn script_fails_clearly_without_a_registry_and_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_script(dir.path());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("pip could not download"), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("assets"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[cfg(unix)]
    #[test]
    fn script_reuses_cached_files_without_downloading() {
        let (Ok(gguf), Ok(alpaca), Ok(dpo)) = (smollm2_gguf(), alpaca_en_demo(), dpo_en_demo())
        else {
            eprintln!("skipping: real assets unavailable");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir(&assets).unwrap();
        for (src, name) in [
            (gguf, SMOLLM2_GGUF),
            (alpaca, ALPACA_EN_DEMO),
            (dpo, DPO_EN_DEMO),
        ] {
            std::os::unix::fs::symlink(src, assets.join(name)).unwrap();
        }
        let out = run_script(dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let printed: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        let want: Vec<PathBuf> = [SMOLLM2_GGUF, ALPACA_EN_DEMO, DPO_EN_DEMO]
            .iter()
            .map(|n| assets.join(n))
            .collect();
        assert_eq!(printed, want);
    }
}
