//! Decode steps run from cached plans, with the sampled ids kept on the GPU.
//!
//! A decode step (embedding, every layer, the output head and the sampler) is recorded once per
//! [`DecodeLayout`] into a [`Plan`]: pipelines, bind groups, parameters and intermediate
//! buffers are made then, and every later step with that layout writes one small block (the
//! positions, destinations, page-table rows and lengths of [`DecodeStep`], then each row's token
//! slot and sampler options) with one queue write and replays the plan. The sampler leaves each
//! row's id in a token slot, where the next step's embedding reads it, so the host submits step
//! t + 1 without waiting for token t; ids and log-probabilities come back through a
//! [`ReadbackRing`] of [`PIPELINE_DEPTH`] staging buffers. The host waits only when all of them
//! are in flight: with two, it records step t + 1 while the GPU runs step t; the third covers a
//! host that falls behind for a moment. A layout that a plan cannot hold (its block larger than
//! a binding) runs from a fresh recording instead.

use std::time::Duration;

use web_time::Instant;

use crate::kvpool::{KvPool, SeqId};
use flint_gpu::{DType, Device, DispatchTime, Plan, ReadbackRing, Recorder, Tensor};
use flint_kernels::sample::RowOptions;

use crate::model::decoder::{DecodeLayout, DecodeStep, Decoder, HeadOut};
use crate::{Result, RuntimeError};

/// Steps in flight at most (staging buffers in the ring).
pub const PIPELINE_DEPTH: usize = 3;
/// Plans kept per stepper (layouts seen most recently).
const MAX_PLANS: usize = 8;

/// One row of a step: the sequence it extends, the slot its token is read from and written
/// to, and its draw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepRow {
    pub seq: SeqId,
    pub opts: RowOptions,
}

/// How decode steps are run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepMode {
    /// From cached plans, several steps in flight (the default).
    #[default]
    Planned,
    /// Each step recorded afresh and waited for: the reference the planned loop must equal.
    Immediate,
}

/// Where a decode step's host time goes, summed over steps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Steps submitted.
    pub steps: u64,
    /// Plans made (the first step of each layout).
    pub plans_made: u64,
    /// Steps whose head wrote argmax tiles instead of the logits (every row greedy).
    pub tiles_steps: u64,
    /// Dispatches of the last step.
    pub dispatches: usize,
    /// Checking the rows, growing the sequences and computing the per-step values.
    pub prepare: Duration,
    /// Finding (or making) the plan and writing the per-step block.
    pub write: Duration,
    /// Encoding the plan's dispatches into a command buffer.
    pub encode: Duration,
    /// The submit call (on CPU adapters such as lavapipe it may run the work itself).
    pub submit: Duration,
    /// Waiting for results with every staging buffer in flight (or, immediate, for each step).
    pub wait: Duration,
}

impl StepStats {
    /// Host time per step in microseconds: prepare, write and encode (the work the host does
    /// for a step; the submit call is apart, as a CPU adapter may run the step inside it).
    pub fn host_us_per_step(&self) -> f64 {
        (self.prepare + self.write + self.encode).as_secs_f64() * 1e6 / self.steps.max(1) as f64
    }
}

/// A step's tag and each row's `(token, log-probability)`.
pub(crate) type StepResult = (u64, Vec<(u32, f32)>);

struct StepPlan {
    layout: DecodeLayout,
    plan: Plan,
    block: Tensor,
    out: Tensor,
    used: u64,
}

/// Runs decode steps for a session or an engine (see the module docs).
pub(crate) struct Stepper {
    dev: Device,
    /// Token slots: u32 `[slots]`.
    tokens: Tensor,
    plans: Vec<StepPlan>,
    ring: ReadbackRing,
    /// Page-table width of every plan: the most pages one sequence can hold.
    width: usize,
    mode: StepMode,
    words: Vec<u32>,
    clock: u64,
    /// Results of immediate steps, waiting to be taken.
    ready: std::collections::VecDeque<StepResult>,
    pub stats: StepStats,
    /// Fail the next submit after growing the sequences (tests of the failure path).
    pub fail_next_submit: bool,
    /// Make no plans: every step takes the path of a layout no plan can hold (tests of it).
    pub no_plans: bool,
    /// Greedy steps write the logits and sample from them too (tests of the argmax tiles).
    pub full_logits: bool,
}

