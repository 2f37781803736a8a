//! flint's model runtime: model formats (GGUF, safetensors), tokenizer, chat templates, model
//! graphs, KV cache and generation. The kernels and GPU layer it builds on are re-exported so a
//! host program needs one dependency, and what it uses most is at the crate root.
//!
//! ```no_run
//! use flint_runtime::{Device, EngineOptions, Event, Mode, Model};
//! let dev = Device::open("")?; // or Device::from_wgpu(device, queue, &info) on the host's device
//! let model = Model::load(&dev, "SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let mut engine = model.engine(EngineOptions::default())?; // 'static and Send
//! let mode = Mode::Contemplate { branches: 4 };
//! let ids = flint_runtime::reasoning::prompt_ids(&model, mode, "What is 3 + 5?", true)?;
//! let sampling = flint_runtime::SamplingOptions { temperature: 0.7, ..model.sampling(256) };
//! let id = engine.submit(mode.request(ids, sampling))?;
//! engine.run(|event| {
//!     if let Event::Finished { request, output } = event
//!         && request == id
//!     {
//!         println!("{:?}", output.vote.and_then(|v| v.answer));
//!     }
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Speech to text with Whisper (a CTranslate2 or Hugging Face directory):
//!
//! ```no_run
//! use flint_runtime::{Device, TranscribeOptions, Whisper};
//! let dev = Device::open("")?;
//! let path = flint_runtime::fetch::resolve(Some("whisper-tiny.en"), &mut |_| {})?; // or a directory
//! let whisper = Whisper::load(&dev, &path)?;
//! let audio = flint_runtime::audio::read_wav("speech.wav".as_ref())?;
//! let opts = TranscribeOptions { timestamps: true, ..Default::default() };
//! for t in whisper.transcribe_with(&[audio], &opts)? {
//!     for s in &t.segments {
//!         println!("{:.2}-{:.2} {}", s.start, s.end, s.text);
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod audio;
pub mod ct2;
pub mod engine;
pub mod error;
pub mod fetch;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub(crate) mod hf;

pub use hf::Files;
pub mod image;
pub mod kvpool;
pub mod model;
pub mod multimodal;
pub mod npy;
pub mod reasoning;
pub mod request;
pub mod stepper;
pub mod tokenizer;
pub mod whisper;

pub use error::{RequestError, Result, RuntimeError};

// What a host program needs, at the crate root: load a model onto a device (its own, through
// `Device::from_wgpu`, or one flint opens), then generate with a session or serve many
// requests with the batched engine, in any reasoning mode.
pub use engine::{Engine, EngineOptions, Event, Request, RequestId, RequestOutput};
pub use flint_gpu::Device;
pub use generate::{SamplingOptions, Session, StopReason};
pub use model::Model;
pub use multimodal::{AudioFeatures, Media, Pixels};
pub use reasoning::Mode;
pub use whisper::{TranscribeOptions, Transcript, Whisper};

// A host keeps models, engines and sessions in shared state and moves them between threads:
// this fails to compile if one of them stops being `Send` (or a model `Sync`).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn shared<T: Send + Sync + 'static>() {}
    const fn owned<T: Send + 'static>() {}
    shared::<model::Model>();
    owned::<engine::Engine>();
    owned::<generate::Session>();
    shared::<whisper::Whisper>();
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
/// The CPU references and op parameters some runtime types carry (RoPE layouts, sampling).
pub use flint_ref as reference;
