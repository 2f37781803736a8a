//! The batched generation engine: many requests, each with its own prompt, sampling options and
//! branch count, decoded together. Every [`Engine::step`] admits waiting requests (each prompt
//! prefilled once, its branches forked from it sharing the prompt's KV pages), then advances
//! every live branch of every request by one token in a single batched decode: the weights are
//! read once per step for all rows, attention goes through the paged KV cache, and branches of
//! one prompt attend to their shared prefix in one cascade pass. Requests join and leave between
//! steps; nothing is recompiled when the batch changes.
//!
//! KV memory is reserved per request at admission for its worst case (prompt plus token budget,
//! the prompt's pages counted once however many branches share them), so an admitted request
//! never runs out of pages half way. Requests are admitted in order while they fit; when the
//! head of the queue does not, one behind it that does may go first, a bounded number of times
//! (the batch size) before the queue waits for the head. A step prefills at most
//! [`PREFILL_CHUNK`](crate::generate::PREFILL_CHUNK) prompt tokens (see
//! [`Engine::with_prefill_chunk`]): a long prompt joins over several steps, the running
//! sequences decoding between its chunks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use crate::kvpool::{KvPool, SeqId};
use flint_gpu::{DType, Recorder};
use flint_kernels::sample::RowOptions;

use crate::generate::{SamplingOptions, StopReason};
use crate::model::decoder::Decoder;
use crate::multimodal::{Encoders, Media, Pixels, Vision};
use crate::reasoning::Vote;
use crate::stepper::{StepMode, StepRow, StepStats, Stepper};
use crate::tokenizer::Tokenizer;
use crate::{RequestError, Result, RuntimeError};

/// Sizes of an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// KV cache capacity in tokens, over all sequences (shared pages counted once).
    pub kv_tokens: usize,
    /// Tokens per KV page.
    pub page_size: usize,
    /// Most sequences (branches) decoded in one step.
    pub max_batch: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { kv_tokens: 16384, page_size: 64, max_batch: 32 }
    }
}

/// One generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Prompt token ids (not empty).
    pub prompt: Vec<u32>,
    /// Sampling and stopping; branch `b` draws with seed `sampling.seed + b`.
    pub sampling: SamplingOptions,
    /// Branches decoded from the one prefilled prompt (1 for a plain request).
    pub branches: usize,
    /// Pixels and audio features for the prompt's image and audio tokens (multimodal models).
    pub media: Option<Arc<Media>>,
    /// Vote over the branches' final answers when they finish (contemplating mode): the
    /// output's [`RequestOutput::vote`] says which branch won. Needs an engine that has the
    /// model's tokenizer ([`Model::engine`](crate::model::Model::engine) gives it one).
    pub vote: bool,
}

impl Request {
    /// A single-branch text request.
    pub fn new(prompt: Vec<u32>, sampling: SamplingOptions) -> Request {
        Request { prompt, sampling, branches: 1, media: None, vote: false }
    }

    /// The same request contemplated: decoded as `branches` branches from its one prefill, and
    /// voted on when they finish (self-consistency; see [`crate::reasoning::vote`]). With
    /// [`reasoning::prompt_ids`](crate::reasoning::prompt_ids) in
    /// [`Mode::Contemplate`](crate::reasoning::Mode) this is the whole contemplating mode in one
    /// engine request.
    pub fn contemplate(self, branches: usize) -> Request {
        Request { branches, vote: true, ..self }
    }

    /// The same request decoded as `branches` branches.
    pub fn branches(self, branches: usize) -> Request {
        Request { branches, ..self }
    }

    /// The same request with pixels for its image tokens.
    pub fn with_pixels(self, pixels: Option<Pixels>) -> Request {
        self.with_media(pixels.map(Media::from).map(Arc::new))
    }

    /// The same request with media (pixels, audio features) for its image and audio tokens.
    pub fn with_media(self, media: Option<Arc<Media>>) -> Request {
        Request { media, ..self }
    }
}

/// A request's handle, unique within an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RequestId(pub u64);

/// What one branch produced.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BranchOutput {
    /// New token ids (without the stop token).
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the model (temperature 1, no filtering).
    pub logprobs: Vec<f32>,
    /// Why the branch stopped.
    pub stop: StopReason,
}

