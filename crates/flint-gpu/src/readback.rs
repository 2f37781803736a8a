//! A ring of staging buffers for small results read back without stalling: each submission
//! copies its result into the next free slot, the slot is mapped asynchronously, and the host
//! collects it when the GPU has finished, while it goes on submitting. The host waits only when
//! every slot is in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::{Device, GpuError, Result, Tensor};

/// Map state of a slot: waiting for its copy to run, mapped, or failed.
const PENDING: u8 = 0;
const MAPPED: u8 = 1;
const FAILED: u8 = 2;

/// How long [`ReadbackRing::take`] waits, after its submission has finished, for the map
/// callback that another thread's poll may be about to run.
const MAP_CALLBACK_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

struct Slot {
    buffer: wgpu::Buffer,
    /// Set by the map callback.
    state: Arc<AtomicU8>,
}

/// One result on its way back: which slot holds it and which submission wrote it.
struct InFlight {
    slot: usize,
    len: u64,
    submission: wgpu::SubmissionIndex,
    tag: u64,
    /// Resolves when the slot's map callback has run (how the browser, which cannot wait for
    /// a submission, learns that the result is there).
    #[cfg(target_arch = "wasm32")]
    mapped: crate::tensor::oneshot::Receiver<()>,
}

/// A ring of `depth` MAP_READ buffers of `bytes` each. Results come back in submission order.
pub struct ReadbackRing {
    dev: Device,
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: VecDeque<InFlight>,
    bytes: u64,
}

