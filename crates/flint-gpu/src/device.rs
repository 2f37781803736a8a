//! Adapters and devices: enumerate what wgpu reaches, pick one by backend or name, or wrap a wgpu
//! device that the host program already owns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pipeline::{Kernel, PipelineKey};
use crate::pool::BufferPool;
use crate::{GpuError, Result, ShaderRegistry};

/// What an adapter can do, as far as flint's kernels care.
#[derive(Clone, Debug)]
pub struct Caps {
    /// wgpu backend, lowercase (`vulkan`, `gl`, `metal`, `dx12`).
    pub backend: String,
    /// The adapter's name as the driver reports it.
    pub name: String,
    /// Driver name and version.
    pub driver: String,
    /// `cpu`, `discrete`, `integrated`, `virtual` or `other`.
    pub device_type: String,
    /// WGSL `f16` in shaders and storage (`SHADER_F16`).
    pub f16: bool,
    /// Subgroup operations (`SUBGROUP`).
    pub subgroups: bool,
    /// Smallest subgroup size the adapter may use.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max_size: u32,
    /// GPU timestamps at compute pass boundaries (`TIMESTAMP_QUERY`).
    pub timestamps: bool,
    /// Largest storage buffer binding, in bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer: u64,
    /// Storage buffers one compute shader may bind.
    pub max_storage_buffers: u32,
    /// Largest uniform buffer binding, in bytes.
    pub max_uniform_binding: u64,
    /// Workgroup memory, in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Alignment of storage buffer binding offsets, in bytes.
    pub storage_offset_alignment: u32,
    /// Alignment of uniform buffer binding offsets, in bytes.
    pub uniform_offset_alignment: u32,
}

impl Caps {
    fn new(info: &wgpu::AdapterInfo, features: wgpu::Features, limits: &wgpu::Limits) -> Self {
        Caps {
            backend: info.backend.to_str().to_string(),
            name: info.name.clone(),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            device_type: match info.device_type {
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::DiscreteGpu => "discrete",
                wgpu::DeviceType::IntegratedGpu => "integrated",
                wgpu::DeviceType::VirtualGpu => "virtual",
                wgpu::DeviceType::Other => "other",
            }
            .to_string(),
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            max_uniform_binding: limits.max_uniform_buffer_binding_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
        }
    }

    /// `"vulkan llvmpipe"`: backend and the adapter name up to its first parenthesis, the form
    /// used in test and case names.
    pub fn short_label(&self) -> String {
        let name = self.name.split(" (").next().unwrap_or(&self.name).trim();
        format!("{} {}", self.backend, name).to_lowercase()
    }

    /// Backend, full name and driver, for matching selectors and for reports.
    pub fn label(&self) -> String {
        format!("{} {} [{}]", self.backend, self.name, self.driver)
    }

    /// Whether every whitespace separated term of `selector` matches this adapter: a term equal
    /// to the backend, or contained in the name or driver (case-insensitive).
    pub fn matches(&self, selector: &str) -> bool {
        let name = self.name.to_lowercase();
        let driver = self.driver.to_lowercase();
        selector.split_whitespace().all(|term| {
            let term = term.to_lowercase();
            term == self.backend || name.contains(&term) || driver.contains(&term)
        })
    }
}

/// One adapter wgpu found, described without opening it.
#[derive(Clone, Debug)]
pub struct AdapterDesc {
    /// Position in flint's adapter order (usable as a selector).
    pub index: usize,
    /// Its capabilities.
    pub caps: Caps,
}

#[cfg(not(target_arch = "wasm32"))]
fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = wgpu::Backends::all();
    }
    wgpu::Instance::new(desc)
}

#[cfg(not(target_arch = "wasm32"))]
/// Adapters in preference order: real GPUs before CPUs, native APIs before GL.
fn sorted_adapters() -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let ty = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        (ty, u8::from(info.backend == wgpu::Backend::Gl))
    };
    adapters.sort_by_key(rank);
    adapters
}

#[cfg(not(target_arch = "wasm32"))]
/// Every adapter wgpu reaches, in flint's preference order.
pub fn adapters() -> Vec<AdapterDesc> {
    sorted_adapters()
        .iter()
        .enumerate()
        .map(|(index, a)| AdapterDesc { index, caps: Caps::new(&a.get_info(), a.features(), &a.limits()) })
        .collect()
}

