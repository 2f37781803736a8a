//! `flint serve`: an OpenAI-compatible HTTP server on flint's batched engine.
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (streamed as server-sent
//! events or not), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text). Every
//! request goes to one [`flint_runtime::engine::Engine`] on its own thread, so concurrent
//! requests are decoded together in batched steps; `n > 1` choices are branches of one prefill
//! sharing its KV pages. flint's reasoning modes are asked for with `"mode"` (or OpenAI's
//! `reasoning_effort`): think returns the reasoning apart from the answer
//! (`message.reasoning_content`), contemplate decodes branches and answers with their vote.
//!
//! Limits answer with OpenAI's error object and a status: a malformed request 400, a missing or
//! wrong API key 401, a body over the limit 413, more requests than the concurrency limit 429,
//! a server shutting down 503. A client that disconnects cancels its request and frees its
//! pages.

#![warn(missing_docs)]

pub mod api;
mod metrics;
mod worker;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use flint_runtime::engine::{EngineOptions, Request, RequestOutput};
use flint_runtime::generate::{SamplingOptions, StopReason};
use flint_runtime::image::Rgb;
use flint_runtime::model::{ChatMessage, Model};
use flint_runtime::multimodal::Media;
use flint_runtime::reasoning::{self, Mode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::api::{ApiError, ChatRequest, Common, CompletionRequest, Content, Part};
use crate::metrics::HttpMetrics;
use crate::worker::{Command, EngineGauges, Out};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen (127.0.0.1 unless told otherwise).
    pub addr: SocketAddr,
    /// The name `/v1/models` lists and responses carry.
    pub model_name: String,
    /// A bearer key every request but `/health` must carry.
    pub api_key: Option<String>,
    /// The engine's sizes (KV pool, batch).
    pub engine: EngineOptions,
    /// Largest request body, in bytes (images come inline as data URLs).
    pub max_body_bytes: usize,
    /// Longest prompt, in tokens (at most the model's context).
    pub max_prompt_tokens: usize,
    /// Most new tokens a choice may ask for.
    pub max_tokens: usize,
    /// Requests queued or running at once; more are answered 429.
    pub max_concurrent: usize,
    /// Let `image_url` name a local file (off: data URLs only).
    pub allow_local_files: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model_name: "flint".into(),
            api_key: None,
            engine: EngineOptions::default(),
            max_body_bytes: 32 << 20,
            max_prompt_tokens: usize::MAX,
            max_tokens: 4096,
            max_concurrent: 256,
            allow_local_files: false,
        }
    }
}

struct AppState {
    model: Arc<Model>,
    opts: ServeOptions,
    tx: Mutex<Option<std::sync::mpsc::Sender<Command>>>,
    gauges: Arc<Mutex<EngineGauges>>,
    /// Cleared when the engine's thread has stopped (it panicked, say).
    engine_up: Arc<AtomicBool>,
    http: Mutex<HttpMetrics>,
    in_system: AtomicUsize,
    draining: AtomicBool,
    next_key: AtomicU64,
}

impl AppState {
    fn send(&self, c: Command) -> Result<(), ApiError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref().map(|t| t.send(c)) {
            Some(Ok(())) => Ok(()),
            _ => Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped")),
        }
    }
}

/// A server bound to its address, not yet serving.
pub struct Server {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    worker: std::thread::JoinHandle<()>,
}

impl Server {
    /// Make the engine over `model` (an error if it cannot be made: no device memory for its KV
    /// pool, say), bind `opts.addr` and start the engine's thread.
    pub async fn bind(model: Model, opts: ServeOptions) -> std::io::Result<Server> {
        let engine = model
            .engine(opts.engine.clone())
            .map_err(|e| std::io::Error::other(format!("the engine could not be made: {e}")))?;
        let listener = tokio::net::TcpListener::bind(opts.addr).await?;
        let model = Arc::new(model);
        let (tx, rx) = std::sync::mpsc::channel();
        let gauges = Arc::new(Mutex::new(EngineGauges::default()));
        let engine_up = Arc::new(AtomicBool::new(true));
        let worker = {
            let (gauges, up) = (gauges.clone(), engine_up.clone());
            std::thread::Builder::new()
                .name("flint-engine".into())
                .spawn(move || worker::run(engine, rx, gauges, up))?
        };
        let state = Arc::new(AppState {
            model,
            opts,
            tx: Mutex::new(Some(tx)),
            gauges,
            engine_up,
            http: Mutex::new(HttpMetrics::default()),
            in_system: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            next_key: AtomicU64::new(1),
        });
        Ok(Server { state, listener, worker })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes; then refuse new requests with 503, let the running
    /// ones finish, and stop the engine.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Server { state, listener, worker } = self;
        let limit = state.opts.max_body_bytes;
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(limit))
            .with_state(state.clone());
        let draining = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: refusing new requests, finishing the running ones");
                draining.draining.store(true, Ordering::SeqCst);
            })
            .await?;
        // Every handler is done; closing the channel lets the engine's thread end.
        state.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        tokio::task::spawn_blocking(move || worker.join()).await.ok();
        Ok(())
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

