//! The runtime's error type: which file, tensor, field or limit went wrong.

use flint_gpu::GpuError;

use crate::gguf::GgufError;

/// An error from the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A GGUF file could not be read or does not describe a supported model.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The GPU layer or a kernel refused.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// A model file or directory is inconsistent (names the file and field).
    #[error("{0}")]
    Model(String),
    /// Tokenizer or chat template trouble.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the model cannot serve (prompt longer than the context, bad sampling values).
    #[error("{0}")]
    Request(String),
    /// Fetching a model failed.
    #[error("fetching {what}: {message}")]
    Fetch {
        /// Which model or package.
        what: String,
        /// Why.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    /// An I/O error about `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        RuntimeError::Io { path: path.as_ref().display().to_string(), source }
    }
}
