//! A model in the page: a GGUF file's or a Hugging Face directory's bytes loaded onto the
//! browser's device, and generation that streams each token to a JavaScript callback while the
//! page's event loop keeps running (every wait for the GPU is awaited), with cancellation
//! between tokens.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use flint_gpu::Device;
use flint_runtime::engine::{EngineOptions, Event};
use flint_runtime::generate::SamplingOptions;
use flint_runtime::image::{self, Rgb};
use flint_runtime::model::{ChatMessage, Model};
use flint_runtime::multimodal::Media;
use flint_runtime::reasoning::{self, Mode, ReplySplitter};
use flint_runtime::tokenizer::StreamDecoder;
use js_sys::{Function, Promise};
use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// Most new tokens a request may ask for when it names no budget.
const DEFAULT_MAX_TOKENS: usize = 256;
/// Branches of a contemplate request that names none, and the most it may ask for.
const DEFAULT_BRANCHES: usize = 4;
const MAX_BRANCHES: usize = 16;

/// A model loaded onto the page's device ([`crate::Flint::load_gguf`], [`crate::Flint::load_hf`]).
#[wasm_bindgen(js_name = Model)]
pub struct WebModel {
    model: Rc<Model>,
    /// Set by [`WebModel::cancel`], read between tokens.
    cancel: Rc<Cell<bool>>,
    /// A generation is running (one at a time per model).
    busy: Rc<Cell<bool>>,
}

/// One message of a conversation, as the page sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
    /// Images of the request's `images` (in order) that go before this message's text.
    #[serde(default)]
    images: usize,
}

/// A generation request, as JSON (see [`WebModel::generate`]).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct GenerateRequest {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    ids: Option<Vec<u32>>,
    chat: bool,
    mode: Option<String>,
    branches: Option<usize>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: usize,
    top_p: Option<f32>,
    seed: u32,
    stop: Option<Vec<u32>>,
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

impl WebModel {
    pub(crate) fn load(dev: &Device, name: &str, bytes: Vec<u8>) -> Result<WebModel, JsError> {
        Ok(WebModel::new(Model::from_gguf_bytes(dev, name, bytes).map_err(js_err)?))
    }

    pub(crate) fn load_hf(dev: &Device, name: &str, files: &js_sys::Object) -> Result<WebModel, JsError> {
        let mut bytes = HashMap::new();
        for entry in js_sys::Object::entries(files).iter() {
            let pair = js_sys::Array::from(&entry);
            let file = pair.get(0).as_string().ok_or_else(|| js_err("a file name is not a string"))?;
            let data = pair.get(1);
            if !data.is_instance_of::<js_sys::Uint8Array>() {
                return Err(js_err(format!("{name}/{file}: expected its bytes as a Uint8Array")));
            }
            bytes.insert(file, js_sys::Uint8Array::from(data).to_vec());
        }
        Ok(WebModel::new(Model::from_hf_files(dev, name, bytes).map_err(js_err)?))
    }

    fn new(model: Model) -> WebModel {
        WebModel { model: Rc::new(model), cancel: Rc::new(Cell::new(false)), busy: Rc::new(Cell::new(false)) }
    }

    /// Mark the model busy and clear any earlier cancel, before the call returns its promise;
    /// a rejected promise when it is busy already.
    fn start(&self) -> Option<Promise> {
        if self.busy.replace(true) {
            let e = js_err("this model is already generating; wait for it or cancel it first");
            return Some(Promise::reject(&e.into()));
        }
        self.cancel.set(false);
        None
    }
}