type Shared = State<Arc<AppState>>;

/// 401 unless the request carries the key (when one is set).
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.opts.api_key else { return Ok(()) };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::status(StatusCode::UNAUTHORIZED, "a valid API key is required (Authorization: Bearer KEY)")
            .code("invalid_api_key"))
    }
}

fn body_of(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over the limit of {limit} bytes"),
            )
        } else {
            ApiError::status(e.status(), e.body_text())
        }
    })
}

async fn not_found() -> ApiError {
    ApiError::status(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::status(StatusCode::METHOD_NOT_ALLOWED, "this endpoint does not take that method")
}

async fn health(State(s): Shared) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "shutting down"}))).into_response();
    }
    if !s.engine_up.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "the engine has stopped"})))
            .into_response();
    }
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn models(State(s): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.opts.model_name,
            "object": "model",
            "created": unix_now(),
            "owned_by": "flint",
            "context_length": s.model.decoder().cfg.context,
            "vision": s.model.takes_images(),
        }],
    }))
    .into_response()
}

async fn metrics(State(s): Shared, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let g = s.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let http = s.http.lock().unwrap_or_else(|p| p.into_inner()).render();
    let text = metrics::render(&g, s.in_system.load(Ordering::SeqCst), &http);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Holds a place among the requests in the system; frees it, and cancels the engine's request
/// if it is still running, when dropped (a finished handler, or a client gone).
struct Ticket {
    state: Arc<AppState>,
    key: u64,
    live: bool,
}

impl Ticket {
    fn take(state: &Arc<AppState>) -> Result<Ticket, ApiError> {
        if state.draining.load(Ordering::SeqCst) {
            return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
        }
        let before = state.in_system.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket { state: state.clone(), key: state.next_key.fetch_add(1, Ordering::SeqCst), live: false };
        if before >= state.opts.max_concurrent {
            return Err(ApiError::status(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{before} requests are queued or running, the server's limit is {}", state.opts.max_concurrent),
            )
            .code("rate_limit_exceeded"));
        }
        Ok(ticket)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.in_system.fetch_sub(1, Ordering::SeqCst);
        if self.live {
            let _ = self.state.send(Command::Cancel { key: self.key });
        }
    }
}

/// What kind of answer is wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// A request made ready for the engine.
struct Job {
    kind: Kind,
    prompt: Vec<u32>,
    media: Option<Media>,
    mode: Mode,
    /// Branches decoded: contemplate's, or the choices asked for.
    branches: usize,
    sampling: SamplingOptions,
    stops: Vec<String>,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
    /// How its replies split into reasoning and answer (a fresh splitter, to clone per reply).
    splitter: reasoning::ReplySplitter,
}

impl Job {
    /// A splitter of this job's replies into reasoning and answer.
    fn splitter(&self) -> reasoning::ReplySplitter {
        self.splitter.clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The mode, branches, sampling and stop strings of the shared fields.
fn settle(s: &AppState, c: &Common) -> Result<(Mode, usize, SamplingOptions, Vec<String>), ApiError> {
    if let Some(m) = &c.model
        && !m.is_empty()
        && *m != s.opts.model_name
    {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model {m:?} is not served here; this server serves {:?}", s.opts.model_name),
            param: Some("model"),
            code: Some("model_not_found"),
        });
    }
    let mode_name = match (&c.mode, &c.reasoning_effort) {
        (Some(m), _) => m.as_str(),
        (None, Some(e)) => match e.as_str() {
            "minimal" | "low" | "none" => "instant",
            "medium" => "think",
            "high" => "contemplate",
            other => {
                return Err(ApiError::bad(
                    "reasoning_effort",
                    format!("{other:?}: use low (instant), medium (think) or high (contemplate)"),
                ));
            }
        },
        (None, None) => "instant",
    };
    let n = c.n.unwrap_or(1);
    let max_batch = s.opts.engine.max_batch;
    let mode = Mode::parse(mode_name, c.branches.unwrap_or(4)).map_err(|e| ApiError::bad("mode", e.to_string()))?;
    match mode {
        Mode::Contemplate { .. } if n != 1 => {
            return Err(ApiError::bad("n", "contemplate answers with one voted choice; ask for its branches instead"));
        }
        Mode::Contemplate { branches } if branches > max_batch => {
            return Err(ApiError::bad(
                "branches",
                format!("{branches} branches: the server decodes at most {max_batch}"),
            ));
        }
        _ if n == 0 || n > max_batch => {
            return Err(ApiError::bad("n", format!("n is {n}: it must be 1 to {max_batch}, the server's batch")));
        }
        _ => {}
    }
    let branches = if let Mode::Contemplate { branches } = mode { branches } else { n };
    for (name, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::bad(name, "flint's sampler has no penalties; leave it at 0"));
        }
    }
    let max_tokens =
        c.max_completion_tokens.or(c.max_tokens).unwrap_or(mode.default_max_tokens().min(s.opts.max_tokens));
    if max_tokens == 0 || max_tokens > s.opts.max_tokens {
        return Err(ApiError::bad(
            "max_tokens",
            format!("max_tokens is {max_tokens}: it must be 1 to the server's limit of {}", s.opts.max_tokens),
        ));
    }
    let seed = match c.seed {
        None => 0,
        Some(x) => u32::try_from(x).map_err(|_| ApiError::bad("seed", format!("{x} is not a seed of 0 to 2^32-1")))?,
    };
    let temperature = c.temperature.unwrap_or(mode.default_temperature());
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad("temperature", format!("{temperature} is outside 0 to 2")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad("top_p", format!("{top_p} is outside (0, 1]")));
    }
    let stops = c.stop.as_ref().map(api::Stop::strings).unwrap_or_default();
    if stops.len() > 16 || stops.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::bad("stop", "at most 16 stop strings of 1 to 256 bytes"));
    }
    let sampling = SamplingOptions {
        temperature,
        top_k: c.top_k.unwrap_or(0),
        top_p,
        seed,
        max_tokens,
        stop: s.model.tokenizer().stop_tokens.clone(),
    };
    Ok((mode, branches, sampling, stops))
}