impl std::fmt::Debug for ReadbackRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadbackRing")
            .field("depth", &self.slots.len())
            .field("bytes", &self.bytes)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl ReadbackRing {
    /// A ring of `depth` slots of `bytes` each (both at least 1).
    pub fn new(dev: &Device, depth: usize, bytes: u64) -> Result<ReadbackRing> {
        if depth == 0 || bytes == 0 {
            return Err(GpuError::Shape {
                what: "readback ring".into(),
                message: format!("{depth} slots of {bytes} bytes"),
            });
        }
        let bytes = bytes.div_ceil(4) * 4;
        let _serial = dev.serial();
        let slots = (0..depth)
            .map(|_| Slot {
                buffer: dev.wgpu().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("flint readback ring"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(AtomicU8::new(PENDING)),
            })
            .collect();
        Ok(ReadbackRing {
            dev: dev.clone(),
            slots,
            free: (0..depth).rev().collect(),
            in_flight: VecDeque::new(),
            bytes,
        })
    }

    /// Slots in the ring.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Results submitted and not yet taken.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a slot is free for [`ReadbackRing::submit`].
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Submit work that ends with a copy of `src` into a free slot: `record` encodes the work
    /// (or nothing) into the encoder and returns what it submitted, the copy is added and the
    /// slot mapped asynchronously. `tag` comes back with the bytes. Errors when no slot is free
    /// (take a result first) or `src` is larger than a slot.
    pub fn submit(&mut self, src: &Tensor, tag: u64, record: impl FnOnce(&mut wgpu::CommandEncoder)) -> Result<()> {
        let len = src.binding_len();
        if len > self.bytes {
            return Err(GpuError::Shape {
                what: "readback ring".into(),
                message: format!("{len} bytes into slots of {}", self.bytes),
            });
        }
        let Some(slot) = self.free.pop() else {
            return Err(GpuError::Readback { what: "readback ring".into(), message: "every slot is in flight".into() });
        };
        let dev = self.dev.clone();
        let _serial = dev.serial();
        let buffer = &self.slots[slot].buffer;
        let submitted = dev.scoped(
            || "submitting work with a readback".to_string(),
            || {
                let mut enc =
                    dev.wgpu().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint step") });
                record(&mut enc);
                enc.copy_buffer_to_buffer(src.buffer(), src.offset(), buffer, 0, len);
                dev.queue().submit([enc.finish()])
            },
        );
        let submission = match submitted {
            Ok(s) => s,
            Err(e) => {
                self.free.push(slot);
                return Err(e);
            }
        };
        let state = self.slots[slot].state.clone();
        state.store(PENDING, Ordering::Release);
        #[cfg(target_arch = "wasm32")]
        let (tx, mapped) = crate::tensor::oneshot::channel();
        buffer.slice(..len).map_async(wgpu::MapMode::Read, move |r| {
            state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
            #[cfg(target_arch = "wasm32")]
            tx.send(());
        });
        self.in_flight.push_back(InFlight {
            slot,
            len,
            submission,
            tag,
            #[cfg(target_arch = "wasm32")]
            mapped,
        });
        Ok(())
    }

    /// The oldest result if the GPU has finished it, without waiting.
    pub fn try_take(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.in_flight.is_empty() {
            return Ok(None);
        }
        {
            let _serial = self.dev.serial();
            self.dev
                .wgpu()
                .poll(wgpu::PollType::Poll)
                .map_err(|e| GpuError::Wgpu { during: "polling for a readback".into(), message: e.to_string() })?;
        }
        self.take_if_mapped()
    }

    /// The oldest result, waiting for the GPU to finish it (None when nothing is in flight).
    /// Blocks the thread; in the browser it returns an error: use [`ReadbackRing::take_async`].
    pub fn take(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        #[cfg(target_arch = "wasm32")]
        if !self.in_flight.is_empty() {
            return Err(crate::tensor::blocking_in_browser("readback ring"));
        }
        let Some(front) = self.in_flight.front() else {
            return Ok(None);
        };
        let submission = front.submission.clone();
        {
            let _serial = self.dev.serial();
            self.dev
                .wgpu()
                .poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None })
                .map_err(|e| GpuError::Wgpu { during: "waiting for a readback".into(), message: e.to_string() })?;
        }
        // The submission has finished, so the map callback is due; but when other threads use
        // the same device, one of their polls or submits may have collected the callback and not
        // yet run it. Give it a bounded time to land.
        let deadline = std::time::Instant::now() + MAP_CALLBACK_GRACE;
        loop {
            if let Some(r) = self.take_if_mapped()? {
                return Ok(Some(r));
            }
            if std::time::Instant::now() >= deadline {
                return Err(GpuError::Readback {
                    what: "readback ring".into(),
                    message: format!(
                        "the submission finished but its buffer was not mapped within {:?}",
                        MAP_CALLBACK_GRACE
                    ),
                });
            }
            std::thread::yield_now();
            let _serial = self.dev.serial();
            self.dev
                .wgpu()
                .poll(wgpu::PollType::Poll)
                .map_err(|e| GpuError::Wgpu { during: "polling for a readback".into(), message: e.to_string() })?;
        }
    }

    /// [`ReadbackRing::take`] without blocking: in the browser the oldest slot's map callback
    /// wakes the awaiting task (and an error caught since the submission is returned); natively
    /// it is `take`, which polls the device.
    pub async fn take_async(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.take()
        }
        #[cfg(target_arch = "wasm32")]
        {
            let Some(front) = self.in_flight.front_mut() else {
                return Ok(None);
            };
            (&mut front.mapped).await;
            let got = self.take_if_mapped()?;
            if let Some(e) = self.dev.take_deferred_error() {
                return Err(e);
            }
            match got {
                Some(r) => Ok(Some(r)),
                None => {
                    // The callback was dropped unrun (the device is gone): give the slot up so
                    // that the next call does not wait on it again.
                    if let Some(f) = self.in_flight.pop_front() {
                        self.free.push(f.slot);
                    }
                    Err(GpuError::Readback {
                        what: "readback ring".into(),
                        message: "the map request ended without mapping its buffer".into(),
                    })
                }
            }
        }
    }

    fn take_if_mapped(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(front) = self.in_flight.front() else {
            return Ok(None);
        };
        let slot = &self.slots[front.slot];
        match slot.state.load(Ordering::Acquire) {
            PENDING => return Ok(None),
            FAILED => {
                let f = self.in_flight.pop_front().expect("front exists");
                self.free.push(f.slot);
                return Err(GpuError::Readback { what: "readback ring".into(), message: "mapping failed".into() });
            }
            _ => {}
        }
        let f = self.in_flight.pop_front().expect("front exists");
        let _serial = self.dev.serial();
        let bytes = {
            let view = slot
                .buffer
                .slice(..f.len)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback { what: "readback ring".into(), message: e.to_string() })?;
            view.to_vec()
        };
        slot.buffer.unmap();
        slot.state.store(PENDING, Ordering::Release);
        self.free.push(f.slot);
        Ok(Some((f.tag, bytes)))
    }

    /// Wait for and drop every result in flight (after an error, or to reuse the ring).
    pub fn drain(&mut self) -> Result<()> {
        while self.take()?.is_some() {}
        Ok(())
    }

    /// [`ReadbackRing::drain`] without blocking.
    pub async fn drain_async(&mut self) -> Result<()> {
        while self.take_async().await?.is_some() {}
        Ok(())
    }
}
