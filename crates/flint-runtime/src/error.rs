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
    /// A request refused for a reason a host can match on (see [`RequestError`]).
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// A request the model cannot serve, for a reason without a kind of its own (an image
    /// that does not decode, a prompt that does not fit the model's processor).
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

/// Why a generation request was refused, by kind, with the figures that make its message: a
/// host matches on the kind (a server answers each with its status) and shows the message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The prompt has no tokens.
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    /// A prompt token is outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutsideVocabulary {
        /// The token id.
        id: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// The prompt does not fit the context (the model's, or what a session has left).
    #[error("the prompt has {tokens} tokens but the context holds {context} ({used} already used, one more needed)")]
    TooLong {
        /// Prompt tokens.
        tokens: usize,
        /// The context's size.
        context: usize,
        /// Positions already used (a session's earlier turns).
        used: usize,
    },
    /// The request's worst-case KV cache is larger than the engine's whole pool.
    #[error(
        "{prompt} prompt tokens + {max_tokens} new x {branches} branches need {pages} KV pages of {page_size} tokens; the pool has {pool_pages} ({pool_tokens} tokens)"
    )]
    OverKvBudget {
        /// Prompt tokens.
        prompt: usize,
        /// The token budget.
        max_tokens: usize,
        /// Branches.
        branches: usize,
        /// Pages needed.
        pages: usize,
        /// Tokens per page.
        page_size: usize,
        /// Pages in the pool.
        pool_pages: usize,
        /// Tokens the pool holds.
        pool_tokens: usize,
    },
    /// No branches, or more than one batch holds.
    #[error("{branches} branches: a request needs at least 1 and at most the engine's batch of {max}")]
    Branches {
        /// Branches asked for.
        branches: usize,
        /// The engine's batch.
        max: usize,
    },
    /// A budget of no tokens.
    #[error("max_tokens is 0: nothing to generate")]
    NoTokens,
    /// Sampling values out of range (temperature, top-k, top-p).
    #[error("{0}")]
    Sampling(String),
    /// Images the model cannot take, or that do not match the prompt's image tokens.
    #[error("{0}")]
    Images(String),
    /// Audio the model cannot take (too long, too short), or that does not match the prompt's
    /// audio tokens.
    #[error("{0}")]
    Audio(String),
    /// A voting request to an engine that has no tokenizer to read the branches' answers with.
    #[error("a voting (contemplate) request needs an engine with the model's tokenizer (Model::engine makes one)")]
    NoTokenizer,
}

/// Result alias of the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    /// An I/O error about `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        RuntimeError::Io { path: path.as_ref().display().to_string(), source }
    }
}
