//! The command recorder: many dispatches and copies recorded into one command buffer and
//! submitted once, optionally with a GPU timestamp pair around each dispatch; or frozen into a
//! [`Plan`] whose bind groups are made once and which is replayed many times (decode steps).
//!
//! Binding convention of every flint kernel: `@group(0) @binding(0)` is a uniform holding the
//! kernel's parameters, and tensors follow at bindings 1, 2, ... in the order given.

use std::sync::Arc;

use crate::pipeline::Kernel;
use crate::pool::Allocation;
use crate::tensor::map_read_async;
use crate::{Device, GpuError, Result, Tensor};

/// wgpu's limit on queries per query set.
const QUERIES_PER_SET: u32 = 4096;

enum Command {
    Dispatch { kernel: Arc<Kernel>, uniform: (u64, u64), tensors: Vec<(u32, Tensor)>, groups: [u32; 3], label: String },
    Copy { src: Tensor, dst: Tensor },
}

/// Records dispatches for one submit.
pub struct Recorder {
    dev: Device,
    uniforms: Vec<u8>,
    commands: Vec<Command>,
    timed: bool,
}

/// How long one dispatch took on the GPU.
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// The label given at dispatch.
    pub label: String,
    /// GPU time between the start and the end of its compute pass, in nanoseconds.
    pub ns: f64,
}

/// A submitted command buffer; [`Submission::wait`] blocks until it has run, and
/// [`Submission::finished`] awaits it.
pub struct Submission {
    dev: Device,
    /// The queue's index of this submission (waited for, rather than the whole device).
    index: wgpu::SubmissionIndex,
    timing: Option<(Arc<Allocation>, u64, Vec<String>)>,
    /// What was submitted, kept (with its pooled buffers) until the GPU is done with it.
    _plan: Option<Plan>,
}

impl Submission {
    /// Wait for the GPU to finish and return per-dispatch GPU times when the recording was
    /// timed and the adapter has timestamps (otherwise an empty list). Blocks the thread; in
    /// the browser it returns an error: use [`Submission::finished`] there.
    pub fn wait(self) -> Result<Vec<DispatchTime>> {
        crate::block_on("a submission", self.finished())
    }

    /// [`Submission::wait`] without blocking: natively the device is polled until the
    /// submission has run; in the browser the queue's completion callback wakes the awaiting
    /// task, and an error that an error scope caught after the recording returned is reported
    /// here.
    pub async fn finished(self) -> Result<Vec<DispatchTime>> {
        #[cfg(not(target_arch = "wasm32"))]
        self.dev.wait_for(self.index.clone())?;
        #[cfg(target_arch = "wasm32")]
        {
            let (tx, rx) = crate::tensor::oneshot::channel();
            self.dev.queue().on_submitted_work_done(move || tx.send(()));
            rx.await;
            if let Some(e) = self.dev.take_deferred_error() {
                return Err(e);
            }
        }
        let Some((buf, len, labels)) = self.timing else {
            return Ok(Vec::new());
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = map_read_async(&self.dev, buf.buffer(), len, "timestamps", self.index).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = f64::from(self.dev.timestamp_period());
        Ok(labels
            .into_iter()
            .zip(ticks.chunks_exact(2))
            .map(|(label, t)| DispatchTime { label, ns: t[1].saturating_sub(t[0]) as f64 * period })
            .collect())
    }
}

impl Recorder {
    /// An empty recording on `dev`.
    pub fn new(dev: &Device) -> Self {
        Recorder { dev: dev.clone(), uniforms: Vec::new(), commands: Vec::new(), timed: false }
    }

    /// Put a timestamp pair around each dispatch (each then gets a compute pass of its own).
    /// Ignored on adapters without timestamps.
    pub fn timed(mut self, on: bool) -> Self {
        self.timed = on && self.dev.caps().timestamps;
        self
    }

    /// The device this recording is for.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Whether the recording will carry timestamps.
    pub fn is_timed(&self) -> bool {
        self.timed
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Number of dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.commands.iter().filter(|c| matches!(c, Command::Dispatch { .. })).count()
    }

    /// Record `kernel` over `groups` workgroups with `params` at binding 0 and `tensors` at
    /// bindings 1.. in order.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        label: &str,
        kernel: &Arc<Kernel>,
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<()> {
        let at: Vec<(u32, &Tensor)> = tensors.iter().enumerate().map(|(i, t)| (i as u32 + 1, *t)).collect();
        self.dispatch_at(label, kernel, params, &at, groups)
    }

