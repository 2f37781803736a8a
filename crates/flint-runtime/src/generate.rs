//! Text generation on one sequence: prefill the prompt, then decode steps replayed from a plan
//! with sampling on the GPU and the sampled id left on the GPU for the next step
//! ([`crate::stepper`]); only the chosen ids (and their log-probabilities) are read back, a step
//! or two behind, and the steps run past a stop are discarded.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use crate::kvpool::{KvPool, SeqId};
use flint_gpu::{DType, Recorder, Tensor};
use flint_kernels::sample::RowOptions;
use flint_ref::sample::SampleParams;

use crate::stepper::{StepMode, StepRow, StepStats, Stepper};

use crate::model::decoder::Decoder;
use crate::multimodal::{Encoders, Media, Vision};
use crate::{RequestError, Result};

/// How to choose tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// 0 for greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: no limit).
    pub top_k: usize,
    /// Nucleus cut (1: none).
    pub top_p: f32,
    /// Seed of the draws.
    pub seed: u32,
    /// Most new tokens.
    pub max_tokens: usize,
    /// Tokens that end generation (not included in the output).
    pub stop: Vec<u32>,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, max_tokens: 128, stop: Vec::new() }
    }
}

impl SamplingOptions {
    /// The sampler's Params for `rows` rows of `vocab`.
    pub(crate) fn params(&self, rows: usize, vocab: usize) -> SampleParams {
        SampleParams { rows, vocab, temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }
}

/// Prompt tokens a session prefills at once: longer text prompts run in chunks of at most this
/// many, of equal size (so no chunk is a few rows that would take the matvec path).
pub const PREFILL_CHUNK: usize = 512;

/// Run all of a prompt but its last `last` tokens (see [`prefill_split`]) through `model` into
/// `seq` in chunks of `size`, each submitted and finished before the next is recorded, so the
/// activations held at once are a chunk's; return the rest, which the caller runs with its
/// logits (and its media).
pub(crate) async fn prefill_head<'a>(
    model: &Decoder,
    pool: &mut KvPool,
    seq: SeqId,
    ids: &'a [u32],
    (size, last): (usize, usize),
) -> Result<&'a [u32]> {
    let (head, rest) = ids.split_at(ids.len() - last.min(ids.len()));
    for c in head.chunks(size.max(1)) {
        check_ids(model, c)?;
        prefill_into(model, pool, seq, c).await?;
    }
    Ok(rest)
}

/// How a prompt of `len` tokens is prefilled with chunks of at most `chunk` tokens: `(size,
/// last)`, chunks of `size` tokens, then the last `last` tokens with the logits. A text prompt
/// is cut into equal chunks, so none is a few rows that would take the matvec path. A prompt
/// with media (its first media token at `first_media`) that is longer than a chunk has its text
/// before that token in chunks and the rest, media and all, in one piece; a shorter one runs
/// whole.
pub(crate) fn prefill_split(len: usize, chunk: usize, first_media: Option<usize>) -> (usize, usize) {
    match first_media {
        None => {
            let size = chunk_size(len, chunk);
            (size, len - size * (len.div_ceil(size) - 1))
        }
        Some(f) if len > chunk && f > 0 => (chunk_size(f, chunk), len - f),
        Some(_) => (len.max(1), len),
    }
}

/// Tokens per chunk when a prompt of `len` tokens is prefilled in chunks of at most `chunk`:
/// equal chunks, the last possibly shorter.
pub(crate) fn chunk_size(len: usize, chunk: usize) -> usize {
    let chunks = len.div_ceil(chunk.max(1)).max(1);
    len.div_ceil(chunks).max(1)
}

/// Run the text tokens `ids` through `model` into `seq`'s cache, submitted and finished before
/// returning (no logits).
pub(crate) async fn prefill_into(model: &Decoder, pool: &mut KvPool, seq: SeqId, ids: &[u32]) -> Result<()> {
    let mut rec = Recorder::new(model.device());
    crate::multimodal::forward_prompt(model, &Encoders::default(), &mut rec, pool, seq, ids, None)?;
    rec.submit()?.finished().await?;
    Ok(())
}

