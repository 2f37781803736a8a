//! Errors of the GPU layer: every failure is a value that names what failed and which limit or
//! shape was involved, so callers can report it instead of panicking.

use crate::DType;

/// Result alias for the GPU layer.
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

/// An error from the GPU layer.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No adapter matched the selector (or none exists at all).
    #[error("no GPU adapter matches {selector:?}; available: {available}")]
    NoAdapter {
        /// The selector the caller asked for.
        selector: String,
        /// A comma separated list of the adapters that exist.
        available: String,
    },
    /// The adapter refused to create a device.
    #[error("cannot open a device on {adapter}: {message}")]
    RequestDevice {
        /// The adapter's label.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The operation needs a feature this adapter lacks.
    #[error("{adapter} lacks {feature}, which {what} needs")]
    Unsupported {
        /// The adapter's label.
        adapter: String,
        /// The missing feature, e.g. `SHADER_F16`.
        feature: &'static str,
        /// What asked for it.
        what: String,
    },
    /// A buffer is larger than the adapter lets one binding or one buffer be.
    #[error("{what} needs {bytes} bytes, over {adapter}'s {limit_name} of {limit} bytes")]
    TooLarge {
        /// What was being allocated or bound.
        what: String,
        /// Its size in bytes.
        bytes: u64,
        /// Which limit it exceeds.
        limit_name: &'static str,
        /// The limit in bytes.
        limit: u64,
        /// The adapter's label.
        adapter: String,
    },
    /// A tensor's shape or dtype does not fit the operation.
    #[error("{what}: {message}")]
    Shape {
        /// The operation or tensor concerned.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// Host data does not match the tensor it is meant for.
    #[error("{what}: expected {expected} elements of {dtype}, got {got}")]
    DataLength {
        /// The tensor concerned.
        what: String,
        /// The element count the shape implies.
        expected: usize,
        /// The element count supplied.
        got: usize,
        /// The dtype.
        dtype: DType,
    },
    /// A shader could not be found, preprocessed or compiled.
    #[error("shader {shader}: {message}")]
    Shader {
        /// The shader file (and entry point, where known).
        shader: String,
        /// What went wrong.
        message: String,
    },
    /// wgpu reported a validation or out-of-memory error.
    #[error("wgpu error during {during}: {message}")]
    Wgpu {
        /// What flint was doing.
        during: String,
        /// wgpu's message.
        message: String,
    },
    /// Mapping a buffer for reading failed, or the device was lost while waiting.
    #[error("reading back {what}: {message}")]
    Readback {
        /// What was being read.
        what: String,
        /// Why it failed.
        message: String,
    },
}