/// The features flint uses where the adapter has them: f16 arithmetic and storage (f16 KV
/// caches and weights), subgroup operations (the subgroup matmul and reductions) and timestamp
/// queries (`flint bench`, `--profile`). A host that creates its own device for
/// [`Device::from_wgpu`] should request `adapter.features() & wanted_features()`; flint works
/// without any of them, choosing other kernel variants.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY
}

/// Environment variable naming features flint does not ask for even where the adapter has them
/// (comma-separated: `subgroups`, `f16`, `timestamps`), so that one machine can run the kernels
/// an adapter without them gets (the browser's SwiftShader has no subgroups and no f16).
pub const FEATURES_OFF_VAR: &str = "FLINT_FEATURES_OFF";

/// The features [`FEATURES_OFF_VAR`] turns off (none in the browser, which has no environment).
fn features_off() -> Result<wgpu::Features> {
    #[cfg(target_arch = "wasm32")]
    return Ok(wgpu::Features::empty());
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var(FEATURES_OFF_VAR) {
        Ok(list) => parse_features_off(&list),
        Err(_) => Ok(wgpu::Features::empty()),
    }
}

/// The features a [`FEATURES_OFF_VAR`] value names.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn parse_features_off(list: &str) -> Result<wgpu::Features> {
    let mut off = wgpu::Features::empty();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        off |= match name.to_ascii_lowercase().as_str() {
            "subgroups" | "subgroup" => wgpu::Features::SUBGROUP,
            "f16" | "shader_f16" => wgpu::Features::SHADER_F16,
            "timestamps" | "timestamp" => wgpu::Features::TIMESTAMP_QUERY,
            _ => {
                return Err(GpuError::RequestDevice {
                    adapter: "any".into(),
                    message: format!("{FEATURES_OFF_VAR}: unknown feature {name:?} (subgroups, f16, timestamps)"),
                });
            }
        };
    }
    Ok(off)
}

/// The limits flint would like for a device on `adapter`: the adapter's own (largest bindings
/// and buffers, most storage bindings per stage). Kernels that need more than a device has are
/// refused or split with an error naming the limit, so the defaults also work, with smaller
/// models.
pub fn wanted_limits(adapter: &wgpu::Adapter) -> wgpu::Limits {
    adapter.limits()
}

/// Shader file and defines: what a compiled module depends on.
pub(crate) type ModuleKey = (String, Vec<(String, String)>);

pub(crate) struct DeviceInner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) caps: Caps,
    pub(crate) pool: BufferPool,
    pub(crate) modules: Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>,
    pub(crate) kernels: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    pub(crate) timestamp_period: f32,
    /// On GL, wgpu holds one context lock for every call and panics when a thread waits more
    /// than a few seconds for it, which a slow shader compile on another thread can cause; flint
    /// therefore runs its own GL calls one thread at a time. `None` on other backends.
    pub(crate) gl_serial: Option<parking_lot::ReentrantMutex<()>>,
    /// The first error that reached flint after its call had returned (an uncaptured error on a
    /// device flint opened, or, in the browser, an error scope whose promise settled later); the
    /// next awaited readback returns it.
    pub(crate) deferred: Arc<Mutex<Option<GpuError>>>,
}

/// A GPU device and queue with flint's caches. Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("adapter", &self.inner.caps.label()).finish()
    }
}

