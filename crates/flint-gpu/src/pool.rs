//! A pool of GPU buffers, reused by size class so that activations and readback buffers are not
//! reallocated on every step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Round `bytes` up to its size class: multiples of 256 bytes up to 4 KiB, then eight classes per
/// power of two (at most 12.5% slack).
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let pow = 63 - bytes.leading_zeros() as u64; // floor(log2)
    let step = 1u64 << (pow - 3);
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct PoolInner {
    free: Mutex<HashMap<(u64, u32), Vec<wgpu::Buffer>>>,
    /// Bytes of every buffer the pool has made and not released (in use or free).
    held: std::sync::atomic::AtomicU64,
}

/// A buffer that returns to its pool when the last reference to it is dropped.
pub struct Allocation {
    buffer: wgpu::Buffer,
    pool: Weak<PoolInner>,
}

impl Allocation {
    /// A buffer the host made: used as is, never returned to a pool.
    pub(crate) fn host(buffer: wgpu::Buffer) -> Allocation {
        Allocation { buffer, pool: Weak::new() }
    }

    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl std::fmt::Debug for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation").field("size", &self.buffer.size()).finish()
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let key = (self.buffer.size(), self.buffer.usage().bits());
            if let Ok(mut free) = pool.free.lock() {
                free.entry(key).or_default().push(self.buffer.clone());
            }
        }
    }
}

/// Buffers by (size class, usage).
#[derive(Default, Clone)]
pub(crate) struct BufferPool {
    inner: Arc<PoolInner>,
}

impl BufferPool {
    /// A buffer of at least `bytes` with exactly `usage`, reused when one is free.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        usage: wgpu::BufferUsages,
        label: &str,
    ) -> Arc<Allocation> {
        let size = size_class(bytes);
        let reused =
            self.inner.free.lock().ok().and_then(|mut free| free.get_mut(&(size, usage.bits())).and_then(Vec::pop));
        let buffer = reused.unwrap_or_else(|| {
            self.inner.held.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
        });
        Arc::new(Allocation { buffer, pool: Arc::downgrade(&self.inner) })
    }

    /// Drop every free buffer.
    pub(crate) fn trim(&self) {
        if let Ok(mut free) = self.inner.free.lock() {
            self.inner.held.fetch_sub(bytes_of(&free), std::sync::atomic::Ordering::Relaxed);
            free.clear();
        }
    }

    /// Bytes of every buffer the pool has made and not released: what its tensors take on the
    /// GPU, in use or free. It grows to a workload's peak and falls only on [`BufferPool::trim`].
    pub(crate) fn held_bytes(&self) -> u64 {
        self.inner.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held by free buffers.
    pub(crate) fn free_bytes(&self) -> u64 {
        self.inner.free.lock().map(|free| bytes_of(&free)).unwrap_or(0)
    }
}

/// Bytes of the buffers in a free list.
fn bytes_of(free: &HashMap<(u64, u32), Vec<wgpu::Buffer>>) -> u64 {
    free.iter().map(|((size, _), v)| size * v.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_bound_slack() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        for bytes in [4097u64, 5000, 65_537, 1 << 20, (1 << 27) + 3, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
            assert_eq!(c % 4, 0);
        }
    }
}