impl Stepper {
    /// A stepper for at most `max_rows` rows per step over `slots` token slots, whose
    /// sequences hold at most `width` pages.
    pub fn new(dev: &Device, slots: usize, max_rows: usize, width: usize, mode: StepMode) -> Result<Stepper> {
        Ok(Stepper {
            dev: dev.clone(),
            tokens: dev.empty("token slots", &[slots.max(1)], DType::U32)?,
            plans: Vec::new(),
            ring: ReadbackRing::new(dev, PIPELINE_DEPTH, (max_rows.max(1) * 8) as u64)?,
            width: width.max(1),
            mode,
            words: Vec::new(),
            clock: 0,
            ready: std::collections::VecDeque::new(),
            stats: StepStats::default(),
            fail_next_submit: false,
            no_plans: false,
            full_logits: false,
        })
    }

    /// The token slots (u32), where a prefill's sampler leaves each sequence's first id.
    pub fn tokens(&self) -> &Tensor {
        &self.tokens
    }

    /// Whether another step can be submitted now: a free staging buffer (planned), or no
    /// result waiting to be taken (immediate, one step at a time).
    pub fn has_room(&self) -> bool {
        match self.mode {
            StepMode::Planned => self.ring.has_room(),
            StepMode::Immediate => self.ready.is_empty(),
        }
    }

    /// Steps submitted whose results have not been taken.
    pub fn in_flight(&self) -> usize {
        self.ring.in_flight() + self.ready.len()
    }

    /// Submit one decode step over `rows` (each sequence grows by one position), tagged `tag`.
    /// On error the pool is as it was.
    pub fn submit(&mut self, decoder: &Decoder, pool: &mut KvPool, rows: &[StepRow], tag: u64) -> Result<()> {
        let saved = pool.checkpoint();
        let r = self.submit_inner(decoder, pool, rows, tag);
        if r.is_err() {
            pool.restore(saved);
        }
        r
    }

    fn submit_inner(&mut self, decoder: &Decoder, pool: &mut KvPool, rows: &[StepRow], tag: u64) -> Result<()> {
        let t0 = Instant::now();
        let seqs: Vec<SeqId> = rows.iter().map(|r| r.seq).collect();
        let mut copies = Recorder::new(&self.dev);
        let width = (self.mode == StepMode::Planned).then_some(self.width);
        let mut step = decoder.prepare_decode(&mut copies, pool, &seqs, width)?;
        self.add_rows(decoder, &mut step, rows);
        let t1 = Instant::now();
        self.stats.prepare += t1 - t0;
        if std::mem::take(&mut self.fail_next_submit) {
            return Err(RuntimeError::Gpu(flint_gpu::GpuError::Wgpu {
                during: "submitting a decode step".into(),
                message: "injected failure".into(),
            }));
        }
        if !copies.is_empty() {
            copies.submit()?;
        }
        if self.mode == StepMode::Immediate {
            return self.immediate(decoder, pool, &step, tag, t1);
        }
        let i = match self.plans.iter().position(|p| p.layout == step.layout) {
            Some(i) => i,
            None => match self.make_plan(decoder, pool, &step) {
                Ok(plan) => {
                    if self.plans.len() >= MAX_PLANS {
                        let oldest = (0..self.plans.len()).min_by_key(|&i| self.plans[i].used).unwrap_or(0);
                        self.plans.swap_remove(oldest);
                    }
                    self.plans.push(plan);
                    self.stats.plans_made += 1;
                    self.plans.len() - 1
                }
                Err(e) => {
                    tracing::debug!(error = %e, layout = ?step.layout, "no plan for this layout; recording the step");
                    return self.one_off(decoder, pool, &step, tag, t1);
                }
            },
        };
        self.clock += 1;
        let plan = &mut self.plans[i];
        plan.used = self.clock;
        step.write_block(&self.dev, &mut self.words);
        self.dev.write(&plan.block, bytemuck::cast_slice(&self.words))?;
        let t2 = Instant::now();
        self.stats.write += t2 - t1;
        let (p, out) = (&plan.plan, plan.out.clone());
        let mut encode = Duration::ZERO;
        self.ring.submit(&out, tag, |enc| {
            let t = Instant::now();
            p.encode(enc);
            encode = t.elapsed();
        })?;
        self.stats.encode += encode;
        self.stats.submit += t2.elapsed() - encode;
        self.stats.dispatches = p.dispatches();
        self.count_step(&step);
        Ok(())
    }