#[wasm_bindgen(js_class = Model)]
impl WebModel {
    /// What the model is, as JSON: its name, family, sizes, whether it has a chat template and
    /// whether that template has a reasoning format of its own.
    pub fn info(&self) -> String {
        let d = self.model.decoder();
        let c = &d.cfg;
        let template = self.model.tokenizer().chat_template.as_deref();
        serde_json::json!({
            "name": self.model.path().display().to_string(),
            "family": c.family,
            "layers": c.layers,
            "hidden": c.hidden,
            "heads": c.heads,
            "kv_heads": c.kv_heads,
            "vocab": c.vocab,
            "context": c.context,
            "chat_template": template.is_some(),
            "template_reasons": template.is_some_and(reasoning::template_reasons),
            "vision": self.model.takes_images(),
            "weight_bytes_per_token": d.weight_bytes_per_token(),
        })
        .to_string()
    }

    /// Token ids of `text` (with the tokenizer's special tokens when `special`).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, JsError> {
        self.model.tokenizer().encode(text, special).map_err(js_err)
    }

    /// Generate a reply. `request` is JSON with one of `prompt` (text; `chat` wraps it in the
    /// chat template), `messages` (`[{role, content, images}]`, a conversation through the
    /// template, `images` counting the message's images) or `ids` (prompt token ids as they
    /// are); `images` are the prompt's images in order (image files' bytes as `Uint8Array`, or
    /// `ImageData`), which a text prompt places with the model's image placeholder
    /// (`<image>`); `stop` (token ids) replaces the model's stop tokens; `mode` (`instant`, `think` or `contemplate`
    /// with `branches`, 4 by default), `max_tokens` (256 by default), `temperature` (the
    /// mode's: greedy for instant and think), `top_k`, `top_p` and `seed`.
    ///
    /// `on_token` is called with a JSON object per new token: `id`, `text` (the token's text
    /// once it is complete UTF-8), in think mode `reasoning` and `answer` (what the text adds
    /// to each part), in contemplate mode its `branch`. It may return `false` to stop there, as
    /// [`WebModel::cancel`] does.
    ///
    /// Resolves to JSON: `prompt_ids`, `generated_ids`, `logprobs`, `text`, `reasoning` and
    /// `answer` (think mode), `stop` (`stop`, `length`, `context` or `cancelled`) and
    /// `timings` (prompt tokens, prefill and decode milliseconds and tokens per second); in
    /// contemplate mode `branches` (each one's text, answer, ids, log-probability, stop), the
    /// vote's `tally`, `answer` and `chosen` branch, whose text is `text`. A cancelled
    /// contemplate resolves with each branch's text and ids so far, an empty tally, no chosen
    /// branch and `timings` of prompt tokens, tokens generated and elapsed milliseconds.
    /// Rejects on a bad request (naming the field and limit) or a GPU error.
    pub fn generate(&self, request: &str, on_token: Option<Function>, images: Option<js_sys::Array>) -> Promise {
        if let Some(refused) = self.start() {
            return refused;
        }
        let (model, cancel, busy) = (self.model.clone(), self.cancel.clone(), self.busy.clone());
        let request = request.to_string();
        future_to_promise(async move {
            let images = images.map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default();
            let r = generate(&model, &request, on_token.as_ref(), &images, &cancel).await;
            busy.set(false);
            r.map(|v| JsValue::from_str(&v.to_string()))
        })
    }

    /// Time the prefill of the prompt `ids` and one decode step after it, per dispatch, with
    /// the adapter's GPU timestamps. Resolves to JSON: `timestamps` (false where the adapter
    /// has none: the lists are then empty), `prefill` and `step`, each a list of `[label,
    /// microseconds]` in dispatch order.
    pub fn profile(&self, ids: Vec<u32>) -> Promise {
        if let Some(refused) = self.start() {
            return refused;
        }
        let (model, busy) = (self.model.clone(), self.busy.clone());
        future_to_promise(async move {
            let r = profile(&model, &ids).await;
            busy.set(false);
            r.map(|v| JsValue::from_str(&v.to_string())).map_err(Into::into)
        })
    }

    /// Stop the running generation after its current token (its promise resolves with stop
    /// `cancelled`).
    pub fn cancel(&self) {
        self.cancel.set(true);
    }
}