/// An image of a content part: a data URL, or with `--allow-local-files` a path or file URL.
fn image_of(s: &AppState, url: &str) -> Result<Rgb, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((_, data)) = rest.split_once(";base64,") else {
            return Err(ApiError::bad("messages", "an image data URL must be base64 (data:image/png;base64,...)"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| ApiError::bad("messages", format!("the image data URL is not valid base64: {e}")))?;
        return flint_runtime::image::decode(std::path::Path::new("image data URL"), &bytes)
            .map_err(|e| ApiError::bad("messages", e.to_string()));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(ApiError::bad("messages", "flint does not fetch image URLs; send the image as a data URL"));
    }
    if !s.opts.allow_local_files {
        return Err(ApiError::bad(
            "messages",
            "images must be data URLs (local files are refused unless the server runs with --allow-local-files)",
        ));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    flint_runtime::image::load(std::path::Path::new(path)).map_err(|e| ApiError::bad("messages", e.to_string()))
}

fn chat_job(s: &AppState, r: ChatRequest) -> Result<Job, ApiError> {
    let (mode, branches, sampling, stops) = settle(s, &r.common)?;
    if r.top_logprobs.unwrap_or(0) > 0 {
        return Err(ApiError::bad("top_logprobs", "flint returns the chosen tokens' log-probabilities only"));
    }
    if r.messages.is_empty() {
        return Err(ApiError::bad("messages", "there are no messages"));
    }
    let mut msgs = Vec::new();
    let mut images = Vec::new();
    let mut clips = Vec::new();
    for m in &r.messages {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant") => r,
            other => {
                return Err(ApiError::bad(
                    "messages",
                    format!("role {other:?}: flint takes system, user and assistant"),
                ));
            }
        };
        let mut text = String::new();
        let (mut count, mut heard) = (0, 0);
        match &m.content {
            None => {}
            Some(Content::Text(t)) => text.push_str(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    match p {
                        Part::Text { text: t } => text.push_str(t),
                        Part::ImageUrl { image_url } => {
                            if !s.model.takes_images() {
                                return Err(ApiError::bad(
                                    "messages",
                                    format!("{} is a text-only model; it cannot take images", s.opts.model_name),
                                ));
                            }
                            if images.len() >= flint_runtime::request::MAX_IMAGES {
                                return Err(ApiError::bad(
                                    "messages",
                                    format!("more than {} images", flint_runtime::request::MAX_IMAGES),
                                ));
                            }
                            images.push(image_of(s, &image_url.url)?);
                            count += 1;
                        }
                        Part::InputAudio { input_audio } => {
                            if s.model.audio().is_none() {
                                return Err(ApiError::bad(
                                    "messages",
                                    format!("{} has no audio tower; it cannot take audio", s.opts.model_name),
                                ));
                            }
                            if clips.len() >= flint_runtime::request::MAX_AUDIO {
                                return Err(ApiError::bad(
                                    "messages",
                                    format!("more than {} audio clips", flint_runtime::request::MAX_AUDIO),
                                ));
                            }
                            clips.push(audio_of(input_audio)?);
                            heard += 1;
                        }
                    }
                }
            }
        }
        msgs.push(ChatMessage { role: role.into(), text, images: count, audio: heard });
    }
    let model = &s.model;
    let template = model.tokenizer().chat_template.as_deref().ok_or_else(|| {
        ApiError::bad("messages", format!("{} has no chat template; use /v1/completions", s.opts.model_name))
    })?;
    let mut thinking = None;
    if mode.reasons() {
        if reasoning::template_reasons(template) {
            thinking = Some(true);
        } else if msgs.first().is_some_and(|m| m.role == "system") {
            msgs[0].text = format!("{}\n\n{}", msgs[0].text, reasoning::REASONING_SYSTEM);
        } else {
            msgs.insert(
                0,
                ChatMessage { role: "system".into(), text: reasoning::REASONING_SYSTEM.into(), images: 0, audio: 0 },
            );
        }
    }
    let (prompt, media) =
        model.chat_prompt(&msgs, &images, &clips, thinking).map_err(|e| ApiError::bad("messages", e.to_string()))?;
    let include_usage = include_usage(&r.common);
    let wants = Wants { logprobs: r.logprobs, stream: r.common.stream, include_usage };
    finish_job(s, Kind::Chat, prompt, media, (mode, branches), sampling, stops, wants)
}