/// An error unless every id of `ids` is in `model`'s vocabulary.
fn check_ids(model: &Decoder, ids: &[u32]) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= model.cfg.vocab) {
        Some(&id) => Err(RequestError::TokenOutsideVocabulary { id, vocab: model.cfg.vocab }.into()),
        None => Ok(()),
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token came.
    Stop,
    /// The token budget ran out.
    Length,
    /// The context is full.
    Context,
    /// The caller's token callback asked to stop ([`Session::generate_async`]).
    Cancelled,
}

/// What a generation produced and how long it took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// New token ids (without the stop token).
    pub tokens: Vec<u32>,
    /// Log-probability of each new token under the model (temperature 1, no filtering).
    pub logprobs: Vec<f32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Wall time of the prefill (prompt through the model and the first token sampled).
    pub prefill: Duration,
    /// Wall time of the decode steps after the first token.
    pub decode: Duration,
}

impl Generation {
    /// Prompt tokens per second of the prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Tokens per second of the decode steps.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }

    /// The timings as `flint generate --json` reports them (and the browser's API): prompt
    /// tokens, prefill and decode milliseconds and tokens per second, tokens generated.
    pub fn timings_json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens,
            "prefill_ms": self.prefill.as_secs_f64() * 1e3,
            "prefill_tokens_per_s": self.prefill_tokens_per_s(),
            "generated_tokens": self.tokens.len(),
            "decode_ms": self.decode.as_secs_f64() * 1e3,
            "decode_tokens_per_s": self.decode_tokens_per_s(),
        })
    }
}

/// One sequence of a decoder with its KV cache. It holds its decoder (and media encoders) by
/// `Arc`, so it is `'static` and `Send`: it can move to another thread or live in shared state.
pub struct Session {
    model: Arc<Decoder>,
    encoders: Encoders,
    pool: KvPool,
    seq: SeqId,
    step: u32,
    capacity: usize,
    mode: StepMode,
    stepper: Option<Stepper>,
    prefill_chunk: usize,
}

impl Session {
    /// A session with room for `capacity` tokens (prompt and generation).
    pub fn new(model: Arc<Decoder>, capacity: usize) -> Result<Session> {
        let capacity = capacity.min(model.cfg.context);
        let mut pool = model.kv_pool(capacity, 64)?;
        let seq = pool.create();
        // The batch-1 decode plan is made here, not on the first step; a session that cannot
        // make it (too small to hold a step) makes it when it steps, or records the step.
        let mut stepper = Stepper::new(model.device(), 1, 1, capacity.div_ceil(pool.page_size()), StepMode::Planned)?;
        if let Err(e) = stepper.warm(&model, &mut pool, 1) {
            tracing::debug!(error = %e, "no batch-1 decode plan at load");
        }
        let stepper = Some(stepper);
        Ok(Session {
            model,
            encoders: Encoders::default(),
            pool,
            seq,
            step: 0,
            capacity,
            mode: StepMode::Planned,
            stepper,
            prefill_chunk: PREFILL_CHUNK,
        })
    }

    /// The same session running its decode steps in `mode` (planned by default; immediate is
    /// the reference the planned loop is tested against).
    pub fn with_mode(mut self, mode: StepMode) -> Self {
        if mode != self.mode {
            self.mode = mode;
            self.stepper = None;
        }
        self
    }

    /// The same session running every decode step from a recording of its own, as a layout no
    /// plan can hold runs (tests of that path).
    #[doc(hidden)]
    pub fn without_plans(mut self) -> Result<Self> {
        self.stepper = None;
        self.stepper()?.no_plans = true;
        Ok(self)
    }

    /// The same session writing the logits of greedy decode steps and sampling from them, as
    /// steps that sample at a temperature do, where the head would write argmax tiles (tests
    /// of the tiles).
    #[doc(hidden)]
    pub fn with_full_logits(mut self) -> Result<Self> {
        self.stepper = None;
        self.stepper()?.full_logits = true;
        Ok(self)
    }