    /// The rows' token slots and sampler options as the step's last two regions, and whether
    /// the head writes argmax tiles (every row greedy, at temperature 0, and a head that can;
    /// not with `full_logits`).
    fn add_rows(&self, decoder: &Decoder, step: &mut DecodeStep, rows: &[StepRow]) {
        step.regions.push(rows.iter().map(|r| r.opts.slot).collect());
        step.regions.push(rows.iter().flat_map(|r| r.opts.words()).collect());
        step.layout.tiles = self.tiles_for(decoder, rows.len(), rows.iter().all(|r| r.opts.params.temperature == 0.0));
    }

    /// Whether a step of `rows` rows, all greedy or not, has the head write argmax tiles.
    fn tiles_for(&self, decoder: &Decoder, rows: usize, greedy: bool) -> bool {
        greedy && !self.full_logits && decoder.can_tile_head(rows)
    }

    /// Count a step submitted.
    fn count_step(&mut self, step: &DecodeStep) {
        self.stats.steps += 1;
        self.stats.tiles_steps += u64::from(step.layout.tiles);
    }

    /// Make the plan of a step over `rows` fresh sequences now (at load), so that the first
    /// decode step of that layout (short sequences: one key split) replays it rather than
    /// recording it and compiling its kernels. Nothing runs; the pool is left as it was.
    pub fn warm(&mut self, decoder: &Decoder, pool: &mut KvPool, rows: usize) -> Result<()> {
        if self.mode != StepMode::Planned || rows == 0 {
            return Ok(());
        }
        let saved = pool.checkpoint();
        let made = (|| {
            let seqs: Vec<SeqId> = (0..rows).map(|_| pool.create()).collect();
            let mut copies = Recorder::new(&self.dev);
            for &s in &seqs {
                pool.append(&mut copies, s, 1)?;
            }
            let mut step = decoder.prepare_decode(&mut copies, pool, &seqs, Some(self.width))?;
            step.regions.push(vec![0; rows]);
            step.regions.push(vec![0; rows * RowOptions::WORDS]);
            // Zero options: greedy rows, the default.
            step.layout.tiles = self.tiles_for(decoder, rows, true);
            if self.plans.iter().any(|p| p.layout == step.layout) {
                return Ok(None);
            }
            self.make_plan(decoder, pool, &step).map(Some)
        })();
        pool.restore(saved);
        if let Some(plan) = made? {
            self.plans.push(plan);
            self.stats.plans_made += 1;
        }
        Ok(())
    }

    /// Record `step` into `rec` over `block` (written or to be written with the step's words):
    /// embedding from the token slots, the layers, the head, the sampler. Returns the sampler's
    /// output `[rows, 2]`.
    fn record(
        &self,
        decoder: &Decoder,
        pool: &KvPool,
        step: &DecodeStep,
        block: &Tensor,
        rec: &mut Recorder,
    ) -> Result<Tensor> {
        let b = step.layout.rows;
        let (offsets, _) = step.offsets(&self.dev);
        let n = step.regions.len();
        let slots = block.view(offsets[n - 2] as u64 * 4, &[b], DType::U32)?;
        let opts = block.view(offsets[n - 1] as u64 * 4, &[b, RowOptions::WORDS], DType::U32)?;
        let x = decoder.embed_slots(rec, &self.tokens, &slots, b)?;
        let out = self.dev.empty("sample out", &[b, 2], DType::F32)?;
        match decoder.record_decode(rec, pool, step, block, &x)? {
            HeadOut::Logits(logits) => flint_kernels::sample::sample_rows(
                &self.dev,
                rec,
                b,
                decoder.cfg.vocab,
                &logits,
                &opts,
                &out,
                &self.tokens,
            )?,
            HeadOut::Tiles { tiles, count } => {
                flint_kernels::sample::sample_tiles(&self.dev, rec, b, count, &tiles, &opts, &out, &self.tokens)?
            }
        }
        Ok(out)
    }

