//! flint's model runtime: model formats (GGUF, safetensors), tokenizer, model graphs, KV cache
//! and generation. The kernels and GPU layer it builds on are re-exported here so a host program
//! needs one dependency.

#![warn(missing_docs)]

pub use flint_gpu as gpu;
pub use flint_kernels as kernels;
