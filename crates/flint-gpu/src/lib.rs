//! flint's GPU layer over wgpu: [`Device`] (pick an adapter or wrap the host's wgpu device),
//! [`Tensor`] (a buffer with shape and dtype), a buffer pool, a pipeline cache keyed by
//! [`PipelineKey`], the [`ShaderRegistry`] with its preprocessor, the [`Recorder`] that
//! batches dispatches into one submit with optional GPU timestamps, [`Plan`]s (recordings
//! frozen for replay, bind groups made once) and the [`ReadbackRing`] that brings small results
//! back without stalling.
//!
//! ```no_run
//! use flint_gpu::{DType, Device};
//! let dev = Device::open("vulkan")?;
//! let t = dev.upload_f32("x", &[1.0, 2.0, 3.0], &[3], DType::F32)?;
//! assert_eq!(dev.read_f32(&t)?, vec![1.0, 2.0, 3.0]);
//! # Ok::<(), flint_gpu::GpuError>(())
//! ```

#![warn(missing_docs)]

mod device;
mod dtype;
mod error;
mod pipeline;
mod pool;
mod readback;
mod recorder;
mod shader;
mod tensor;

#[cfg(not(target_arch = "wasm32"))]
pub use device::adapters;
pub use device::{AdapterDesc, Caps, Device, FEATURES_OFF_VAR, wanted_features, wanted_limits};
pub use dtype::DType;
pub use error::{GpuError, Result};
pub use pipeline::{Kernel, PipelineKey};
pub use pool::Allocation;
pub use readback::ReadbackRing;
pub use recorder::{DispatchTime, Plan, Recorder, Submission};
pub use shader::ShaderRegistry;
pub use tensor::{TENSOR_USAGE, Tensor, block_on, to_f32};

pub use bytemuck;
pub use half;
pub use wgpu;