    /// [`Recorder::dispatch`] with each tensor's binding number given, for kernels whose
    /// variants leave some bindings out.
    pub fn dispatch_at<P: bytemuck::Pod>(
        &mut self,
        label: &str,
        kernel: &Arc<Kernel>,
        params: &P,
        tensors: &[(u32, &Tensor)],
        groups: [u32; 3],
    ) -> Result<()> {
        let caps = self.dev.caps();
        if groups.iter().any(|&g| g > caps.max_workgroups_per_dim) {
            return Err(GpuError::Shape {
                what: label.into(),
                message: format!("grid {groups:?} exceeds {} workgroups per dimension", caps.max_workgroups_per_dim),
            });
        }
        let align = caps.storage_offset_alignment.max(1) as u64;
        for (_, t) in tensors {
            if t.offset() % align != 0 {
                return Err(GpuError::Shape {
                    what: label.into(),
                    message: format!("tensor bound at byte offset {}, not a multiple of {align}", t.offset()),
                });
            }
        }
        let ualign = caps.uniform_offset_alignment.max(1) as usize;
        let start = self.uniforms.len().div_ceil(ualign) * ualign;
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.resize(start, 0);
        self.uniforms.extend_from_slice(bytes);
        // Uniform bindings are sized in multiples of 16 bytes.
        let size = (bytes.len() as u64).max(16).div_ceil(16) * 16;
        self.uniforms.resize(start + size as usize, 0);
        self.commands.push(Command::Dispatch {
            kernel: kernel.clone(),
            uniform: (start as u64, size),
            tensors: tensors.iter().map(|(b, t)| (*b, (*t).clone())).collect(),
            groups: groups.map(|g| g.max(1)),
            label: label.to_string(),
        });
        Ok(())
    }

    /// Record a copy of `src`'s bytes into `dst` (same byte length).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.byte_len() != dst.byte_len() || !src.byte_len().is_multiple_of(4) {
            return Err(GpuError::Shape {
                what: "copy".into(),
                message: format!(
                    "{} bytes into {} bytes (both must match and be multiples of 4)",
                    src.byte_len(),
                    dst.byte_len()
                ),
            });
        }
        self.commands.push(Command::Copy { src: src.clone(), dst: dst.clone() });
        Ok(())
    }

    /// Encode and submit everything recorded.
    pub fn submit(self) -> Result<Submission> {
        let timed = self.timed;
        let plan = self.into_plan()?;
        let dev = plan.dev.clone();
        let serial = dev.serial();
        let n = plan.dispatches;
        let timing = dev.scoped(
            || format!("submitting {n} dispatches"),
            || -> Result<_> {
                let mut enc =
                    dev.wgpu().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint") });
                let timing = if timed { Some(plan.encode_timed(&mut enc)) } else { None };
                if !timed {
                    plan.encode(&mut enc);
                }
                let index = dev.queue().submit([enc.finish()]);
                Ok((timing, index))
            },
        )??;
        drop(serial);
        let (timing, index) = timing;
        Ok(Submission { dev, index, timing, _plan: Some(plan) })
    }

    /// Freeze the recording into a [`Plan`]: its bind groups and parameter block are made here,
    /// once, and every [`Plan::submit_with`] replays the same dispatches over the same tensors. What
    /// changes between replays must live in tensors the caller rewrites (one small block of
    /// positions, lengths and page-table rows is the usual way).
    pub fn into_plan(self) -> Result<Plan> {
        let dev = self.dev.clone();
        let _serial = dev.serial();
        let n = self.dispatches();
        dev.scoped(|| format!("building a plan of {n} dispatches"), || self.build_plan())?
    }

    fn build_plan(self) -> Result<Plan> {
        let dev = &self.dev;
        let wdev = dev.wgpu();
        let uniform = (!self.uniforms.is_empty()).then(|| {
            // Written once: a plan's parameters never change (they are the dispatches' shapes).
            let a = dev.inner.pool.get(
                wdev,
                self.uniforms.len() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                "flint params",
            );
            dev.queue().write_buffer(a.buffer(), 0, &self.uniforms);
            a
        });
        let mut items = Vec::with_capacity(self.commands.len());
        let mut dispatches = 0;
        for cmd in self.commands {
            match cmd {
                Command::Dispatch { kernel, uniform: (off, size), tensors, groups, label } => {
                    let ubuf = uniform.as_ref().expect("a dispatch wrote params").buffer();
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: ubuf,
                            offset: off,
                            size: wgpu::BufferSize::new(size),
                        }),
                    }];
                    entries.extend(
                        tensors.iter().map(|(b, t)| wgpu::BindGroupEntry { binding: *b, resource: t.binding() }),
                    );
                    let bind_group = wdev.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&kernel.key.entry),
                        layout: &kernel.layout,
                        entries: &entries,
                    });
                    dispatches += 1;
                    items.push(Item::Dispatch { kernel, bind_group, groups, label, _tensors: tensors });
                }
                Command::Copy { src, dst } => items.push(Item::Copy { src, dst }),
            }
        }
        Ok(Plan { dev: dev.clone(), items, dispatches, _uniform: uniform })
    }
}

enum Item {
    Dispatch {
        kernel: Arc<Kernel>,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
        label: String,
        /// The bound tensors, kept so that their pooled buffers are not handed out again while
        /// the plan may still run.
        _tensors: Vec<(u32, Tensor)>,
    },
    Copy {
        src: Tensor,
        dst: Tensor,
    },
}

