//! Atomic file writing, used by every writer in the engine (safetensors, PEFT adapters,
//! checkpoints, metrics).
//!
//! A file is written to a hidden temporary file in the same directory, flushed and fsynced,
//! then renamed over the destination; the directory is fsynced afterwards where the platform
//! allows it. Readers therefore see either the old file or the complete new one, never a
//! half-written one, even when the process dies mid-write. On any error the temporary file is
//! removed and the destination is left untouched.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Distinguishes temporary files of concurrent writers within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Write `path` atomically from a closure that streams into a buffered writer.
///
/// The closure's I/O errors are reported against `path`. Nothing is visible at `path` until
/// the closure has returned `Ok`, the data is flushed and fsynced, and the rename succeeded.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "destination has no file name",
            ),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let result = fill_and_sync(file, write)
        .map_err(|e| Error::io(path, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        // Best effort: the temp file is ours and useless now; the original error matters more.
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir);
    Ok(())
}

/// Run the writer, flush the buffer and fsync the file's data and metadata.
fn fill_and_sync<F>(file: File, write: F) -> std::io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
{
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w)?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Make the rename durable by fsyncing the directory (best effort: not every platform or
/// filesystem allows opening a directory; the rename itself is already atomic).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(dir.path()), vec!["a.bin".to_string()]);
    }

    #[test]
    fn failed_writer_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keep.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("keep.json") && msg.contains("disk on fire"),
            "{msg}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["keep.json".to_string()]);
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/x.txt");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
        assert!(!p.exists());
    }
}