impl BranchOutput {
    /// Mean log-probability of the branch's tokens (0 for none).
    pub fn mean_logprob(&self) -> f32 {
        if self.logprobs.is_empty() { 0.0 } else { self.logprobs.iter().sum::<f32>() / self.logprobs.len() as f32 }
    }
}

/// Where a request's time went.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestTimings {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens produced over all branches.
    pub generated_tokens: usize,
    /// From submission to the start of the prefill.
    pub queued: Duration,
    /// The prefill and the first token of every branch.
    pub prefill: Duration,
    /// From the first token to the last.
    pub decode: Duration,
}

impl RequestTimings {
    /// Tokens per second after the first, over all branches.
    pub fn decode_tokens_per_s(&self, branches: usize) -> f64 {
        self.generated_tokens.saturating_sub(branches) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// A finished request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RequestOutput {
    /// One entry per branch, in branch order.
    pub branches: Vec<BranchOutput>,
    /// Timings.
    pub timings: RequestTimings,
    /// The vote over the branches' answers, for a [voting](Request::vote) request.
    pub vote: Option<Vote>,
}

impl RequestOutput {
    /// The branch to show: the vote's choice for a voting request, else the first.
    pub fn chosen(&self) -> Option<&BranchOutput> {
        self.branches.get(self.vote.as_ref().map_or(0, |v| v.chosen))
    }
}

/// What a step reports, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A branch produced a token.
    Token {
        /// The request.
        request: RequestId,
        /// Which of its branches.
        branch: usize,
        /// The token id.
        token: u32,
        /// Its log-probability.
        logprob: f32,
    },
    /// Every branch of a request has stopped; its KV pages are free again.
    Finished {
        /// The request.
        request: RequestId,
        /// What it produced.
        output: RequestOutput,
    },
    /// A request failed on its own (its prefill was refused); the others carry on.
    Failed {
        /// The request.
        request: RequestId,
        /// Why.
        error: String,
    },
}

struct Waiting {
    id: RequestId,
    req: Request,
    pages: usize,
    submitted: Instant,
}

struct Branch {
    seq: SeqId,
    seed: u32,
    /// Where the branch's newest token lives on the GPU (its token slot).
    slot: u32,
    /// Decode steps submitted for the branch (its draw in step k is k + 1; the prefill's is 0).
    submitted: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    stop: Option<StopReason>,
}

struct Active {
    id: RequestId,
    sampling: SamplingOptions,
    vote: bool,
    pages: usize,
    prompt_tokens: usize,
    queued: Duration,
    prefill: Duration,
    first_token: Instant,
    branches: Vec<Branch>,
}

/// The batched engine over one decoder. See the module docs.
///
/// The engine holds its decoder, media encoders and tokenizer by `Arc`: it is `'static` and
/// `Send`, so a server can move it to a worker thread or keep it behind a mutex.
pub struct Engine {
    model: Arc<Decoder>,
    encoders: Encoders,
    /// Decodes the branches of voting requests.
    tokenizer: Option<Arc<Tokenizer>>,
    opts: EngineOptions,
    pool: KvPool,
    next_id: u64,
    waiting: VecDeque<Waiting>,
    active: Vec<Active>,
    reserved_pages: usize,
    peak_pages: usize,
    steps: u64,
    stepper: Stepper,
    /// Token slots no branch holds.
    free_slots: Vec<u32>,
    /// Steps submitted and not yet taken: their tag and each row's request and branch.
    in_flight: VecDeque<(u64, Vec<(RequestId, usize)>)>,
    /// The request whose prompt is being prefilled, a chunk per step, if any.
    prefilling: Option<Prefilling>,
    /// Most prompt tokens prefilled in one step (at least one request's chunk).
    prefill_chunk: usize,
    /// Times the head of the queue has been passed over by a request behind it that fit.
    head_skips: usize,
}

/// A request whose prompt is being prefilled across steps: its pages are reserved and its
/// sequence holds `done` prompt tokens.
struct Prefilling {
    w: Waiting,
    seq: SeqId,
    slots: Vec<u32>,
    done: usize,
    /// Tokens per middle chunk.
    size: usize,
    /// Tokens of the final piece, run with the logits and the media (see
    /// [`crate::generate::prefill_split`]).
    last: usize,
    started: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("opts", &self.opts)
            .field("waiting", &self.waiting.len())
            .field("active", &self.active.len())
            .field("pool", &self.pool)
            .finish()
    }
}

