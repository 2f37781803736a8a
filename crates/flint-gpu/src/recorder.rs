//! The command recorder: many dispatches and copies recorded into one command buffer and
//! submitted once, optionally with a GPU timestamp pair around each dispatch.
//!
//! Binding convention of every flint kernel: `@group(0) @binding(0)` is a uniform holding the
//! kernel's parameters, and tensors follow at bindings 1, 2, ... in the order given.

use std::sync::Arc;

use crate::pipeline::Kernel;
use crate::pool::Allocation;
use crate::tensor::map_read;
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

/// A submitted command buffer; [`Submission::wait`] blocks until it has run.
pub struct Submission {
    dev: Device,
    timing: Option<(Arc<Allocation>, u64, Vec<String>)>,
    _keep_alive: Vec<Command>,
    _uniform: Option<Arc<Allocation>>,
}

impl Submission {
    /// Wait for the GPU to finish and return per-dispatch GPU times when the recording was
    /// timed and the adapter has timestamps (otherwise an empty list).
    pub fn wait(self) -> Result<Vec<DispatchTime>> {
        self.dev.wait_idle()?;
        let Some((buf, len, labels)) = self.timing else {
            return Ok(Vec::new());
        };
        let bytes = map_read(&self.dev, buf.buffer(), len, "timestamps")?;
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
        let dev = self.dev.clone();
        let _serial = dev.serial();
        let n = self.dispatches();
        dev.scoped(|| format!("submitting {n} dispatches"), || self.encode_and_submit())?
    }

    fn encode_and_submit(self) -> Result<Submission> {
        let dev = &self.dev;
        let wdev = dev.wgpu();
        let uniform = (!self.uniforms.is_empty()).then(|| {
            let a = dev.inner.pool.get(
                wdev,
                self.uniforms.len() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                "flint params",
            );
            dev.queue().write_buffer(a.buffer(), 0, &self.uniforms);
            a
        });
        let mut bind_groups = Vec::new();
        for cmd in &self.commands {
            if let Command::Dispatch { kernel, uniform: (off, size), tensors, .. } = cmd {
                let ubuf = uniform.as_ref().expect("a dispatch wrote params").buffer();
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: ubuf,
                        offset: *off,
                        size: wgpu::BufferSize::new(*size),
                    }),
                }];
                entries
                    .extend(tensors.iter().map(|(b, t)| wgpu::BindGroupEntry { binding: *b, resource: t.binding() }));
                bind_groups.push(wdev.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&kernel.key.entry),
                    layout: &kernel.layout,
                    entries: &entries,
                }));
            }
        }

        let n = bind_groups.len() as u32;
        let query_sets: Vec<wgpu::QuerySet> = if self.timed && n > 0 {
            (0..(2 * n).div_ceil(QUERIES_PER_SET))
                .map(|i| {
                    wdev.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("flint timestamps"),
                        ty: wgpu::QueryType::Timestamp,
                        count: (2 * n - i * QUERIES_PER_SET).min(QUERIES_PER_SET),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };

        let mut enc = wdev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint") });
        let mut labels = Vec::new();
        let mut groups_iter = bind_groups.iter();
        let mut i = 0;
        let cmds = &self.commands;
        while i < cmds.len() {
            match &cmds[i] {
                Command::Copy { src, dst } => {
                    enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), src.byte_len());
                    i += 1;
                }
                Command::Dispatch { .. } => {
                    // Untimed: one pass for a run of dispatches. Timed: a pass per dispatch.
                    let run_end = if self.timed {
                        i + 1
                    } else {
                        cmds[i..].iter().position(|c| matches!(c, Command::Copy { .. })).map_or(cmds.len(), |p| i + p)
                    };
                    let timestamp_writes = self.timed.then(|| {
                        let q = labels.len() as u32 * 2;
                        wgpu::ComputePassTimestampWrites {
                            query_set: &query_sets[(q / QUERIES_PER_SET) as usize],
                            beginning_of_pass_write_index: Some(q % QUERIES_PER_SET),
                            end_of_pass_write_index: Some(q % QUERIES_PER_SET + 1),
                        }
                    });
                    let mut pass =
                        enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("flint"), timestamp_writes });
                    for cmd in &cmds[i..run_end] {
                        if let Command::Dispatch { kernel, groups, label, .. } = cmd {
                            pass.set_pipeline(&kernel.pipeline);
                            pass.set_bind_group(0, groups_iter.next(), &[]);
                            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                            labels.push(label.clone());
                        }
                    }
                    i = run_end;
                }
            }
        }

        let timing = if self.timed && n > 0 {
            let len = 2 * n as u64 * 8;
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
            enc.copy_buffer_to_buffer(resolve.buffer(), 0, read.buffer(), 0, len);
            Some((read, len, labels))
        } else {
            None
        };
        dev.queue().submit([enc.finish()]);
        Ok(Submission { dev: dev.clone(), timing, _keep_alive: self.commands, _uniform: uniform })
    }
}