/// The clip of an `input_audio` part: base64 WAV bytes.
fn audio_of(a: &api::InputAudio) -> Result<flint_runtime::audio::Audio, ApiError> {
    if a.format != "wav" {
        return Err(ApiError::bad("messages", format!("input_audio format {:?}: flint reads wav", a.format)));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(a.data.trim())
        .map_err(|e| ApiError::bad("messages", format!("input_audio data is not valid base64: {e}")))?;
    flint_runtime::audio::decode_wav(std::path::Path::new("input_audio"), &bytes)
        .map_err(|e| ApiError::bad("messages", e.to_string()))
}

fn include_usage(c: &Common) -> bool {
    c.stream_options.as_ref().and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
}

fn completion_job(s: &AppState, r: CompletionRequest) -> Result<Job, ApiError> {
    let (mode, branches, sampling, stops) = settle(s, &r.common)?;
    if r.echo {
        return Err(ApiError::bad("echo", "flint does not echo the prompt"));
    }
    if mode.reasons() {
        return Err(ApiError::bad("mode", "the reasoning modes need the chat template: use /v1/chat/completions"));
    }
    let text = |t: &str| s.model.tokenizer().encode(t, true).map_err(|e| ApiError::bad("prompt", e.to_string()));
    let prompt = match &r.prompt {
        Value::String(t) => text(t)?,
        Value::Array(a) if a.len() == 1 && a[0].is_string() => text(a[0].as_str().unwrap_or(""))?,
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => a
            .iter()
            .map(|v| {
                u32::try_from(v.as_u64().unwrap_or(u64::MAX))
                    .map_err(|_| ApiError::bad("prompt", "a token id over 2^32"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad(
                "prompt",
                "a string, one string in an array, or token ids (one prompt per request)",
            ));
        }
    };
    let include_usage = include_usage(&r.common);
    let wants = Wants { logprobs: r.logprobs.is_some(), stream: r.common.stream, include_usage };
    finish_job(s, Kind::Text, prompt, None, (mode, branches), sampling, stops, wants)
}

/// What form of answer a request wants.
struct Wants {
    logprobs: bool,
    stream: bool,
    include_usage: bool,
}

#[allow(clippy::too_many_arguments)]
fn finish_job(
    s: &AppState,
    kind: Kind,
    prompt: Vec<u32>,
    media: Option<Media>,
    (mode, branches): (Mode, usize),
    sampling: SamplingOptions,
    stops: Vec<String>,
    wants: Wants,
) -> Result<Job, ApiError> {
    let context = s.model.decoder().cfg.context;
    let limit = s.opts.max_prompt_tokens.min(context - 1);
    if prompt.is_empty() {
        return Err(ApiError::bad(if kind == Kind::Chat { "messages" } else { "prompt" }, "the prompt has no tokens"));
    }
    if prompt.len() > limit {
        return Err(ApiError::bad(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            format!("the prompt has {} tokens; this server takes at most {limit}", prompt.len()),
        )
        .code("context_length_exceeded"));
    }
    let Wants { logprobs, stream, include_usage } = wants;
    let splitter = if mode.reasons() {
        reasoning::ReplySplitter::for_prompt(&s.model, &prompt)
    } else {
        reasoning::ReplySplitter::new()
    };
    Ok(Job { kind, prompt, media, mode, branches, sampling, stops, logprobs, stream, include_usage, splitter })
}

async fn chat(State(s): Shared, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, headers, body, Kind::Chat).await
}

async fn completions(State(s): Shared, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    handle(s, headers, body, Kind::Text).await
}

async fn handle(s: Arc<AppState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>, kind: Kind) -> Response {
    let start = Instant::now();
    let endpoint = if kind == Kind::Chat { "chat" } else { "completions" };
    let r = respond(s.clone(), headers, body, kind, start).await;
    let response = r.unwrap_or_else(IntoResponse::into_response);
    let streamed = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "text/event-stream");
    // A stream records its own duration when it ends.
    if !streamed {
        s.http.lock().unwrap_or_else(|p| p.into_inner()).request(endpoint, response.status().as_u16(), start.elapsed());
    } else {
        s.http.lock().unwrap_or_else(|p| p.into_inner()).status(endpoint, response.status().as_u16());
    }
    response
}

async fn respond(
    s: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
    start: Instant,
) -> Result<Response, ApiError> {
    authorize(&s, &headers)?;
    let mut ticket = Ticket::take(&s)?;
    let body = body_of(body, s.opts.max_body_bytes)?;
    // Templates, tokenizing and image decoding are CPU work: off the async threads.
    let job = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || match kind {
            Kind::Chat => chat_job(&s, api::parse(&body)?),
            Kind::Text => completion_job(&s, api::parse(&body)?),
        })
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, format!("preparing the request: {e}")))??
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let request = Request::new(job.prompt.clone(), job.sampling.clone())
        .branches(job.branches)
        .with_media(job.media.clone().map(Arc::new));
    s.send(Command::Submit { key: ticket.key, request, out: tx })?;
    ticket.live = true;
    // The engine's verdict first, so that a refused request gets its status, streamed or not.
    match rx.recv().await {
        Some(Out::Accepted) => {}
        out => return Err(ending(out, &mut ticket).unwrap_or_else(|| engine_failure("the engine stopped".into()))),
    }
    let run = Run::new(&s, job, ticket.key, start);
    if run.job.stream { Ok(stream(s, run, rx, ticket)) } else { collect(s, run, rx, ticket).await }
}