/// Pass a new token's `piece` to the page's callback, if it gave one; whether to go on (the
/// callback returns `false` to stop).
fn emit(on_token: Option<&Function>, piece: &serde_json::Value) -> Result<bool, JsValue> {
    match on_token {
        Some(f) => Ok(f.call1(&JsValue::NULL, &JsValue::from_str(&piece.to_string()))? != JsValue::FALSE),
        None => Ok(true),
    }
}

/// The request's mode (instant unless named; contemplate with `branches`, 4 by default).
fn mode(req: &GenerateRequest) -> Result<Mode, JsError> {
    let branches = req.branches.unwrap_or(DEFAULT_BRANCHES);
    if !(1..=MAX_BRANCHES).contains(&branches) {
        return Err(js_err(format!("branches is {branches}; the page runs 1 to {MAX_BRANCHES}")));
    }
    Mode::parse(req.mode.as_deref().unwrap_or("instant"), branches).map_err(js_err)
}

/// An image as the page gives it: an image file's bytes (`Uint8Array`: PNG, JPEG, GIF, WebP,
/// BMP) or decoded pixels (`ImageData`, or any `{width, height, data}` of RGBA bytes).
fn image(i: usize, v: &JsValue) -> Result<Rgb, JsError> {
    let name = format!("image {i}");
    if v.is_instance_of::<js_sys::Uint8Array>() {
        return image::decode(Path::new(&name), &js_sys::Uint8Array::from(v.clone()).to_vec()).map_err(js_err);
    }
    let get = |k: &str| js_sys::Reflect::get(v, &JsValue::from_str(k)).ok().filter(|x| !x.is_undefined());
    let side = |k: &str| get(k).and_then(|x| x.as_f64()).filter(|x| x.fract() == 0.0 && *x >= 1.0);
    let (Some(w), Some(h), Some(data)) = (side("width"), side("height"), get("data")) else {
        return Err(js_err(format!(
            "{name}: expected a Uint8Array of an image file or ImageData ({{width, height, data}})"
        )));
    };
    if w.max(h) > f64::from(image::MAX_SIDE) || w * h > image::MAX_PIXELS as f64 {
        return Err(js_err(format!(
            "{name}: {w}x{h} is over flint's limits ({} pixels, sides up to {})",
            image::MAX_PIXELS,
            image::MAX_SIDE
        )));
    }
    let rgba = js_sys::Uint8Array::new(&data).to_vec();
    let (w, h) = (w as usize, h as usize);
    if rgba.len() != w * h * 4 {
        return Err(js_err(format!("{name}: {w}x{h} RGBA needs {} bytes, data has {}", w * h * 4, rgba.len())));
    }
    let rgb = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    Rgb::new(w, h, rgb).map_err(js_err)
}

/// The prompt's token ids, and the pixels of its images.
fn prompt_ids(
    model: &Model,
    req: &GenerateRequest,
    mode: Mode,
    images: &[Rgb],
) -> Result<(Vec<u32>, Option<Media>), JsError> {
    let given = [req.prompt.is_some(), req.messages.is_some(), req.ids.is_some()].iter().filter(|&&g| g).count();
    if given != 1 {
        return Err(js_err("a request needs exactly one of prompt, messages and ids"));
    }
    if let Some(ids) = &req.ids {
        if !images.is_empty() {
            return Err(js_err("images go with a prompt or messages, whose text places them; not with ids"));
        }
        return Ok((ids.clone(), None));
    }
    if let Some(prompt) = &req.prompt {
        return reasoning::prompt(model, mode, prompt, images, &[], req.chat).map_err(js_err);
    }
    let template = model.tokenizer().chat_template.as_deref();
    let Some(template) = template else {
        return Err(js_err("messages need the model's chat template, and it has none (tokenizer.chat_template)"));
    };
    let mut messages: Vec<ChatMessage> = Vec::new();
    let own_format = reasoning::template_reasons(template);
    if mode.reasons() && !own_format {
        messages.push(ChatMessage {
            role: "system".into(),
            text: reasoning::REASONING_SYSTEM.into(),
            images: 0,
            audio: 0,
        });
    }
    for m in req.messages.iter().flatten() {
        messages.push(ChatMessage { role: m.role.clone(), text: m.content.clone(), images: m.images, audio: 0 });
    }
    let thinking = (mode.reasons() && own_format).then_some(true);
    model.chat_prompt(&messages, images, &[], thinking).map_err(js_err)
}