/// Dispatches and copies ready to replay: pipelines, bind groups and the parameter block were
/// made once ([`Recorder::into_plan`]); a replay only encodes them into one compute pass (a pass
/// per run of dispatches between copies) and submits. The plan owns every tensor it binds.
pub struct Plan {
    dev: Device,
    items: Vec<Item>,
    dispatches: usize,
    _uniform: Option<Arc<Allocation>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("dispatches", &self.dispatches).field("items", &self.items.len()).finish()
    }
}

impl Plan {
    /// Dispatches per replay.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// The device the plan runs on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Encode the plan into `enc`: one compute pass per run of dispatches.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut i = 0;
        while i < self.items.len() {
            match &self.items[i] {
                Item::Copy { src, dst } => {
                    enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.byte_len());
                    i += 1;
                }
                Item::Dispatch { .. } => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("flint"),
                        timestamp_writes: None,
                    });
                    while let Some(Item::Dispatch { kernel, bind_group, groups, .. }) = self.items.get(i) {
                        pass.set_pipeline(&kernel.pipeline);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                    }
                }
            }
        }
    }

    /// Encode with a timestamp pair around each dispatch (a pass each), the timestamps resolved
    /// into a readback buffer; returns what [`Submission::wait`] turns into times.
    fn encode_timed(&self, enc: &mut wgpu::CommandEncoder) -> (Arc<Allocation>, u64, Vec<String>) {
        let dev = &self.dev;
        let wdev = dev.wgpu();
        let n = self.dispatches as u32;
        let query_sets: Vec<wgpu::QuerySet> = (0..(2 * n).div_ceil(QUERIES_PER_SET))
            .map(|i| {
                wdev.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("flint timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (2 * n - i * QUERIES_PER_SET).min(QUERIES_PER_SET),
                })
            })
            .collect();
        let mut labels = Vec::new();
        for item in &self.items {
            match item {
                Item::Copy { src, dst } => {
                    enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.byte_len());
                }
                Item::Dispatch { kernel, bind_group, groups, label, .. } => {
                    let q = labels.len() as u32 * 2;
                    let timestamp_writes = wgpu::ComputePassTimestampWrites {
                        query_set: &query_sets[(q / QUERIES_PER_SET) as usize],
                        beginning_of_pass_write_index: Some(q % QUERIES_PER_SET),
                        end_of_pass_write_index: Some(q % QUERIES_PER_SET + 1),
                    };
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("flint"),
                        timestamp_writes: Some(timestamp_writes),
                    });
                    pass.set_pipeline(&kernel.pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    labels.push(label.clone());
                }
            }
        }
        let len = (2 * n as u64 * 8).max(8);
        let resolve = dev.inner.pool.get(
            wdev,
            len,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            "flint resolve",
        );
        let read = dev.inner.pool.get(
            wdev,
            len,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "flint timestamps",
        );
        for (s, qs) in query_sets.iter().enumerate() {
            let count = (2 * n - s as u32 * QUERIES_PER_SET).min(QUERIES_PER_SET);
            enc.resolve_query_set(qs, 0..count, resolve.buffer(), u64::from(s as u32 * QUERIES_PER_SET) * 8);
        }
        if n > 0 {
            enc.copy_buffer_to_buffer(resolve.buffer(), 0, read.buffer(), 0, len);
        }
        (read, if n > 0 { len } else { 0 }, labels)
    }

    /// Replay the plan: encode it, then whatever `after` adds to the same command buffer (a
    /// copy of the outputs to a staging buffer, say), and submit. Does not wait.
    pub fn submit_with(&self, after: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<wgpu::SubmissionIndex> {
        let dev = &self.dev;
        let _serial = dev.serial();
        let n = self.dispatches;
        dev.scoped(
            || format!("replaying a plan of {n} dispatches"),
            || {
                let mut enc =
                    dev.wgpu().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint plan") });
                self.encode(&mut enc);
                after(&mut enc);
                dev.queue().submit([enc.finish()])
            },
        )
    }

    /// Replay the plan with a GPU timestamp around every dispatch and wait for the times (an
    /// empty list on adapters without timestamps).
    pub fn run_timed(&self) -> Result<Vec<DispatchTime>> {
        crate::block_on("a timed plan", self.run_timed_async())
    }

    /// [`Plan::run_timed`] without blocking.
    pub async fn run_timed_async(&self) -> Result<Vec<DispatchTime>> {
        let dev = self.dev.clone();
        if !dev.caps().timestamps {
            let index = self.submit_with(|_| {})?;
            return Submission { dev, index, timing: None, _plan: None }.finished().await;
        }
        let timing = {
            let _serial = dev.serial();
            dev.scoped(
                || "replaying a timed plan".to_string(),
                || {
                    let mut enc = dev
                        .wgpu()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint plan") });
                    let timing = self.encode_timed(&mut enc);
                    let index = dev.queue().submit([enc.finish()]);
                    (timing, index)
                },
            )?
        };
        let (timing, index) = timing;
        Submission { dev, index, timing: Some(timing), _plan: None }.finished().await
    }
}