/// One choice (a branch) as it is decoded.
#[derive(Default)]
struct Choice {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    /// Its text so far (whole characters), cut at a stop string once one is seen.
    text: String,
    /// Incremental decoding: `text` holds the decoded `tokens[..read_offset]`, and
    /// `tokens[prefix_offset..read_offset]` are decoded again with new tokens as their context.
    prefix_offset: usize,
    read_offset: usize,
    /// Bytes of `text` already streamed.
    emitted: usize,
    finish: Option<&'static str>,
}

/// A request's decoding, shared by the streamed and collected answers.
struct Run {
    state: Arc<AppState>,
    job: Job,
    /// The handler's key (the engine's commands name the request by it).
    key: u64,
    id: String,
    created: u64,
    choices: Vec<Choice>,
    start: Instant,
    first_token: Option<Instant>,
}

impl Run {
    fn new(s: &Arc<AppState>, job: Job, key: u64, start: Instant) -> Run {
        let prefix = if job.kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let n = job.branches;
        Run {
            state: s.clone(),
            key,
            id: format!("{prefix}-{key}"),
            created: unix_now(),
            choices: (0..n).map(|_| Choice::default()).collect(),
            job,
            start,
            first_token: None,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.state.model.tokenizer().decode(ids, true).unwrap_or_default()
    }

    /// Take a token of branch `b`, its text decoded incrementally (only the tokens since the
    /// last complete character, with the token before them as context); the choice stops at
    /// the first stop string its text holds. Returns whether this token stopped it so.
    fn token(&mut self, b: usize, token: u32, logprob: f32) -> bool {
        self.first_token.get_or_insert_with(Instant::now);
        let tok = self.state.model.tokenizer();
        let longest = self.job.stops.iter().map(String::len).max().unwrap_or(0);
        let Some(c) = self.choices.get_mut(b) else { return false };
        if c.finish.is_some() {
            return false;
        }
        c.tokens.push(token);
        c.logprobs.push(logprob);
        let prefix = tok.decode(&c.tokens[c.prefix_offset..c.read_offset], true).unwrap_or_default();
        let full = tok.decode(&c.tokens[c.prefix_offset..], true).unwrap_or_default();
        if full.len() <= prefix.len() || full.ends_with('\u{fffd}') || !full.is_char_boundary(prefix.len()) {
            // Nothing new yet, or a character split over tokens: wait for the rest.
            return false;
        }
        let mut from = c.text.len().saturating_sub(longest);
        while !c.text.is_char_boundary(from) {
            from -= 1;
        }
        c.text.push_str(&full[prefix.len()..]);
        c.prefix_offset = c.read_offset;
        c.read_offset = c.tokens.len();
        match self.job.stops.iter().filter_map(|s| c.text[from..].find(s.as_str())).min() {
            Some(at) => {
                c.text.truncate(from + at);
                c.finish = Some("stop");
                true
            }
            None => false,
        }
    }

    /// Every branch's end, from the engine's output (the branches stopped on a stop string
    /// keep what they had).
    fn done(&mut self, out: &RequestOutput) {
        for (b, o) in out.branches.iter().enumerate() {
            if self.choices.get(b).is_none_or(|c| c.finish.is_some()) {
                continue;
            }
            let text = self.decode(&o.tokens);
            let cut = self.job.stops.iter().filter_map(|s| text.find(s.as_str())).min();
            let c = &mut self.choices[b];
            c.tokens.clone_from(&o.tokens);
            c.logprobs.clone_from(&o.logprobs);
            c.finish = Some(match (cut, o.stop) {
                (Some(_), _) | (None, StopReason::Stop | StopReason::Cancelled) => "stop",
                (None, StopReason::Length | StopReason::Context) => "length",
            });
            c.text = match cut {
                Some(at) => text[..at].to_string(),
                None => text,
            };
        }
    }

    fn all_stopped(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Text of choice `b` that can be streamed now: all of it but a tail that may be the start
    /// of a stop string.
    fn ready(&self, b: usize) -> &str {
        let c = &self.choices[b];
        let text = c.text.as_str();
        let mut end = text.len();
        if c.finish.is_none() {
            for s in &self.job.stops {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                        end = end.min(text.len() - k);
                        break;
                    }
                }
            }
        }
        &text[c.emitted.min(end)..end]
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens.len()).sum();
        let prompt = self.job.prompt.len();
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn timings(&self) -> Value {
        let ttft = self.first_token.map(|t| t.duration_since(self.start).as_secs_f64() * 1e3);
        let tokens: usize = self.choices.iter().map(|c| c.tokens.len()).sum();
        let elapsed = self.start.elapsed().as_secs_f64() * 1e3;
        let itl = match (ttft, tokens) {
            (Some(f), t) if t > self.choices.len() => Some((elapsed - f) / (t - self.choices.len()) as f64),
            _ => None,
        };
        json!({"time_to_first_token_ms": ttft, "inter_token_latency_ms": itl, "total_ms": elapsed})
    }

