//! flint in the browser: the JavaScript API over wasm-bindgen. `cargo xtask web` builds this
//! crate for wasm32, binds it with `wasm-bindgen --target web` and serves it with the pages in
//! `web/`; `web/flint.js` wraps the bindings so that a Rust panic reaches JavaScript as an
//! exception carrying the panic's message, not as a bare `unreachable` trap.
//!
//! What a page can do today:
//! - [`Flint::open`]: request the browser's WebGPU adapter and a device with the features flint
//!   uses where the adapter has them;
//! - [`Flint::adapter`]: the adapter's name, backend and capabilities, as JSON;
//! - [`Flint::load_gguf`] and [`Flint::load_hf`]: load a GGUF model, or a Hugging Face
//!   directory (Idefics3/SmolVLM with images), from the bytes the page fetched; then
//!   [`WebModel::generate`] streams a reply token by token in any reasoning mode (instant,
//!   think, contemplate with N branches and a vote), with images, [`WebModel::cancel`] stops it
//!   and [`WebModel::profile`] times a prefill and a decode step per dispatch;
//! - [`Flint::roofline`] and [`Flint::bench`]: the adapter's measured peaks and the kernel
//!   benches, rows as `flint bench --json` prints them;
//! - [`Flint::cases`] and [`Flint::conformance`]: run the conformance table (every case the
//!   adapter supports, the rest reported skipped with the reason) and get its rows in the form
//!   of `flint conformance --json`, one callback per row as they finish.
//!
//! Every call that touches the GPU is asynchronous (a JavaScript `Promise`): the browser maps
//! buffers and reports errors only from its event loop, so flint awaits its readbacks there
//! instead of blocking.

#![warn(missing_docs)]

use flint_conformance::cases::all_cases;
use flint_conformance::{Case, Roofline, Tier, bench_case_async, measure_roofline_async, run_case_async};
use flint_gpu::Device;
use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

mod model;
mod panic;

pub use model::WebModel;
pub use panic::{last_panic, on_panic};

/// A WebGPU device opened for flint.
#[wasm_bindgen]
pub struct Flint {
    dev: Device,
}

#[wasm_bindgen]
impl Flint {
    /// Request the browser's adapter and open a device on it (rejects with the reason when the
    /// browser has no WebGPU or no adapter).
    pub async fn open() -> Result<Flint, JsError> {
        panic::install();
        let dev = Device::request().await.map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Flint { dev })
    }

    /// The adapter and what it offers, as a JSON object: name, backend, driver, device type,
    /// features (`f16`, `subgroups`, `timestamps`) and the limits flint plans around.
    pub fn adapter(&self) -> String {
        let c = self.dev.caps();
        serde_json::json!({
            // Browsers may hide the adapter's name (WebGPU's adapter info is opt-in).
            "label": if c.name.is_empty() {
                format!("{} (a {} adapter the browser does not name)", c.backend, c.device_type)
            } else {
                c.label()
            },
            "name": c.name,
            "backend": c.backend,
            "driver": c.driver,
            "device_type": c.device_type,
            "f16": c.f16,
            "subgroups": c.subgroups,
            "subgroup_sizes": [c.subgroup_min_size, c.subgroup_max_size],
            "timestamps": c.timestamps,
            "max_storage_binding": c.max_storage_binding,
            "max_buffer": c.max_buffer,
            "max_storage_buffers": c.max_storage_buffers,
            "max_workgroup_storage": c.max_workgroup_storage,
            "max_invocations": c.max_invocations,
        })
        .to_string()
    }

    /// The names of the conformance cases whose op or name starts with `filter` (every case
    /// for an empty filter), test tier only unless `bench` is set.
    pub fn cases(&self, filter: &str, bench: bool) -> Vec<String> {
        selected(filter, bench).iter().map(|c| c.name()).collect()
    }

    /// Run the conformance cases [`Flint::cases`] selects, one after another. Each finished
    /// row (the JSON object `flint conformance --json` prints) is passed to `on_row` when
    /// given; the promise resolves to the JSON array of every row. A case the adapter cannot
    /// run is a row with status `skip` and its reason; a failing case is a row with status
    /// `fail`, not a rejection.
    pub fn conformance(&self, filter: String, bench: bool, on_row: Option<Function>) -> Promise {
        let dev = self.dev.clone();
        future_to_promise(async move {
            let mut rows = Vec::new();
            for case in selected(&filter, bench) {
                let report = run_case_async(&dev, case.as_ref()).await;
                let row = serde_json::to_string(&report).map_err(|e| JsError::new(&e.to_string()))?;
                if let Some(f) = &on_row {
                    f.call1(&JsValue::NULL, &JsValue::from_str(&row))?;
                }
                rows.push(row);
            }
            Ok(JsValue::from_str(&format!("[{}]", rows.join(","))))
        })
    }
}