impl Engine {
    /// An engine over `model` with a KV pool of `opts.kv_tokens` tokens (text only, without a
    /// tokenizer; [`Model::engine`](crate::model::Model::engine) adds the model's media encoders
    /// and tokenizer).
    pub fn new(model: Arc<Decoder>, opts: EngineOptions) -> Result<Engine> {
        if opts.page_size == 0 || opts.max_batch == 0 || opts.kv_tokens < opts.page_size {
            return Err(RuntimeError::Request(format!(
                "engine of {} KV tokens in pages of {}, batches of {}: all must be positive, with room for a page",
                opts.kv_tokens, opts.page_size, opts.max_batch
            )));
        }
        let pool = model.kv_pool(opts.kv_tokens, opts.page_size)?;
        let width = opts.kv_tokens.min(model.cfg.context).div_ceil(opts.page_size);
        let stepper = Stepper::new(model.device(), opts.max_batch, opts.max_batch, width, StepMode::Planned)?;
        Ok(Engine {
            model,
            encoders: Encoders::default(),
            tokenizer: None,
            free_slots: (0..opts.max_batch as u32).rev().collect(),
            opts,
            pool,
            next_id: 0,
            waiting: VecDeque::new(),
            active: Vec::new(),
            reserved_pages: 0,
            peak_pages: 0,
            steps: 0,
            stepper,
            in_flight: VecDeque::new(),
            prefilling: None,
            prefill_chunk: crate::generate::PREFILL_CHUNK,
            head_skips: 0,
        })
    }

    /// The same engine prefilling at most `tokens` prompt tokens per step (default
    /// [`PREFILL_CHUNK`](crate::generate::PREFILL_CHUNK)): a longer prompt is prefilled in equal
    /// chunks over several steps, the running sequences decoding a token between them, so a
    /// long prompt joining stalls them for a chunk, not for the whole prompt. Prompts with
    /// images are prefilled whole.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// The same engine running its decode steps in `mode` (planned by default; immediate is
    /// the reference the planned loop is tested against). Call before submitting.
    pub fn with_mode(mut self, mode: StepMode) -> Result<Self> {
        let width = self.opts.kv_tokens.min(self.model.cfg.context).div_ceil(self.opts.page_size);
        self.stepper = Stepper::new(self.model.device(), self.opts.max_batch, self.opts.max_batch, width, mode)?;
        Ok(self)
    }

    /// Host time and dispatches of the decode steps so far.
    pub fn step_stats(&self) -> StepStats {
        self.stepper.stats.clone()
    }

    /// The same engine taking images through `vision` (a multimodal model's tower).
    pub fn with_vision(mut self, vision: Option<Arc<Vision>>) -> Self {
        self.encoders.vision = vision;
        self
    }

    /// The same engine taking every medium `encoders` reads.
    pub fn with_encoders(mut self, encoders: Encoders) -> Self {
        self.encoders = encoders;
        self
    }

    /// The same engine decoding the branches of voting requests with `tokenizer`.
    pub fn with_tokenizer(mut self, tokenizer: Option<Arc<Tokenizer>>) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The options the engine was made with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// KV pages a request may need at most: its prompt's pages once, and for every branch but
    /// the first the pages from the prompt's last (shared, partly filled) page to its budget.
    fn pages_for(&self, req: &Request) -> usize {
        let ps = self.opts.page_size;
        let p = req.prompt.len();
        let end = p.saturating_add(req.sampling.max_tokens).min(self.model.cfg.context);
        let own = end.div_ceil(ps) - p / ps;
        end.div_ceil(ps) + req.branches.saturating_sub(1) * own
    }