    fn token_texts(&self, ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&t| self.decode(&[t])).collect()
    }

    fn choice_logprobs(&self, c: &Choice) -> Value {
        if !self.job.logprobs {
            return Value::Null;
        }
        let texts = self.token_texts(&c.tokens);
        match self.job.kind {
            Kind::Chat => json!({"content": texts.iter().zip(&c.logprobs).map(|(t, l)| json!({
                "token": t, "logprob": l, "bytes": t.as_bytes(), "top_logprobs": [],
            })).collect::<Vec<_>>()}),
            Kind::Text => {
                let mut offset = 0;
                let offsets: Vec<usize> = texts
                    .iter()
                    .map(|t| {
                        let o = offset;
                        offset += t.len();
                        o
                    })
                    .collect();
                json!({"tokens": texts, "token_logprobs": c.logprobs, "top_logprobs": null, "text_offset": offsets})
            }
        }
    }

    /// The whole answer (not streamed).
    fn answer(&self) -> Value {
        let mut choices = Vec::new();
        let mut extra = Value::Null;
        if let Mode::Contemplate { .. } = self.job.mode {
            let scored: Vec<(String, f32)> = self
                .choices
                .iter()
                .map(|c| {
                    let mean = if c.logprobs.is_empty() {
                        0.0
                    } else {
                        c.logprobs.iter().sum::<f32>() / c.logprobs.len() as f32
                    };
                    (c.text.clone(), mean)
                })
                .collect();
            let vote = reasoning::vote(&scored);
            let chosen = &self.choices[vote.chosen];
            choices.push(self.choice_json(0, chosen));
            extra = json!({
                "mode": "contemplate",
                "answer": vote.answer,
                "chosen": vote.chosen,
                "tally": vote.tally,
                "branches": self.choices.iter().zip(&scored).map(|(c, (t, mean))| json!({
                    "text": t, "answer": reasoning::final_answer(t), "mean_logprob": mean, "finish_reason": c.finish,
                })).collect::<Vec<_>>(),
            });
        } else {
            for (i, c) in self.choices.iter().enumerate() {
                choices.push(self.choice_json(i, c));
            }
        }
        let mut v = json!({
            "id": self.id,
            "object": if self.job.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.state.opts.model_name,
            "choices": choices,
            "usage": self.usage(),
            "timings": self.timings(),
        });
        if !extra.is_null() {
            v["flint"] = extra;
        }
        v
    }

    fn choice_json(&self, index: usize, c: &Choice) -> Value {
        let finish = c.finish.unwrap_or("stop");
        match self.job.kind {
            Kind::Chat => {
                let mut message = json!({"role": "assistant", "content": c.text});
                if self.job.mode.reasons() {
                    // As a stream of it splits (see `stream`).
                    let r = self.job.splitter().whole(&c.text);
                    message["content"] = json!(r.answer);
                    if !r.reasoning.is_empty() {
                        message["reasoning_content"] = json!(r.reasoning);
                    }
                }
                json!({"index": index, "message": message, "logprobs": self.choice_logprobs(c), "finish_reason": finish,
                    "token_ids": c.tokens})
            }
            Kind::Text => json!({"index": index, "text": c.text, "logprobs": self.choice_logprobs(c),
                "finish_reason": finish, "token_ids": c.tokens}),
        }
    }

    /// A streamed chunk for choice `index` with new `reasoning` (chat only; as
    /// `delta.reasoning_content`) and new `text`, and maybe its finish.
    fn chunk_parts(&self, index: usize, reasoning: &str, text: &str, finish: Option<&str>, first: bool) -> Value {
        let choice = match self.job.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if !reasoning.is_empty() {
                    delta["reasoning_content"] = json!(reasoning);
                }
                if !text.is_empty() || (first && reasoning.is_empty()) {
                    delta["content"] = json!(text);
                }
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish}),
        };
        json!({
            "id": self.id,
            "object": if self.job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.state.opts.model_name,
            "choices": [choice],
        })
    }
}