    fn make_plan(&self, decoder: &Decoder, pool: &KvPool, step: &DecodeStep) -> Result<StepPlan> {
        if self.no_plans {
            return Err(RuntimeError::Request("plans are off for this stepper".into()));
        }
        let words = step.block_words(&self.dev);
        let block = self.dev.empty("decode step block", &[words], DType::U32)?;
        let mut rec = Recorder::new(&self.dev);
        let out = self.record(decoder, pool, step, &block, &mut rec)?;
        Ok(StepPlan { layout: step.layout.clone(), plan: rec.into_plan()?, block, out, used: 0 })
    }

    /// Record `step` afresh over a block of its own words (not a plan's): the recording and the
    /// sampler's output.
    fn record_fresh(&mut self, decoder: &Decoder, pool: &KvPool, step: &DecodeStep) -> Result<(Recorder, Tensor)> {
        step.write_block(&self.dev, &mut self.words);
        let block = self.dev.upload_u32("decode step block", &self.words, &[self.words.len()])?;
        let mut rec = Recorder::new(&self.dev);
        let out = self.record(decoder, pool, step, &block, &mut rec)?;
        self.stats.dispatches = rec.dispatches();
        Ok((rec, out))
    }

    /// Run `step` of a layout no cached plan can hold from a recording of its own, through the
    /// readback ring as a planned step goes (not waited for, results in submission order).
    fn one_off(&mut self, decoder: &Decoder, pool: &KvPool, step: &DecodeStep, tag: u64, t1: Instant) -> Result<()> {
        let (rec, out) = self.record_fresh(decoder, pool, step)?;
        let plan = rec.into_plan()?;
        let t2 = Instant::now();
        self.stats.write += t2 - t1;
        self.ring.submit(&out, tag, |enc| plan.encode(enc))?;
        self.stats.submit += t2.elapsed();
        self.count_step(step);
        Ok(())
    }

    /// Run `step` from a fresh recording and wait for it (the reference path the planned one is
    /// tested against; it blocks, so the browser runs planned steps only).
    fn immediate(&mut self, decoder: &Decoder, pool: &KvPool, step: &DecodeStep, tag: u64, t1: Instant) -> Result<()> {
        let (rec, out) = self.record_fresh(decoder, pool, step)?;
        let t2 = Instant::now();
        self.stats.write += t2 - t1;
        let submission = rec.submit()?;
        let t3 = Instant::now();
        self.stats.submit += t3 - t2;
        submission.wait()?;
        let bytes = self.dev.read_bytes(&out)?;
        self.stats.wait += t3.elapsed();
        self.count_step(step);
        self.ready.push_back(step_result((tag, bytes)));
        Ok(())
    }

    /// The oldest step's results (`(token, log-probability)` per row) with its tag, awaiting
    /// the GPU (None when nothing is in flight).
    pub async fn take_async(&mut self) -> Result<Option<StepResult>> {
        if let Some(r) = self.ready.pop_front() {
            return Ok(Some(r));
        }
        let t = Instant::now();
        let got = self.ring.take_async().await?;
        self.stats.wait += t.elapsed();
        Ok(got.map(step_result))
    }

    /// Wait for every step in flight and drop its results.
    pub async fn drain_async(&mut self) -> Result<()> {
        self.ready.clear();
        self.ring.drain_async().await?;
        Ok(())
    }

    /// Run one step over `rows` from its plan with a GPU timestamp around every dispatch and
    /// return the dispatches' times (the sequences grow by one position, as in a step).
    pub async fn profile_async(
        &mut self,
        decoder: &Decoder,
        pool: &mut KvPool,
        rows: &[StepRow],
    ) -> Result<Vec<DispatchTime>> {
        self.drain_async().await?;
        let seqs: Vec<SeqId> = rows.iter().map(|r| r.seq).collect();
        let mut copies = Recorder::new(&self.dev);
        let mut step = decoder.prepare_decode(&mut copies, pool, &seqs, Some(self.width))?;
        self.add_rows(decoder, &mut step, rows);
        if !copies.is_empty() {
            copies.submit()?;
        }
        let plan = self.make_plan(decoder, pool, &step)?;
        step.write_block(&self.dev, &mut self.words);
        self.dev.write(&plan.block, bytemuck::cast_slice(&self.words))?;
        Ok(plan.plan.run_timed_async().await?)
    }
}

/// A step's tag and the `(token, log-probability)` of each row, from the bytes read back.
fn step_result((tag, bytes): (u64, Vec<u8>)) -> StepResult {
    let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    (tag, v.chunks_exact(2).map(|c| (c[0] as u32, c[1])).collect())
}