    /// Queue a request. A request the engine can never serve (empty prompt, a token outside the
    /// vocabulary, bad sampling values, no branches or more than a batch, a prompt longer than
    /// the context, a KV need larger than the whole pool) is refused here; one that merely has
    /// to wait for memory or batch room waits.
    pub fn submit(&mut self, req: Request) -> Result<RequestId> {
        let cfg = &self.model.cfg;
        let refuse = |e: RequestError| Err(RuntimeError::Refused(e));
        if req.prompt.is_empty() {
            return refuse(RequestError::EmptyPrompt);
        }
        if let Some(&id) = req.prompt.iter().find(|&&id| id as usize >= cfg.vocab) {
            return refuse(RequestError::TokenOutsideVocabulary { id, vocab: cfg.vocab });
        }
        req.sampling.params(1, cfg.vocab).validate().map_err(|e| RequestError::Sampling(e.to_string()))?;
        if req.branches == 0 || req.branches > self.opts.max_batch {
            return refuse(RequestError::Branches { branches: req.branches, max: self.opts.max_batch });
        }
        if req.prompt.len() >= cfg.context {
            return refuse(RequestError::TooLong { tokens: req.prompt.len(), context: cfg.context, used: 0 });
        }
        if req.vote && self.tokenizer.is_none() {
            return refuse(RequestError::NoTokenizer);
        }
        if let Err(e) = crate::multimodal::check_media(&self.encoders, &req.prompt, req.media.as_deref()) {
            return refuse(e);
        }
        if req.sampling.max_tokens == 0 {
            return refuse(RequestError::NoTokens);
        }
        let pages = self.pages_for(&req);
        if pages > self.pool.num_pages() {
            return refuse(RequestError::OverKvBudget {
                prompt: req.prompt.len(),
                max_tokens: req.sampling.max_tokens,
                branches: req.branches,
                pages,
                page_size: self.opts.page_size,
                pool_pages: self.pool.num_pages(),
                pool_tokens: self.opts.kv_tokens,
            });
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Waiting { id, req, pages, submitted: Instant::now() });
        Ok(id)
    }