/// The error an engine message ends a request with: a refusal, a failure, or the engine gone
/// (`None` for the messages a request carries on after). The ticket then has nothing to cancel.
fn ending(out: Option<Out>, ticket: &mut Ticket) -> Option<ApiError> {
    let e = match out {
        Some(Out::Refused(e)) => refusal(e),
        Some(Out::Failed(m)) => engine_failure(m),
        None => engine_failure("the engine stopped".into()),
        Some(Out::Accepted | Out::Token { .. } | Out::Done(_)) => return None,
    };
    ticket.live = false;
    Some(e)
}

/// A request the engine refused: a 400, its field and code from the kind of refusal.
fn refusal(e: flint_runtime::RuntimeError) -> ApiError {
    use flint_runtime::{RequestError as R, RuntimeError};
    let message = e.to_string();
    let (param, code) = match &e {
        RuntimeError::Refused(r) => match r {
            R::TooLong { .. } => (Some("messages"), Some("context_length_exceeded")),
            R::OverKvBudget { .. } => (Some("max_tokens"), Some("kv_budget_exceeded")),
            R::Branches { .. } => (Some("n"), None),
            R::NoTokens => (Some("max_tokens"), None),
            R::TokenOutsideVocabulary { .. } | R::EmptyPrompt => (Some("prompt"), None),
            R::Images(_) => (Some("messages"), None),
            _ => (None, None),
        },
        _ => (None, None),
    };
    ApiError { status: StatusCode::BAD_REQUEST, message, param, code }
}

/// A request that failed in the engine after admission (or an engine gone): a 500.
fn engine_failure(message: String) -> ApiError {
    ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, message)
}

