//! flint's model runtime: model formats (GGUF, safetensors), tokenizer, chat templates, model
//! graphs, KV cache and generation. The kernels and GPU layer it builds on are re-exported so a
//! host program needs one dependency.

#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod image;
pub mod model;
pub mod npy;
pub mod reasoning;
pub mod stepper;
pub mod tokenizer;

pub use error::{Result, RuntimeError};

pub use flint_gpu as gpu;
pub use flint_kernels as kernels;