impl Device {
    #[cfg(not(target_arch = "wasm32"))]
    /// Open the first adapter matching `selector` (see [`Caps::matches`]; a number picks by
    /// index; an empty selector picks the preferred adapter).
    pub fn open(selector: &str) -> Result<Device> {
        let adapters = sorted_adapters();
        let chosen = match selector.trim().parse::<usize>() {
            Ok(i) => adapters.get(i),
            Err(_) => adapters.iter().find(|a| {
                let caps = Caps::new(&a.get_info(), a.features(), &a.limits());
                caps.matches(selector)
            }),
        };
        match chosen {
            Some(a) => Self::from_adapter(a),
            None => Err(no_adapter(selector, &adapters)),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    /// Open every adapter matching `selector` (all of them for an empty selector), each as its
    /// own device. Adapters that fail to open are returned as errors in place.
    pub fn open_all(selector: &str) -> Vec<Result<Device>> {
        sorted_adapters()
            .iter()
            .filter(|a| Caps::new(&a.get_info(), a.features(), &a.limits()).matches(selector))
            .map(Self::from_adapter)
            .collect()
    }

    /// Open a device on a wgpu adapter, asking for the features flint uses where present and
    /// the adapter's own limits.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Device> {
        pollster::block_on(Self::from_adapter_async(adapter))
    }

    /// [`Device::from_adapter`] without blocking (the browser's device request is a promise).
    pub async fn from_adapter_async(adapter: &wgpu::Adapter) -> Result<Device> {
        let info = adapter.get_info();
        let features = adapter.features() & wanted_features() & !features_off()?;
        let limits = wanted_limits(adapter);
        let desc = wgpu::DeviceDescriptor {
            label: Some("flint"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = adapter.request_device(&desc).await.map_err(|e| GpuError::RequestDevice {
            adapter: format!("{} {}", info.backend.to_str(), info.name),
            message: e.to_string(),
        })?;
        let dev = Self::from_wgpu(device, queue, &info);
        // wgpu panics on errors nobody captures; flint captures its own with error scopes, and
        // on a device it owns, anything else is logged rather than allowed to abort, and kept
        // for the next awaited readback to return.
        let deferred = dev.inner.deferred.clone();
        dev.inner.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!(target: "flint_gpu", "uncaptured wgpu error: {e}");
            defer(
                &deferred,
                GpuError::Wgpu { during: "running flint's work".into(), message: describe_wgpu_error(&e) },
            );
        }));
        Ok(dev)
    }