async fn collect(
    s: Arc<AppState>,
    mut run: Run,
    mut rx: mpsc::UnboundedReceiver<Out>,
    mut ticket: Ticket,
) -> Result<Response, ApiError> {
    loop {
        match rx.recv().await {
            Some(Out::Token { branch, token, logprob }) => {
                if run.token(branch, token, logprob) {
                    let _ = s.send(Command::StopBranch { key: run.key, branch });
                }
                if run.all_stopped() {
                    break;
                }
            }
            Some(Out::Accepted) => {}
            Some(Out::Done(out)) => {
                ticket.live = false;
                run.done(&out);
                break;
            }
            out => {
                return Err(ending(out, &mut ticket).unwrap_or_else(|| engine_failure("the engine stopped".into())));
            }
        }
    }
    // Stopped on stop strings before the engine finished: the ticket cancels the rest.
    drop(ticket);
    s.http.lock().unwrap_or_else(|p| p.into_inner()).tokens(&run);
    Ok(axum::Json(run.answer()).into_response())
}

fn stream(s: Arc<AppState>, mut run: Run, mut rx: mpsc::UnboundedReceiver<Out>, mut ticket: Ticket) -> Response {
    let (tx, events) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| SseEvent::default().data(v.to_string());
        let mut started = vec![false; run.choices.len()];
        let mut ended = vec![false; run.choices.len()];
        // Thinking chat streams its reasoning as `reasoning_content`, split as the whole is.
        let split = run.job.kind == Kind::Chat && run.job.mode.reasons();
        let mut splitters = vec![run.job.splitter(); run.choices.len()];
        let mut failure = None;
        loop {
            let out = tokio::select! {
                o = rx.recv() => o,
                () = tx.closed() => return, // the client is gone; the ticket cancels
            };
            let mut touched = Vec::new();
            match out {
                Some(Out::Token { branch, token, logprob }) => {
                    if run.token(branch, token, logprob) {
                        let _ = s.send(Command::StopBranch { key: run.key, branch });
                    }
                    touched.push(branch);
                }
                Some(Out::Accepted) => {}
                Some(Out::Done(out)) => {
                    ticket.live = false;
                    run.done(&out);
                    touched.extend(0..run.choices.len());
                }
                out => failure = ending(out, &mut ticket),
            }
            if let Some(e) = failure.take() {
                let _ = tx.send(Ok(send(e.body()))).await;
                break;
            }
            // Contemplate answers with its vote: one choice, sent whole when every branch is done.
            let voting = matches!(run.job.mode, Mode::Contemplate { .. });
            if voting {
                touched.clear();
                if run.all_stopped() {
                    let answer = run.answer();
                    let choice = &answer["choices"][0];
                    let text = choice["message"]["content"].as_str().unwrap_or("").to_string();
                    let thought = choice["message"]["reasoning_content"].as_str().unwrap_or("").to_string();
                    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
                    let mut chunk = run.chunk_parts(0, &thought, &text, Some(finish), true);
                    chunk["flint"] = answer["flint"].clone();
                    if tx.send(Ok(send(chunk))).await.is_err() {
                        return;
                    }
                    ended.iter_mut().for_each(|e| *e = true);
                }
            }
            for b in touched {
                if b >= run.choices.len() || ended[b] {
                    continue;
                }
                let text = run.ready(b).to_string();
                let finish = run.choices[b].finish;
                let (thought, said) = if split {
                    let mut d = splitters[b].push(&text);
                    if finish.is_some() {
                        let end = splitters[b].finish();
                        d.reasoning += &end.reasoning;
                        d.answer += &end.answer;
                    }
                    (d.reasoning, d.answer)
                } else {
                    (String::new(), text.clone())
                };
                run.choices[b].emitted += text.len();
                if thought.is_empty() && said.is_empty() && finish.is_none() && started[b] {
                    continue;
                }
                let chunk = run.chunk_parts(b, &thought, &said, finish, !started[b]);
                started[b] = true;
                if finish.is_some() {
                    ended[b] = true;
                }
                if tx.send(Ok(send(chunk))).await.is_err() {
                    return;
                }
            }
            if ended.iter().all(|&e| e) {
                if run.job.include_usage {
                    let object = if run.job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                    let last = json!({"id": run.id, "object": object, "created": run.created,
                        "model": s.opts.model_name, "choices": [], "usage": run.usage(), "timings": run.timings()});
                    let _ = tx.send(Ok(send(last))).await;
                }
                break;
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
        drop(ticket);
        let endpoint = if run.job.kind == Kind::Chat { "chat" } else { "completions" };
        let mut http = s.http.lock().unwrap_or_else(|p| p.into_inner());
        http.tokens(&run);
        http.duration(endpoint, run.start.elapsed());
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(events)).into_response()
}
