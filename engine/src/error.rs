//! The engine's error type: one `Error` carrying a `#[non_exhaustive]` [`ErrorKind`].
//!
//! Messages are lowercase and name what is at fault: the file, the tensor, the config field,
//! the op and its shapes. Library code returns `Result<T>`; only binaries use anyhow.

use std::path::{Path, PathBuf};

/// Result alias used across the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to find the fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An I/O error on a named file.
    #[error("{path}: {cause}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error (already part of the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// A file whose bytes do not follow its format (truncated, corrupt, wrong magic, ...).
    #[error("{path}: {msg}")]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A named tensor that is missing, has the wrong shape or an unsupported dtype.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        /// The file (or model directory) the tensor comes from.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A configuration field that is missing, of the wrong type or out of range.
    #[error("{source_name}: field `{field}`: {msg}")]
    Config {
        /// The config file, or a description of where the config came from.
        source_name: String,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Operands whose shapes do not fit the op.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that was called.
        op: &'static str,
        /// The shapes and what does not fit.
        msg: String,
    },
    /// A model architecture, dtype or feature the engine does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A GPU runtime failure: a missing driver library or device, a failed driver call, a
    /// kernel missing from the fatbin, a failed launch.
    #[error("{device}: {op}: {msg}")]
    Device {
        /// The device ("cuda:0").
        device: String,
        /// What was being done, with its sizes ("upload 1024 f32", "launch cast_f32_to_bf16").
        op: String,
        /// What went wrong (the driver's error name and text, or the missing piece).
        msg: String,
    },
}

/// The engine's error: a boxed [`ErrorKind`] so `Result<T>` stays small.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<ErrorKind>);

impl Error {
    /// The kind of error, for matching.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ErrorKind::Io {
            path: path.to_path_buf(),
            cause: source,
        }
        .into()
    }
    /// A format error in `path`.
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        ErrorKind::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
        .into()
    }
    /// An error about tensor `tensor` of `path`.
    pub fn tensor(path: &Path, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        ErrorKind::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
        .into()
    }
    /// An error about config field `field` from `source_name`.
    pub fn config(
        source_name: impl Into<String>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ErrorKind::Config {
            source_name: source_name.into(),
            field: field.into(),
            msg: msg.into(),
        }
        .into()
    }
    /// A shape error in `op`.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        ErrorKind::Shape {
            op,
            msg: msg.into(),
        }
        .into()
    }
    /// A GPU runtime error on `device` while doing `op`.
    pub fn device(
        device: impl Into<String>,
        op: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ErrorKind::Device {
            device: device.into(),
            op: op.into(),
            msg: msg.into(),
        }
        .into()
    }
    /// Something unsupported.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        ErrorKind::Unsupported(msg.into()).into()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error(Box::new(kind))
    }
}