    /// The same session prefilling text prompts in chunks of at most `tokens` (at least 1;
    /// [`PREFILL_CHUNK`] by default): smaller chunks hold fewer activations at once.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// Host time and dispatches of the decode steps so far.
    pub fn step_stats(&self) -> StepStats {
        self.stepper.as_ref().map(|s| s.stats.clone()).unwrap_or_default()
    }

    fn stepper(&mut self) -> Result<&mut Stepper> {
        if self.stepper.is_none() {
            let width = self.capacity.div_ceil(self.pool.page_size());
            self.stepper = Some(Stepper::new(self.model.device(), 1, 1, width, self.mode)?);
        }
        Ok(self.stepper.as_mut().expect("made above"))
    }

    /// The row of this session's next draw under `opts`.
    fn row(&self, opts: &SamplingOptions, step: u32) -> StepRow {
        StepRow {
            seq: self.seq,
            opts: RowOptions { params: opts.params(1, self.model.cfg.vocab), seed: opts.seed, step, slot: 0 },
        }
    }

    /// Most tokens the session holds (prompt and generation).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.pool.len(self.seq).unwrap_or(0)
    }

    /// An error unless `tokens` more fit in the session's context.
    fn room_for(&self, tokens: usize) -> Result<()> {
        if self.len() + tokens > self.capacity {
            return Err(RequestError::TooLong { tokens, context: self.capacity, used: self.len() }.into());
        }
        Ok(())
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same session able to take images (through `vision`).
    pub fn with_vision(mut self, vision: Option<Arc<Vision>>) -> Self {
        self.encoders.vision = vision;
        self
    }

    /// The same session able to take every medium `encoders` reads.
    pub fn with_encoders(mut self, encoders: Encoders) -> Self {
        self.encoders = encoders;
        self
    }

    /// Record `ids` through the model and return the final hidden states `[ids.len(), hidden]`.
    pub fn forward(&mut self, rec: &mut Recorder, ids: &[u32]) -> Result<Tensor> {
        self.forward_with(rec, ids, None)
    }

    /// [`Session::forward`] with media: the image and audio tokens of `ids` take the
    /// embeddings the vision and audio towers make of `media`.
    pub fn forward_with(&mut self, rec: &mut Recorder, ids: &[u32], media: Option<&Media>) -> Result<Tensor> {
        check_ids(&self.model, ids)?;
        crate::multimodal::forward_prompt(&self.model, &self.encoders, rec, &mut self.pool, self.seq, ids, media)
    }

    /// Run `ids` and sample one token from the logits after the last of them, leaving it in
    /// the session's token slot too (where the first decode step reads it).
    async fn prefill(&mut self, ids: &[u32], media: Option<&Media>, opts: &SamplingOptions) -> Result<(u32, f32)> {
        let dev = self.model.device().clone();
        let t0 = Instant::now();
        let row = self.row(opts, self.step);
        // A long text prompt runs in chunks, each submitted and finished before the next is
        // recorded, so the activations held at once are a chunk's, not the prompt's: memory is
        // bounded by the weights, the KV cache and a constant. A prompt with media runs its
        // text before the first media token in chunks, the rest whole.
        let first = media.and_then(|_| self.encoders.first_media(ids));
        let split = prefill_split(ids.len(), self.prefill_chunk, first);
        let ids = prefill_head(&self.model, &mut self.pool, self.seq, ids, split).await?;
        let mut rec = Recorder::new(&dev);
        let h = self.forward_with(&mut rec, ids, media)?;
        let logits = self.model.logits(&mut rec, &h, ids.len() - 1..ids.len())?;
        let row_opts = dev.upload_u32("sample options", &row.opts.words(), &[1, RowOptions::WORDS])?;
        let out = dev.empty("sample out", &[1, 2], DType::F32)?;
        let tokens = self.stepper()?.tokens().clone();
        flint_kernels::sample::sample_rows(&dev, &mut rec, 1, self.model.cfg.vocab, &logits, &row_opts, &out, &tokens)?;
        let recorded = t0.elapsed();
        // The readback is queued after the work and waits for it; the submission (and what it
        // holds) is kept until then.
        let submitted = rec.submit()?;
        self.step += 1;
        let r = dev.read_f32_async(&out).await?;
        drop(submitted);
        tracing::debug!(
            tokens = ids.len(),
            record_ms = recorded.as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "prefill"
        );
        Ok((r[0] as u32, r[1]))
    }

    /// Run `ids` through the model in one recording, as a prefill chunk is recorded, with a GPU
    /// timestamp around every dispatch, and return the dispatches with their times. The tokens
    /// join the cache; no token is sampled. (A prefill runs at most
    /// [`PREFILL_CHUNK`] tokens in one recording; pass that many to time one chunk.)
    pub fn profile_prefill(&mut self, ids: &[u32]) -> Result<Vec<flint_gpu::DispatchTime>> {
        flint_gpu::block_on("a timed prefill", self.profile_prefill_async(ids))
    }

    /// [`Session::profile_prefill`] without blocking.
    pub async fn profile_prefill_async(&mut self, ids: &[u32]) -> Result<Vec<flint_gpu::DispatchTime>> {
        if ids.is_empty() {
            return Err(RequestError::EmptyPrompt.into());
        }
        self.room_for(ids.len())?;
        let dev = self.model.device().clone();
        let mut rec = Recorder::new(&dev).timed(true);
        self.forward(&mut rec, ids)?;
        Ok(rec.submit()?.finished().await?)
    }

    /// Run one more token through the model from the decode plan with a GPU timestamp around
    /// every dispatch and return the dispatches with their times (the token joins the cache, as
    /// in a decode step).
    pub fn profile_step(&mut self, token: u32, opts: &SamplingOptions) -> Result<Vec<flint_gpu::DispatchTime>> {
        flint_gpu::block_on("a timed decode step", self.profile_step_async(token, opts))
    }

    /// [`Session::profile_step`] without blocking.
    pub async fn profile_step_async(
        &mut self,
        token: u32,
        opts: &SamplingOptions,
    ) -> Result<Vec<flint_gpu::DispatchTime>> {
        let dev = self.model.device().clone();
        let row = self.row(opts, self.step);
        let tokens = self.stepper()?.tokens().clone();
        dev.write(&tokens, &token.to_le_bytes())?;
        let (model, pool) = (&*self.model, &mut self.pool);
        let times = self.stepper.as_mut().expect("made above").profile_async(model, pool, &[row]).await?;
        self.step += 1;
        Ok(times)
    }

    /// Generate after `prompt` (which must not be empty), calling `on_token` with each new token
    /// as it is produced. Returns early with [`StopReason::Context`] when the cache is full.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &SamplingOptions,
        on_token: impl FnMut(u32),
    ) -> Result<Generation> {
        self.generate_with(prompt, None, opts, on_token)
    }

    /// [`Session::generate`] after a prompt with media (`media` for its image and audio tokens).
    /// Blocks the thread; in the browser it returns an error: use [`Session::generate_async`].
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        media: Option<&Media>,
        opts: &SamplingOptions,
        mut on_token: impl FnMut(u32),
    ) -> Result<Generation> {
        let on_token = |t| {
            on_token(t);
            ControlFlow::Continue(())
        };
        flint_gpu::block_on("a generation", self.generate_async(prompt, media, opts, on_token))
    }

    /// [`Session::generate_with`] without blocking, for the browser: every wait for the GPU is
    /// awaited, so the page's event loop runs between steps. (Natively the waits poll the
    /// device and block, as [`Session::generate_with`] does.) `on_token` may return
    /// [`ControlFlow::Break`] to stop after that token ([`StopReason::Cancelled`]).
    pub async fn generate_async(
        &mut self,
        prompt: &[u32],
        media: Option<&Media>,
        opts: &SamplingOptions,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(RequestError::EmptyPrompt.into());
        }
        // As the engine answers: a budget of no tokens is a request with nothing to do.
        if opts.max_tokens == 0 {
            return Err(RequestError::NoTokens.into());
        }
        opts.params(1, self.model.cfg.vocab).validate().map_err(|e| RequestError::Sampling(e.to_string()))?;
        // Media that does not fit the prompt is refused before any of it runs (a long prompt's
        // first chunks run without the media).
        crate::multimodal::check_media(&self.encoders, prompt, media)?;
        let capacity = self.capacity;
        self.room_for(prompt.len())?;
        let t0 = Instant::now();
        let (first, first_logprob) = self.prefill(prompt, media, opts).await?;
        let prefill = t0.elapsed();
        let t1 = Instant::now();
        let mut out = Generation {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stop: StopReason::Length,
            prompt_tokens: prompt.len(),
            prefill,
            decode: Duration::ZERO,
        };
        // Cache length after the prompt; each decode step adds one position. Steps are submitted
        // ahead while the budget and the context allow, and taken in order; once a token ends the
        // generation, the steps after it are discarded and their positions released.
        let base = self.len();
        let first_step = self.step;
        let mut done = accept(&mut out, first, first_logprob, opts, base, capacity, &mut on_token);
        let (mut submitted, mut used) = (0usize, 0usize);
        let run = async {
            loop {
                while !done
                    && self.stepper()?.has_room()
                    && 1 + submitted < opts.max_tokens
                    && base + submitted < capacity
                {
                    let row = self.row(opts, first_step + submitted as u32);
                    let (model, pool) = (&*self.model, &mut self.pool);
                    self.stepper.as_mut().expect("made above").submit(model, pool, &[row], submitted as u64)?;
                    submitted += 1;
                }
                let stepper = self.stepper.as_mut().expect("made above");
                if done || stepper.in_flight() == 0 {
                    return stepper.drain_async().await;
                }
                let (_, r) = stepper.take_async().await?.expect("a step is in flight");
                used += 1;
                done = accept(&mut out, r[0].0, r[0].1, opts, base, capacity, &mut on_token);
            }
        }
        .await;
        let kept = self.pool.truncate(self.seq, base + used);
        self.step = first_step + used as u32;
        if run.is_err() {
            // Steps may still be in flight; a fresh stepper (its plans made again) starts the
            // next generation clean rather than taking their results as its own.
            self.stepper = None;
        }
        run?;
        kept?;
        out.decode = t1.elapsed();
        Ok(out)
    }
}

