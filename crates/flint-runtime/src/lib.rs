//! flint's model runtime: model formats (GGUF, safetensors), tokenizer, chat templates, model
//! graphs, KV cache and generation. The kernels and GPU layer it builds on are re-exported so a
//! host program needs one dependency.

#![warn(missing_docs)]

pub mod engine;
pub mod error;
pub mod fetch;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod image;
pub mod model;
pub mod npy;
pub mod reasoning;
pub mod request;
pub mod stepper;
pub mod tokenizer;

pub use error::{RequestError, Result, RuntimeError};

// A host keeps models, engines and sessions in shared state and moves them between threads:
// this fails to compile if one of them stops being `Send` (or a model `Sync`).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn shared<T: Send + Sync + 'static>() {}
    const fn owned<T: Send + 'static>() {}
    shared::<model::Model>();
    owned::<engine::Engine>();
    owned::<generate::Session>();
};

/// Refuse anything but a regular file (symlinks followed) before it is opened: opening a FIFO
/// blocks until a writer comes, and a device or a directory is no model, image or prompt file.
pub fn check_regular(path: &std::path::Path) -> std::io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_dir() { "a directory" } else { "not a regular file (a FIFO, socket or device)" };
    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, what))
}

pub use flint_gpu as gpu;
pub use flint_kernels as kernels;
