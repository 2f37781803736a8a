//! The CPU reference for every flint kernel, and the Params structs that the GPU launchers share.
//!
//! Each op module holds its Params (plain data with shape rules, FLOP and byte counts) and a
//! reference function written plainly: f64 accumulation, max-subtracted softmax, no tricks.
//! The GPU side (flint-kernels) depends on this crate for the Params, never the other way round,
//! so the reference cannot drift towards the kernel.

#![warn(missing_docs)]

pub mod attention;
pub mod audio;
pub mod elementwise;
pub mod embed;
pub mod matmul;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod vision;

/// A Params struct that does not describe a valid operation, or inputs that do not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message}")]
pub struct ParamError {
    /// The operation.
    pub op: &'static str,
    /// What is wrong.
    pub message: String,
}

impl ParamError {
    pub(crate) fn new(op: &'static str, message: impl Into<String>) -> Self {
        ParamError { op, message: message.into() }
    }
}

/// Check that `data` has `expected` elements, naming it `what`.
pub(crate) fn check_len(op: &'static str, what: &str, data: &[f32], expected: usize) -> Result<(), ParamError> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(ParamError::new(op, format!("{what} has {} elements, expected {expected}", data.len())))
    }
}