/// Take a drawn token into `out` with the stopping rules of a generation: a stop token ends it
/// unrecorded; otherwise the token is kept and reported, and the generation ends when the
/// caller asks, when the budget is spent or when the cache (`base` positions before the first
/// token, one more per token fed back) could not take the next. Returns whether it has ended.
fn accept(
    out: &mut Generation,
    token: u32,
    logprob: f32,
    opts: &SamplingOptions,
    base: usize,
    capacity: usize,
    on_token: &mut impl FnMut(u32) -> ControlFlow<()>,
) -> bool {
    if opts.stop.contains(&token) {
        out.stop = StopReason::Stop;
        return true;
    }
    out.tokens.push(token);
    out.logprobs.push(logprob);
    if on_token(token).is_break() {
        out.stop = StopReason::Cancelled;
        return true;
    }
    if out.tokens.len() >= opts.max_tokens {
        out.stop = StopReason::Length;
        return true;
    }
    if base + out.tokens.len() > capacity {
        out.stop = StopReason::Context;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::prefill_split;

    /// Text: equal chunks, the last piece the remainder; media: the text before the first
    /// media token in chunks, the rest whole, and a prompt within one chunk whole.
    #[test]
    fn prefill_split_chunks_text_and_the_text_before_media() {
        assert_eq!(prefill_split(1000, 512, None), (500, 500));
        assert_eq!(prefill_split(1001, 512, None), (501, 500));
        assert_eq!(prefill_split(1100, 512, None), (367, 366));
        assert_eq!(prefill_split(100, 512, None), (100, 100));
        assert_eq!(prefill_split(1000, 512, Some(700)), (350, 300));
        assert_eq!(prefill_split(1000, 512, Some(10)), (10, 990));
        assert_eq!(prefill_split(1000, 512, Some(0)), (1000, 1000));
        assert_eq!(prefill_split(300, 512, Some(200)), (300, 300));
    }
}