    /// Drop a waiting or running request; its pages are freed. Returns whether it was known.
    pub fn cancel(&mut self, id: RequestId) -> Result<bool> {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            if i == 0 {
                self.head_skips = 0;
            }
            return Ok(true);
        }
        if self.prefilling.as_ref().is_some_and(|p| p.w.id == id) {
            let p = self.prefilling.take().expect("checked");
            self.drop_prefill(p)?;
            return Ok(true);
        }
        let Some(i) = self.active.iter().position(|a| a.id == id) else {
            return Ok(false);
        };
        // Steps in flight that hold its rows run to the end; their results are dropped, and
        // anything that reuses its pages or slots is submitted after them.
        let a = self.active.remove(i);
        self.release(&a)?;
        Ok(true)
    }

    /// Stop one branch of a running request, as a stop token would (a caller's own stopping
    /// rule, such as a stop string, was met): it decodes no further and its batch row is free;
    /// its KV pages are freed with the request's, when its last branch stops. Tokens of steps
    /// already in flight for it are dropped. Returns whether the branch was running.
    pub fn stop_branch(&mut self, id: RequestId, branch: usize) -> bool {
        let Some(a) = self.active.iter_mut().find(|a| a.id == id) else {
            return false;
        };
        match a.branches.get_mut(branch) {
            Some(br) if br.stop.is_none() => {
                br.stop = Some(StopReason::Stop);
                self.free_slots.push(br.slot);
                true
            }
            _ => false,
        }
    }

    /// Whether nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty() && self.in_flight.is_empty() && self.prefilling.is_none()
    }

    /// Requests waiting for admission (a request part way through its prefill counts).
    pub fn waiting(&self) -> usize {
        self.waiting.len() + usize::from(self.prefilling.is_some())
    }

    /// Branches decoding now.
    pub fn live_branches(&self) -> usize {
        self.active.iter().flat_map(|a| &a.branches).filter(|b| b.stop.is_none()).count()
    }

    /// Batched decode steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// KV pages in use now (shared pages counted once) and in the whole pool.
    pub fn kv_pages(&self) -> (usize, usize) {
        (self.pool.used_pages(), self.pool.num_pages())
    }

    /// Bytes of KV cache in use now (shared pages counted once).
    pub fn kv_bytes(&self) -> usize {
        self.pool.used_bytes()
    }

    /// The most KV bytes in use after any step so far.
    pub fn peak_kv_bytes(&self) -> usize {
        self.peak_pages * self.pool.page_bytes()
    }

    /// Admit what fits, run one batched decode step over every live branch, and report what
    /// happened. Errors are the GPU's; a request's own trouble comes back as [`Event::Failed`].
    ///
    /// Each call reports one decode step, but the next is already on the GPU: the step after it
    /// is submitted (its rows' ids stay on the GPU, see [`crate::stepper`]) before this one's
    /// results are waited for, so the GPU never waits for the host between steps. A branch keeps
    /// its row in that step until its stop is seen, so one step may run past its end; that token
    /// is dropped.
    ///
    /// A failure of the GPU (a submit refused, a device lost) fails every running request with
    /// [`Event::Failed`] and frees its pages; the engine stays usable for new requests if the
    /// device does.
    ///
    /// Blocks the thread; in the browser it returns an error: use [`Engine::step_async`].
    pub fn step(&mut self) -> Result<Vec<Event>> {
        flint_gpu::block_on("an engine step", self.step_async())
    }

    /// [`Engine::step`] without blocking: every wait for the GPU (a prefill chunk, the first
    /// tokens' readback, a step's results) is awaited, so a browser page's event loop runs
    /// while the GPU works.
    pub async fn step_async(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        self.admit(&mut events).await?;
        if let Err(e) = self.advance(&mut events).await {
            self.fail_all(&e, &mut events).await?;
        }
        self.peak_pages = self.peak_pages.max(self.pool.used_pages());
        self.retire(&mut events)?;
        Ok(events)
    }

    /// Submit this step if none is in flight, then the next ahead of its results, and take
    /// the oldest step's results (see [`Engine::step`]).
    async fn advance(&mut self, events: &mut Vec<Event>) -> Result<()> {
        if self.in_flight.is_empty() {
            self.submit_step()?;
        }
        if !self.in_flight.is_empty() && self.stepper.has_room() {
            self.submit_step()?;
        }
        if !self.in_flight.is_empty()
            && let Some((tag, results)) = self.stepper.take_async().await?
        {
            self.take_results(tag, &results, events)?;
        }
        Ok(())
    }

    /// Fail every running request with `error`, freeing its pages and slots, and forget the
    /// steps in flight.
    async fn fail_all(&mut self, error: &RuntimeError, events: &mut Vec<Event>) -> Result<()> {
        tracing::error!(%error, requests = self.active.len(), "decode step failed; failing the running requests");
        self.in_flight.clear();
        if let Err(e) = self.stepper.drain_async().await {
            tracing::debug!(error = %e, "while draining the steps in flight");
        }
        for a in std::mem::take(&mut self.active) {
            self.release(&a)?;
            events.push(Event::Failed { request: a.id, error: format!("decode step failed: {error}") });
        }
        Ok(())
    }

    /// Make the next decode step's submit fail as a lost device would (for tests of the
    /// failure path).
    #[doc(hidden)]
    pub fn inject_submit_failure(&mut self) {
        self.stepper.fail_next_submit = true;
    }

    /// Step until every request has finished, passing each event to `on_event` as it comes.
    pub fn run(&mut self, mut on_event: impl FnMut(Event)) -> Result<()> {
        while !self.is_idle() {
            for e in self.step()? {
                on_event(e);
            }
        }
        Ok(())
    }

    /// Prefill what this step's budget allows: first the next chunk of a prompt part way
    /// through, then requests from the queue that fit (KV pages and batch room), in order; when
    /// the head does not fit, a request behind it that does may go first, but only
    /// `max_batch` times before the queue waits for the head, so it is never starved.
    async fn admit(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let mut budget = self.prefill_chunk;
        loop {
            if let Some(mut p) = self.prefilling.take() {
                let left = p.w.req.prompt.len() - p.done;
                let next = if left > p.last { p.size.min(left - p.last) } else { left };
                if next > budget && budget < self.prefill_chunk {
                    // Not this step's: the budget is spent (a step always runs one chunk).
                    self.prefilling = Some(p);
                    return Ok(());
                }
                if left > p.last {
                    // A middle chunk: into the cache, finished before the next is recorded.
                    let c = &p.w.req.prompt[p.done..p.done + next];
                    if let Err(e) = crate::generate::prefill_into(&self.model, &mut self.pool, p.seq, c).await {
                        let id = p.w.id;
                        self.drop_prefill(p)?;
                        events.push(Event::Failed { request: id, error: e.to_string() });
                        continue;
                    }
                    p.done += next;
                    budget = budget.saturating_sub(next);
                    self.prefilling = Some(p);
                    continue;
                }
                budget = budget.saturating_sub(left);
                self.finish_prefill(p, events).await?;
                continue;
            }
            if budget == 0 {
                return Ok(());
            }
            let Some(i) = self.next_to_admit() else { return Ok(()) };
            let w = self.waiting.remove(i).expect("index found");
            if i == 0 {
                self.head_skips = 0;
            } else {
                self.head_skips += 1;
            }
            self.reserved_pages += w.pages;
            let slots: Vec<u32> = (0..w.req.branches).filter_map(|_| self.free_slots.pop()).collect();
            let p = w.req.prompt.len();
            let first = w.req.media.as_ref().and_then(|_| self.encoders.first_media(&w.req.prompt));
            let (size, last) = crate::generate::prefill_split(p, self.prefill_chunk, first);
            let seq = self.pool.create();
            self.prefilling = Some(Prefilling { w, seq, slots, done: 0, size, last, started: Instant::now() });
        }
    }

    /// The queue index of the request to admit next, if one fits: the head, or while the head
    /// has been passed over fewer than `max_batch` times, the first request behind it that fits.
    fn next_to_admit(&self) -> Option<usize> {
        let live = self.live_branches();
        let fits = |w: &Waiting| {
            live + w.req.branches <= self.opts.max_batch && self.reserved_pages + w.pages <= self.pool.num_pages()
        };
        let head = self.waiting.front()?;
        if fits(head) {
            return Some(0);
        }
        if self.head_skips >= self.opts.max_batch {
            return None;
        }
        self.waiting.iter().position(fits)
    }

    /// Give back what a request part way through its prefill holds.
    fn drop_prefill(&mut self, p: Prefilling) -> Result<()> {
        self.pool.free(p.seq)?;
        self.reserved_pages -= p.w.pages;
        self.free_slots.extend(p.slots);
        Ok(())
    }

    /// Run a prompt's last chunk with its logits, draw each branch's first token, and make
    /// the request active (or fail it alone).
    async fn finish_prefill(&mut self, p: Prefilling, events: &mut Vec<Event>) -> Result<()> {
        let Prefilling { w, seq, slots, done, started, .. } = p;
        match self.prefill(&w.req, seq, done, &slots).await {
            Ok(branches) => {
                let prefill = started.elapsed();
                let mut a = Active {
                    id: w.id,
                    sampling: w.req.sampling.clone(),
                    vote: w.req.vote,
                    pages: w.pages,
                    prompt_tokens: w.req.prompt.len(),
                    queued: started - w.submitted,
                    prefill,
                    first_token: Instant::now(),
                    branches: Vec::new(),
                };
                let mut first = Vec::new();
                let mut failed = None;
                for (b, (seq, token, logprob)) in branches.into_iter().enumerate() {
                    let mut br = Branch {
                        seq,
                        seed: w.req.sampling.seed.wrapping_add(b as u32),
                        slot: slots[b],
                        submitted: 0,
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        stop: None,
                    };
                    let context = self.model.cfg.context;
                    if let Err(e) =
                        accept(context, a.prompt_tokens, &a.sampling, a.id, b, &mut br, token, logprob, &mut first)
                    {
                        failed = Some(e);
                    }
                    if br.stop.is_some() {
                        self.free_slots.push(br.slot);
                    }
                    a.branches.push(br);
                }
                match failed {
                    None => {
                        events.extend(first);
                        self.active.push(a);
                    }
                    Some(e) => {
                        self.release(&a)?;
                        events.push(Event::Failed { request: a.id, error: e.to_string() });
                    }
                }
            }
            Err(e) => {
                self.reserved_pages -= w.pages;
                self.free_slots.extend(slots);
                events.push(Event::Failed { request: w.id, error: e.to_string() });
            }
        }
        Ok(())
    }

    /// Run the rest of a prompt (its tokens from `done` on; the earlier ones are in `seq`
    /// already) and draw each branch's first token from its last logits. Returns the
    /// branches' sequences (the first is the prompt's own; the others are forks sharing its
    /// pages) with their first token and its log-probability.
    async fn prefill(
        &mut self,
        req: &Request,
        seq: SeqId,
        done: usize,
        slots: &[u32],
    ) -> Result<Vec<(SeqId, u32, f32)>> {
        let drawn = match self.draw_first(req, seq, done, slots).await {
            Ok(d) => d,
            Err(e) => {
                self.pool.free(seq)?;
                return Err(e);
            }
        };
        let mut out = vec![(seq, drawn[0].0, drawn[0].1)];
        for &(token, logprob) in &drawn[1..] {
            match self.pool.fork(seq) {
                Ok(f) => out.push((f, token, logprob)),
                Err(e) => {
                    for (s, _, _) in out {
                        self.pool.free(s)?;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(out)
    }

    /// Run the rest of a prompt (from `done`) and draw each branch's first token from its last
    /// logits, into the branches' token slots too.
    async fn draw_first(&mut self, req: &Request, seq: SeqId, done: usize, slots: &[u32]) -> Result<Vec<(u32, f32)>> {
        let dev = self.model.device().clone();
        let (n, vocab) = (req.branches, self.model.cfg.vocab);
        // The earlier chunks are in the cache already (see `admit`).
        let prompt = &req.prompt[done..];
        let p = prompt.len();
        let mut rec = Recorder::new(&dev);
        let media = req.media.as_deref();
        let h = crate::multimodal::forward_prompt(
            &self.model,
            &self.encoders,
            &mut rec,
            &mut self.pool,
            seq,
            prompt,
            media,
        )?;
        let last = self.model.logits(&mut rec, &h, p - 1..p)?;
        let logits = if n == 1 {
            last
        } else {
            let rows = dev.empty("branch logits", &[n, vocab], DType::F32)?;
            for b in 0..n {
                rec.copy(&last, &rows.view((b * vocab * 4) as u64, &[1, vocab], DType::F32)?)?;
            }
            rows
        };
        if slots.len() != n {
            return Err(RuntimeError::Request(format!("{n} branches but {} free token slots", slots.len())));
        }
        let opts: Vec<u32> = (0..n)
            .flat_map(|b| {
                let seed = req.sampling.seed.wrapping_add(b as u32);
                let params = req.sampling.params(1, vocab);
                RowOptions { params, seed, step: 0, slot: slots[b] }.words()
            })
            .collect();
        let opts = dev.upload_u32("sample options", &opts, &[n, RowOptions::WORDS])?;
        let out = dev.empty("sample out", &[n, 2], DType::F32)?;
        let tokens = self.stepper.tokens();
        flint_kernels::sample::sample_rows(&dev, &mut rec, n, vocab, &logits, &opts, &out, tokens)?;
        // The readback waits for the work queued before it; the submission is held until then.
        let submitted = rec.submit()?;
        let r = dev.read_f32_async(&out).await?;
        drop(submitted);
        Ok(r.chunks_exact(2).map(|c| (c[0] as u32, c[1])).collect())
    }

    /// Submit one batched decode step over every branch that can still grow (rows in request
    /// order, a request's branches together, so cascade sees them adjacent). Returns whether a
    /// step was submitted.
    fn submit_step(&mut self) -> Result<bool> {
        if !self.stepper.has_room() {
            return Ok(false);
        }
        let context = self.model.cfg.context;
        let vocab = self.model.cfg.vocab;
        let mut rows = Vec::new();
        let mut who = Vec::new();
        for a in &self.active {
            for (bi, br) in a.branches.iter().enumerate() {
                let grows = 1 + br.submitted < a.sampling.max_tokens && a.prompt_tokens + br.submitted < context;
                if br.stop.is_none() && grows {
                    let params = a.sampling.params(1, vocab);
                    let opts = RowOptions { params, seed: br.seed, step: br.submitted as u32 + 1, slot: br.slot };
                    rows.push(StepRow { seq: br.seq, opts });
                    who.push((a.id, bi));
                }
            }
        }
        if rows.is_empty() {
            return Ok(false);
        }
        let tag = self.steps;
        self.stepper.submit(&self.model, &mut self.pool, &rows, tag)?;
        self.steps += 1;
        for &(id, bi) in &who {
            if let Some(a) = self.active.iter_mut().find(|a| a.id == id) {
                a.branches[bi].submitted += 1;
            }
        }
        self.in_flight.push_back((tag, who));
        Ok(true)
    }

    /// Take the results of the step tagged `tag` into its branches (those cancelled or already
    /// stopped drop theirs).
    fn take_results(&mut self, tag: u64, results: &[(u32, f32)], events: &mut Vec<Event>) -> Result<()> {
        let Some(pos) = self.in_flight.iter().position(|(t, _)| *t == tag) else {
            return Err(RuntimeError::Request(format!("a result for step {tag}, which is not in flight")));
        };
        let (_, who) = self.in_flight.remove(pos).expect("position found");
        let context = self.model.cfg.context;
        for (&(id, bi), &(token, logprob)) in who.iter().zip(results) {
            let Some(a) = self.active.iter_mut().find(|a| a.id == id) else {
                continue;
            };
            let br = &mut a.branches[bi];
            if br.stop.is_some() {
                continue;
            }
            accept(context, a.prompt_tokens, &a.sampling, a.id, bi, br, token, logprob, events)?;
            if br.stop.is_some() {
                self.free_slots.push(br.slot);
            }
        }
        Ok(())
    }

    fn retire(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].branches.iter().any(|b| b.stop.is_none()) {
                i += 1;
                continue;
            }
            let a = self.active.remove(i);
            self.release(&a)?;
            let branches: Vec<BranchOutput> = a
                .branches
                .into_iter()
                .map(|b| BranchOutput {
                    tokens: b.tokens,
                    logprobs: b.logprobs,
                    stop: b.stop.unwrap_or(StopReason::Length),
                })
                .collect();
            let timings = RequestTimings {
                prompt_tokens: a.prompt_tokens,
                generated_tokens: branches.iter().map(|b| b.tokens.len()).sum(),
                queued: a.queued,
                prefill: a.prefill,
                decode: a.first_token.elapsed(),
            };
            let vote = match (a.vote, &self.tokenizer) {
                (true, Some(tok)) => Some(vote_on(tok, &branches)),
                _ => None,
            };
            events.push(Event::Finished { request: a.id, output: RequestOutput { branches, timings, vote } });
        }
        Ok(())
    }

    fn release(&mut self, a: &Active) -> Result<()> {
        for b in &a.branches {
            self.pool.free(b.seq)?;
            if b.stop.is_none() {
                self.free_slots.push(b.slot);
            }
        }
        self.reserved_pages -= a.pages;
        Ok(())
    }
}

/// Take a drawn token into a branch, with the same stopping rules as
/// [`Session::generate`](crate::generate::Session::generate): a stop token ends it unrecorded;
/// otherwise the token is kept and reported, and the branch ends when its budget is spent or
/// its cache (the prompt, then one position per token fed back) could not take the next.
#[allow(clippy::too_many_arguments)]
fn accept(
    context: usize,
    prompt: usize,
    opts: &SamplingOptions,
    request: RequestId,
    branch: usize,
    br: &mut Branch,
    token: u32,
    logprob: f32,
    events: &mut Vec<Event>,
) -> Result<()> {
    if opts.stop.contains(&token) {
        br.stop = Some(StopReason::Stop);
        return Ok(());
    }
    br.tokens.push(token);
    br.logprobs.push(logprob);
    events.push(Event::Token { request, branch, token, logprob });
    if br.tokens.len() >= opts.max_tokens {
        br.stop = Some(StopReason::Length);
    } else if prompt + br.tokens.len() > context {
        br.stop = Some(StopReason::Context);
    }
    Ok(())
}

/// The vote over finished branches, their texts decoded without special tokens (a branch that
/// does not decode gives no answer).
fn vote_on(tokenizer: &Tokenizer, branches: &[BranchOutput]) -> Vote {
    let scored: Vec<(String, f32)> =
        branches.iter().map(|b| (tokenizer.decode(&b.tokens, true).unwrap_or_default(), b.mean_logprob())).collect();
    crate::reasoning::vote(&scored)
}