#[wasm_bindgen]
impl Flint {
    /// Load a GGUF model (llama or gemma3 family) from the bytes of its file; `name` names it
    /// in errors. The weights are uploaded to the device; the bytes can be dropped after.
    /// Throws, naming the file and what is wrong, on a file that is not GGUF, a family flint
    /// does not read, or weights larger than the device's buffers.
    #[wasm_bindgen(js_name = loadGguf)]
    pub fn load_gguf(&self, name: &str, bytes: Vec<u8>) -> Result<WebModel, JsError> {
        WebModel::load(&self.dev, name, bytes)
    }

    /// Load a Hugging Face model directory (Idefics3/SmolVLM, Llama, Gemma 3, Qwen2) from its
    /// files: an object mapping each file name (`config.json`, `model.safetensors`,
    /// `tokenizer.json`, ...) to its bytes as a `Uint8Array`; `name` stands for the directory
    /// in errors. Throws, naming the file and field or tensor, on what the native loader
    /// refuses.
    #[wasm_bindgen(js_name = loadHf)]
    pub fn load_hf(&self, name: &str, files: &js_sys::Object) -> Result<WebModel, JsError> {
        WebModel::load_hf(&self.dev, name, files)
    }
}

#[wasm_bindgen]
impl Flint {
    /// Measure the adapter's peaks with flint's roofline kernels (FMA chains; the better of a
    /// 64 MiB vec4 copy and a load-only reduction), as `flint bench` does first. Resolves to
    /// JSON: `gflops`, `gbs`, `source`.
    pub fn roofline(&self) -> Promise {
        let dev = self.dev.clone();
        future_to_promise(async move {
            let r = measure_roofline_async(&dev).await.map_err(|e| JsError::new(&e))?;
            Ok(JsValue::from_str(&serde_json::to_string(&r).map_err(|e| JsError::new(&e.to_string()))?))
        })
    }

    /// Time the bench-tier kernel cases whose op or name starts with `filter` (`all` adds the
    /// test tier), `iters` launches each, against `roofline` (the JSON [`Flint::roofline`]
    /// gave). Each finished row (as `flint bench --json` prints it: median and min
    /// microseconds, GFLOP/s, GB/s, the roofline fraction, per-dispatch times; or `skipped`
    /// with the reason) goes to `on_row`; resolves to the JSON array of rows.
    pub fn bench(&self, filter: String, all: bool, iters: usize, roofline: &str, on_row: Option<Function>) -> Promise {
        let dev = self.dev.clone();
        let roofline = serde_json::from_str::<serde_json::Value>(roofline);
        future_to_promise(async move {
            let r = roofline.map_err(|e| JsError::new(&format!("the roofline: {e}")))?;
            let num = |k: &str| r.get(k).and_then(serde_json::Value::as_f64).filter(|v| *v > 0.0);
            let (Some(gflops), Some(gbs)) = (num("gflops"), num("gbs")) else {
                return Err(JsError::new("the roofline needs positive gflops and gbs").into());
            };
            let source = r.get("source").and_then(serde_json::Value::as_str).unwrap_or("given").to_string();
            let roofline = Roofline { gflops, gbs, source };
            let adapter = dev.caps().short_label();
            let mut rows = Vec::new();
            for case in cases_where(&filter, |t| all || t == Tier::Bench) {
                let row = match bench_case_async(&dev, case.as_ref(), iters.max(1), &roofline).await {
                    Ok(r) => serde_json::to_value(&r).map_err(|e| JsError::new(&e.to_string()))?,
                    Err(e) if e.starts_with("skipped") => {
                        serde_json::json!({ "case": case.name(), "adapter": adapter, "skipped": e })
                    }
                    Err(e) => serde_json::json!({ "case": case.name(), "adapter": adapter, "error": e }),
                };
                if let Some(f) = &on_row {
                    f.call1(&JsValue::NULL, &JsValue::from_str(&row.to_string()))?;
                }
                rows.push(row);
            }
            Ok(JsValue::from_str(&serde_json::Value::Array(rows).to_string()))
        })
    }
}

/// The cases `flint conformance --op FILTER` runs (with `--bench-cases` when `bench`).
fn selected(filter: &str, bench: bool) -> Vec<Box<dyn Case>> {
    cases_where(filter, |t| bench || t == Tier::Test)
}

/// The cases of a tier `tier` accepts whose op or name starts with `filter` (every op for an
/// empty filter).
fn cases_where(filter: &str, tier: impl Fn(Tier) -> bool) -> Vec<Box<dyn Case>> {
    all_cases()
        .into_iter()
        .filter(|c| tier(c.tier()))
        .filter(|c| filter.is_empty() || c.op().starts_with(filter) || c.name().starts_with(filter))
        .collect()
}