    /// Open the preferred adapter without blocking: the way in on the browser's WebGPU, where
    /// adapters are requested, not listed, and every request is a promise. Natively this is
    /// [`Device::open`] with an empty selector.
    pub async fn request() -> Result<Device> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            Self::open("")
        }
        #[cfg(target_arch = "wasm32")]
        {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends: wgpu::Backends::BROWSER_WEBGPU,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            let adapter = instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| GpuError::RequestDevice { adapter: "WebGPU".into(), message: e.to_string() })?;
            Self::from_adapter_async(&adapter).await
        }
    }

    /// Wrap a device and queue that the host program created, so flint can run inside an
    /// application that owns the GPU. Features and limits are read from the device (see
    /// [`wanted_features`]). The host's uncaptured-error handler is left as it is: flint's
    /// own errors are caught in error scopes and come back from its calls as values. Waiting
    /// for flint's work waits for flint's submissions only, not for the host's.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue, info: &wgpu::AdapterInfo) -> Device {
        let caps = Caps::new(info, device.features(), &device.limits());
        let timestamp_period = queue.get_timestamp_period();
        let gl_serial = (info.backend == wgpu::Backend::Gl).then(|| parking_lot::ReentrantMutex::new(()));
        Device {
            inner: Arc::new(DeviceInner {
                device,
                queue,
                caps,
                pool: BufferPool::default(),
                modules: Mutex::default(),
                kernels: Mutex::default(),
                timestamp_period,
                gl_serial,
                deferred: Arc::default(),
            }),
        }
    }

    /// The adapter's capabilities.
    pub fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    /// The wgpu device.
    pub fn wgpu(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Nanoseconds per timestamp tick.
    pub fn timestamp_period(&self) -> f32 {
        self.inner.timestamp_period
    }

    /// Release pooled buffers that nothing uses.
    pub fn trim_pool(&self) {
        let _serial = self.serial();
        self.inner.pool.trim();
    }

    /// Bytes held by free pooled buffers.
    pub fn pooled_bytes(&self) -> u64 {
        self.inner.pool.free_bytes()
    }

    /// Bytes of GPU memory in flint's tensors (weights, KV caches, activations: every buffer the
    /// pool made, in use or free). It only falls on [`Device::trim_pool`], so after a workload
    /// that started from a trimmed pool it is that workload's peak.
    pub fn tensor_bytes(&self) -> u64 {
        self.inner.pool.held_bytes()
    }

    /// An error unless the adapter has `SHADER_F16`.
    pub fn require_f16(&self, what: &str) -> Result<()> {
        if self.inner.caps.f16 {
            Ok(())
        } else {
            Err(GpuError::Unsupported {
                adapter: self.inner.caps.short_label(),
                feature: "SHADER_F16",
                what: what.to_string(),
            })
        }
    }

    /// Split `count` workgroups into a grid that respects the per-dimension limit. Kernels
    /// recover the linear index as `id.x + id.y * num_workgroups.x`.
    pub fn grid(&self, count: u32) -> [u32; 3] {
        let max = self.inner.caps.max_workgroups_per_dim.max(1);
        if count <= max {
            [count.max(1), 1, 1]
        } else {
            let y = count.div_ceil(max);
            [count.div_ceil(y), y, 1]
        }
    }

    /// Hold while calling into wgpu on backends that need calls serialised (GL).
    pub(crate) fn serial(&self) -> Option<parking_lot::ReentrantMutexGuard<'_, ()>> {
        self.inner.gl_serial.as_ref().map(|m| m.lock())
    }

    /// Wait until the GPU has run submission `index` (and what the queue holds before it; a
    /// host's later work is not waited for).
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<()> {
        let _serial = self.serial();
        self.inner
            .device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map(|_| ())
            .map_err(|e| GpuError::Wgpu { during: "waiting for a submission".into(), message: e.to_string() })
    }

    /// Wait for all submitted work (the host's too, on a device shared with it).
    pub fn wait_idle(&self) -> Result<()> {
        let _serial = self.serial();
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::Wgpu { during: "waiting for the queue".into(), message: e.to_string() })
    }

    /// Run `f` inside validation and out-of-memory error scopes and turn what they caught into
    /// an error naming `during`.
    pub(crate) fn scoped<T>(&self, during: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.inner.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.inner.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let value = f();
        #[cfg(not(target_arch = "wasm32"))]
        {
            let v = pollster::block_on(validation.pop());
            let o = pollster::block_on(oom.pop());
            match v.or(o) {
                None => Ok(value),
                Some(e) => Err(GpuError::Wgpu { during: during(), message: describe_wgpu_error(&e) }),
            }
        }
        // The browser answers error scopes with promises, which settle only after control goes
        // back to its event loop: what they catch is kept and returned by the next awaited
        // readback ([`Device::read_bytes_async`]).
        #[cfg(target_arch = "wasm32")]
        {
            let (v, o) = (validation.pop(), oom.pop());
            let (during, deferred) = (during(), self.inner.deferred.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let (v, o) = (v.await, o.await);
                if let Some(e) = v.or(o) {
                    defer(&deferred, GpuError::Wgpu { during, message: describe_wgpu_error(&e) });
                }
            });
            Ok(value)
        }
    }

    /// The compiled kernel for `key`, compiling and caching it on first use.
    pub fn kernel(&self, registry: &ShaderRegistry, key: &PipelineKey) -> Result<Arc<Kernel>> {
        let _serial = self.serial();
        if let Some(k) = self.inner.kernels.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(k);
        }
        let started = web_time::Instant::now();
        let kernel = Arc::new(Kernel::compile(self, registry, key)?);
        tracing::debug!(kernel = %key.describe(), ms = started.elapsed().as_millis() as u64, "compiled");
        if let Ok(mut m) = self.inner.kernels.lock() {
            m.insert(key.clone(), kernel.clone());
        }
        Ok(kernel)
    }

    /// Number of compiled kernels in the cache.
    pub fn cached_kernels(&self) -> usize {
        self.inner.kernels.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Keep `e` for the next awaited readback, unless an earlier error is already waiting (the
/// first error explains the rest).
fn defer(slot: &Mutex<Option<GpuError>>, e: GpuError) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(e);
    }
}

/// wgpu's Display for errors leaves out the description; this keeps it.
fn describe_wgpu_error(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::Validation { description, .. } => description.trim().to_string(),
        wgpu::Error::OutOfMemory { .. } => "out of memory".to_string(),
        other => other.to_string(),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn no_adapter(selector: &str, adapters: &[wgpu::Adapter]) -> GpuError {
    let available = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!("{i}: {} {}", info.backend.to_str(), info.name)
        })
        .collect::<Vec<_>>();
    GpuError::NoAdapter {
        selector: selector.to_string(),
        available: if available.is_empty() { "none".into() } else { available.join(", ") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_off_names() {
        assert_eq!(parse_features_off("").unwrap(), wgpu::Features::empty());
        assert_eq!(
            parse_features_off(" subgroups, F16 ,").unwrap(),
            wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16
        );
        assert_eq!(parse_features_off("timestamps").unwrap(), wgpu::Features::TIMESTAMP_QUERY);
        let err = parse_features_off("subgroups,warp").unwrap_err().to_string();
        assert!(err.contains("FLINT_FEATURES_OFF") && err.contains("\"warp\""), "{err}");
    }
}