async fn generate(
    model: &Model,
    request: &str,
    on_token: Option<&Function>,
    images: &[JsValue],
    cancel: &Cell<bool>,
) -> Result<serde_json::Value, JsValue> {
    let req: GenerateRequest =
        serde_json::from_str(request).map_err(|e| js_err(format!("the generation request: {e}")))?;
    let mode = mode(&req)?;
    let images: Vec<Rgb> = images.iter().enumerate().map(|(i, v)| image(i, v)).collect::<Result<_, _>>()?;
    let (prompt, media) = prompt_ids(model, &req, mode, &images)?;
    let mut sampling: SamplingOptions = model.sampling(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS));
    sampling.temperature = req.temperature.unwrap_or(mode.default_temperature());
    sampling.top_k = req.top_k;
    sampling.top_p = req.top_p.unwrap_or(1.0);
    sampling.seed = req.seed;
    if let Some(stop) = &req.stop {
        sampling.stop = stop.clone();
    }
    if let Mode::Contemplate { branches } = mode {
        return contemplate(model, mode, branches, prompt, media, sampling, on_token, cancel).await;
    }
    let capacity = prompt.len().saturating_add(sampling.max_tokens);
    let mut session = model.session(capacity).map_err(js_err)?;
    let tok = model.tokenizer();
    let mut stream = StreamDecoder::default();
    let mut split = mode.reasons().then(|| ReplySplitter::for_prompt(model, &prompt));
    let mut failed: Option<JsValue> = None;
    let out = session
        .generate_async(&prompt, media.as_ref(), &sampling, |id| {
            let text = match stream.push(tok, id) {
                Ok(t) => t,
                Err(e) => {
                    failed = Some(js_err(e).into());
                    return ControlFlow::Break(());
                }
            };
            let mut piece = serde_json::json!({ "id": id, "text": text });
            if let Some(s) = split.as_mut() {
                let d = s.push(&text);
                piece["reasoning"] = d.reasoning.into();
                piece["answer"] = d.answer.into();
            }
            match emit(on_token, &piece) {
                Ok(true) if !cancel.get() => ControlFlow::Continue(()),
                Ok(_) => ControlFlow::Break(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
        .await
        .map_err(js_err)?;
    if let Some(e) = failed {
        return Err(e);
    }
    let text = tok.decode(&out.tokens, true).map_err(js_err)?;
    let mut v = serde_json::json!({
        "mode": mode.name(),
        "prompt_ids": prompt,
        "generated_ids": out.tokens,
        "logprobs": out.logprobs,
        "text": text,
        "stop": out.stop,
        "timings": out.timings_json(),
    });
    if mode.reasons() {
        let reply = ReplySplitter::for_prompt(model, &prompt).whole(&text);
        v["reasoning"] = reply.reasoning.into();
        v["answer"] = reply.answer.into();
    }
    Ok(v)
}

/// Contemplate: `branches` branches decoded together on the batched engine from one prefill
/// (sharing its KV pages through cascade attention), then a vote over their final answers.
/// Each token reaches `on_token` with its `branch`; the result is the engine's, as `flint
/// generate --mode contemplate --json` prints it (branches, tally, chosen, its text).
#[allow(clippy::too_many_arguments)]
async fn contemplate(
    model: &Model,
    mode: Mode,
    branches: usize,
    prompt: Vec<u32>,
    media: Option<Media>,
    sampling: SamplingOptions,
    on_token: Option<&Function>,
    cancel: &Cell<bool>,
) -> Result<serde_json::Value, JsValue> {
    // A KV cache for this request alone: the prompt once, each branch's own tokens, a page of
    // slack each (the browser's memory is the page's, not the machine's).
    let page = 64;
    let context = model.decoder().cfg.context;
    if prompt.len().saturating_add(sampling.max_tokens) > context {
        return Err(js_err(format!(
            "{} prompt tokens and max_tokens {} are over the model's context of {context}",
            prompt.len(),
            sampling.max_tokens
        ))
        .into());
    }
    let kv_tokens = prompt.len() + branches * (sampling.max_tokens + page) + page;
    let mut engine = model.engine(EngineOptions { kv_tokens, page_size: page, max_batch: branches }).map_err(js_err)?;
    let id = engine.submit(mode.request(prompt.clone(), sampling).with_media(media.map(Arc::new))).map_err(js_err)?;
    let tok = model.tokenizer();
    let started = web_time::Instant::now();
    let mut streams: Vec<StreamDecoder> = (0..branches).map(|_| StreamDecoder::default()).collect();
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); branches];
    while !engine.is_idle() {
        for event in engine.step_async().await.map_err(js_err)? {
            match event {
                Event::Token { request, branch, token, .. } if request == id => {
                    seen[branch].push(token);
                    let text = streams[branch].push(tok, token).map_err(js_err)?;
                    if !emit(on_token, &json!({ "branch": branch, "id": token, "text": text }))? {
                        cancel.set(true);
                    }
                }
                Event::Finished { request, output } if request == id => {
                    let mut v = reasoning::describe(model, mode, &output).map_err(js_err)?;
                    v["prompt_ids"] = json!(prompt);
                    v["stop"] = json!(output.chosen().map(|b| b.stop));
                    return Ok(v);
                }
                Event::Failed { request, error } if request == id => return Err(js_err(error).into()),
                _ => {}
            }
        }
        if cancel.get() {
            engine.cancel(id).map_err(js_err)?;
            let texts: Vec<String> =
                seen.iter().map(|t| tok.decode(t, true)).collect::<Result<_, _>>().map_err(js_err)?;
            let branches: Vec<serde_json::Value> = texts
                .iter()
                .zip(&seen)
                .map(|(text, ids)| json!({ "text": text, "generated_ids": ids, "stop": "cancelled" }))
                .collect();
            let elapsed = started.elapsed().as_secs_f64();
            let generated: usize = seen.iter().map(Vec::len).sum();
            return Ok(json!({
                "mode": mode.name(),
                "prompt_ids": prompt,
                "stop": "cancelled",
                "text": texts[0],
                "branches": branches,
                "tally": [],
                "chosen": null,
                "answer": null,
                "timings": {
                    "prompt_tokens": prompt.len(),
                    "generated_tokens": generated,
                    "elapsed_ms": elapsed * 1e3,
                    "tokens_per_s": generated as f64 / elapsed.max(1e-9),
                },
            }));
        }
    }
    Err(js_err("the engine went idle without finishing the request").into())
}

async fn profile(model: &Model, ids: &[u32]) -> Result<serde_json::Value, JsError> {
    let Some(&last) = ids.last() else { return Err(js_err("profile needs at least one prompt id")) };
    let mut session = model.session(ids.len() + 1).map_err(js_err)?;
    let us = |times: Vec<flint_gpu::DispatchTime>| -> Vec<(String, f64)> {
        times.into_iter().map(|t| (t.label, t.ns / 1e3)).collect()
    };
    let prefill = us(session.profile_prefill_async(ids).await.map_err(js_err)?);
    let step = us(session.profile_step_async(last, &model.sampling(1)).await.map_err(js_err)?);
    let timestamps = model.decoder().device().caps().timestamps;
    Ok(json!({ "timestamps": timestamps, "prefill": prefill, "step": step }))
}
