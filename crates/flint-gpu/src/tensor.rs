//! Tensors: a GPU buffer (or a view into one), a shape and a dtype, with upload and download.

use std::sync::Arc;

use half::f16;

use crate::pool::Allocation;
use crate::{DType, Device, GpuError, Result};

/// Usage flags of every tensor buffer.
/// The usage of flint's own tensor buffers; a host buffer wrapped with [`Device::wrap_buffer`]
/// should have it too (kernels bind some inputs as uniforms, readbacks copy from it).
pub const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A dense, row-major tensor on the GPU. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    alloc: Arc<Allocation>,
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl Tensor {
    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the elements.
    pub fn byte_len(&self) -> u64 {
        self.dtype.bytes(self.numel()) as u64
    }

    /// Bytes the tensor's binding covers: its length rounded up to 4, as storage bindings need.
    pub fn binding_len(&self) -> u64 {
        self.byte_len().max(4).div_ceil(4) * 4
    }

    /// Byte offset of the first element in the buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.alloc.buffer()
    }

    /// The binding of this tensor's bytes.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.alloc.buffer(),
            offset: self.offset,
            size: wgpu::BufferSize::new(self.binding_len()),
        })
    }

    /// The same bytes seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(GpuError::Shape {
                what: "reshape".into(),
                message: format!(
                    "{:?} has {} elements, {:?} has {}",
                    self.shape,
                    self.numel(),
                    shape,
                    shape.iter().product::<usize>()
                ),
            });
        }
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// A view of `shape` and `dtype` starting `byte_offset` bytes into this tensor's bytes. The
    /// absolute offset must meet the adapter's storage offset alignment (checked when bound).
    pub fn view(&self, byte_offset: u64, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let len = dtype.bytes(shape.iter().product()) as u64;
        if byte_offset + len > self.binding_len() {
            return Err(GpuError::Shape {
                what: "tensor view".into(),
                message: format!("{len} bytes at offset {byte_offset} do not fit in {} bytes", self.binding_len()),
            });
        }
        Ok(Tensor { alloc: self.alloc.clone(), offset: self.offset + byte_offset, shape: shape.to_vec(), dtype })
    }

    /// Check that the tensor has `shape` and `dtype`, naming it `what` in the error.
    pub fn expect(&self, what: &str, shape: &[usize], dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(GpuError::Shape {
                what: what.into(),
                message: format!("dtype is {}, expected {dtype}", self.dtype),
            });
        }
        if self.shape != shape {
            return Err(GpuError::Shape {
                what: what.into(),
                message: format!("shape is {:?}, expected {shape:?}", self.shape),
            });
        }
        Ok(())
    }
}

/// Host element types that a tensor can be made from.
fn encode_f32(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::F16 => data.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::U32 => data.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect(),
    }
}

impl Device {
    fn check_size(&self, what: &str, bytes: u64) -> Result<()> {
        let caps = self.caps();
        if bytes > caps.max_storage_binding {
            return Err(GpuError::TooLarge {
                what: what.to_string(),
                bytes,
                limit_name: "max_storage_buffer_binding_size",
                limit: caps.max_storage_binding,
                adapter: caps.short_label(),
            });
        }
        Ok(())
    }

    /// A tensor over a buffer the host program made (its bytes from 0, row-major `shape` of
    /// `dtype`), so flint's kernels read or write the host's data in place. The buffer needs
    /// `STORAGE` usage at least, and should have [`TENSOR_USAGE`] (some kernels bind small
    /// inputs as uniforms; readbacks copy from it); it stays the host's: flint never puts it in
    /// its pool.
    pub fn wrap_buffer(&self, buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let what = buffer_label(&buffer);
        if dtype == DType::F16 {
            self.require_f16(&what)?;
        }
        let shape_err = |message: String| GpuError::Shape { what: what.clone(), message };
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(shape_err(format!("the buffer's usage {:?} lacks STORAGE", buffer.usage())));
        }
        let bytes = checked_bytes(&what, shape, dtype)?;
        if bytes > buffer.size() {
            return Err(shape_err(format!(
                "{shape:?} {dtype:?} needs {bytes} bytes; the buffer has {}",
                buffer.size()
            )));
        }
        self.check_size(&what, bytes)?;
        let alloc = Arc::new(Allocation::host(buffer));
        Ok(Tensor { alloc, offset: 0, shape: shape.to_vec(), dtype })
    }

    /// An uninitialised tensor (its contents are whatever the pooled buffer held).
    pub fn empty(&self, what: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.empty_padded(what, shape, dtype, 0)
    }

    /// Like [`Device::empty`] with `extra` spare bytes after the elements in the same buffer.
    pub(crate) fn empty_padded(&self, what: &str, shape: &[usize], dtype: DType, extra: u64) -> Result<Tensor> {
        if dtype == DType::F16 {
            self.require_f16(what)?;
        }
        let bytes = checked_bytes(what, shape, dtype)?
            .checked_add(extra)
            .ok_or_else(|| too_many(what, shape))?
            .max(4)
            .div_ceil(4)
            * 4;
        self.check_size(what, bytes)?;
        let _serial = self.serial();
        let alloc = self.inner.pool.get(&self.inner.device, bytes, TENSOR_USAGE, what);
        Ok(Tensor { alloc, offset: 0, shape: shape.to_vec(), dtype })
    }

    /// A tensor holding `data` (row-major f32 values), converted to `dtype`.
    pub fn upload_f32(&self, what: &str, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel = checked_numel(what, shape)?;
        if data.len() != numel {
            return Err(GpuError::DataLength { what: what.into(), expected: numel, got: data.len(), dtype });
        }
        self.upload_bytes(what, &encode_f32(data, dtype), shape, dtype)
    }

    /// A u32 tensor holding `data`.
    pub fn upload_u32(&self, what: &str, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        self.upload_bytes(what, bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// A tensor whose bytes are `bytes` (little-endian elements of `dtype`).
    pub fn upload_bytes(&self, what: &str, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel = checked_numel(what, shape)?;
        if bytes.len() as u64 != checked_bytes(what, shape, dtype)? {
            return Err(GpuError::DataLength {
                what: what.into(),
                expected: numel,
                got: bytes.len() / dtype.size(),
                dtype,
            });
        }
        let t = self.empty(what, shape, dtype)?;
        self.write(&t, bytes)?;
        Ok(t)
    }

    /// Overwrite a tensor's bytes (padded to 4 bytes with zeros).
    pub fn write(&self, t: &Tensor, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != t.byte_len() {
            return Err(GpuError::Shape {
                what: "tensor write".into(),
                message: format!("{} bytes for a tensor of {}", bytes.len(), t.byte_len()),
            });
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let _serial = self.serial();
        if bytes.len().is_multiple_of(4) {
            self.queue().write_buffer(t.buffer(), t.offset(), bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue().write_buffer(t.buffer(), t.offset(), &padded);
        }
        Ok(())
    }

    /// Read a tensor's bytes back (blocking).
    pub fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let mut bytes = self.read_range(t.buffer(), t.offset(), t.binding_len(), "tensor")?;
        bytes.truncate(t.byte_len() as usize);
        Ok(bytes)
    }

    /// Read a tensor back as f32 values (f16 and u32 are converted).
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(to_f32(&self.read_bytes(t)?, t.dtype()))
    }

    /// Read a u32 tensor back.
    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t)?))
    }

    /// Read a tensor's bytes back without blocking: the way to read on the browser's WebGPU,
    /// where a blocking read is refused. It also returns an error that reached flint after its
    /// call had returned (see [`Device::take_deferred_error`]).
    pub async fn read_bytes_async(&self, t: &Tensor) -> Result<Vec<u8>> {
        let (staging, index) = self.copy_for_readback(t.buffer(), t.offset(), t.binding_len(), "tensor")?;
        let mut bytes = map_read_async(self, staging.buffer(), t.binding_len(), "tensor", index).await?;
        if let Some(e) = self.take_deferred_error() {
            return Err(e);
        }
        bytes.truncate(t.byte_len() as usize);
        Ok(bytes)
    }

    /// [`Device::read_f32`] without blocking.
    pub async fn read_f32_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(to_f32(&self.read_bytes_async(t).await?, t.dtype()))
    }

    /// [`Device::read_u32`] without blocking.
    pub async fn read_u32_async(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes_async(t).await?))
    }

    /// The first error that reached flint after the call that caused it had returned: an
    /// uncaptured error on a device flint opened, or, in the browser, what an error scope caught
    /// (its promise settles only after the call). Taking it clears it.
    pub fn take_deferred_error(&self) -> Option<GpuError> {
        self.inner.deferred.lock().ok().and_then(|mut e| e.take())
    }

    /// Read `len` bytes of `buffer` from `offset` (both multiples of 4), blocking until done.
    pub fn read_range(&self, buffer: &wgpu::Buffer, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        let (staging, index) = self.copy_for_readback(buffer, offset, len, what)?;
        map_read(self, staging.buffer(), len, what, index)
    }

    /// Copy `len` bytes of `buffer` from `offset` into a pooled staging buffer and submit.
    fn copy_for_readback(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: u64,
        what: &str,
    ) -> Result<(Arc<Allocation>, wgpu::SubmissionIndex)> {
        let _serial = self.serial();
        let staging = self.inner.pool.get(
            &self.inner.device,
            len,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            "flint readback",
        );
        let index = self.scoped(
            || format!("copying {what} for readback"),
            || {
                let mut enc = self
                    .wgpu()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("flint readback") });
                enc.copy_buffer_to_buffer(buffer, offset, staging.buffer(), 0, len);
                self.queue().submit([enc.finish()])
            },
        )?;
        Ok((staging, index))
    }
}

/// Bytes of `dtype` as f32 values (f16 and u32 converted), as [`Device::read_f32`] returns
/// them.
pub fn to_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(bytes),
        DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::U32 => bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
    }
}

/// What errors call a host's buffer.
fn buffer_label(buffer: &wgpu::Buffer) -> String {
    format!("the host's buffer of {} bytes", buffer.size())
}

/// The element count of `shape`, or an error naming `what` when it overflows.
fn checked_numel(what: &str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| too_many(what, shape))
}

/// The bytes of `shape` in `dtype`, or an error naming `what` when the count overflows.
fn checked_bytes(what: &str, shape: &[usize], dtype: DType) -> Result<u64> {
    (checked_numel(what, shape)? as u64).checked_mul(dtype.size() as u64).ok_or_else(|| too_many(what, shape))
}

fn too_many(what: &str, shape: &[usize]) -> GpuError {
    GpuError::Shape { what: what.to_string(), message: format!("shape {shape:?} has more bytes than a u64 counts") }
}

/// Map the first `len` bytes of a MAP_READ buffer, last written by submission `index` (only
/// that is waited for), and copy them out: [`map_read_async`], driven to the end here.
pub(crate) fn map_read(
    dev: &Device,
    buffer: &wgpu::Buffer,
    len: u64,
    what: &str,
    index: wgpu::SubmissionIndex,
) -> Result<Vec<u8>> {
    block_on(what, map_read_async(dev, buffer, len, what, index))
}

/// Run one of flint's awaitable calls to completion on this thread: natively the future is
/// driven by `pollster` (flint's futures poll the device themselves, so nothing else has to).
/// In the browser, where buffers map and queues report only from the page's event loop, which
/// a blocking call never returns to, it returns an error naming `what` and the async call to
/// use instead, without starting `f`.
pub fn block_on<T, E: From<GpuError>>(what: &str, f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, E> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = what;
        pollster::block_on(f)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(f);
        Err(blocking_in_browser(what).into())
    }
}

/// The error of a blocking wait in the browser.
#[cfg(target_arch = "wasm32")]
pub(crate) fn blocking_in_browser(what: &str) -> GpuError {
    GpuError::Readback {
        what: what.to_string(),
        message: "a blocking wait cannot finish in the browser (WebGPU reports from the event loop); use the \
                  async call (such as Device::read_bytes_async or Session::generate_async)"
            .into(),
    }
}

/// [`map_read`] without blocking: the map's callback wakes the awaiting task (natively the
/// device is polled until `index` has run, which fires it).
pub(crate) async fn map_read_async(
    dev: &Device,
    buffer: &wgpu::Buffer,
    len: u64,
    what: &str,
    index: wgpu::SubmissionIndex,
) -> Result<Vec<u8>> {
    let slice = buffer.slice(..len);
    let mapped = {
        let _serial = dev.serial();
        let (tx, rx) = oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        dev.wait_for(index)?;
        #[cfg(target_arch = "wasm32")]
        drop(index);
        rx
    }
    .await;
    let err = |message: String| GpuError::Readback { what: what.to_string(), message };
    mapped.ok_or_else(|| err("the map request was dropped".into()))?.map_err(|e| err(e.to_string()))?;
    let _serial = dev.serial();
    let bytes = slice.get_mapped_range().map_err(|e| err(e.to_string()))?.to_vec();
    buffer.unmap();
    Ok(bytes)
}

/// A one-value channel whose receiver is a future: how a wgpu callback hands its result to an
/// awaiting task without an executor of flint's own.
pub(crate) mod oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    struct Shared<T> {
        value: Option<T>,
        waker: Option<Waker>,
        sender_gone: bool,
    }

    /// The sending half: [`Sender::send`] once, or drop it to end the wait with `None`.
    pub(crate) struct Sender<T>(Arc<Mutex<Shared<T>>>);
    /// The receiving half: resolves to the value sent, or `None` if the sender was dropped.
    pub(crate) struct Receiver<T>(Arc<Mutex<Shared<T>>>);

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Mutex::new(Shared { value: None, waker: None, sender_gone: false }));
        (Sender(shared.clone()), Receiver(shared))
    }

    impl<T> Sender<T> {
        pub(crate) fn send(self, value: T) {
            if let Ok(mut s) = self.0.lock() {
                s.value = Some(value);
            }
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            let waker = self.0.lock().ok().and_then(|mut s| {
                s.sender_gone = true;
                s.waker.take()
            });
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = Option<T>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            let Ok(mut s) = self.0.lock() else { return Poll::Ready(None) };
            if let Some(v) = s.value.take() {
                return Poll::Ready(Some(v));
            }
            if s.sender_gone {
                return Poll::Ready(None);
            }
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sent_value_arrives_and_a_dropped_sender_ends_the_wait() {
            let (tx, rx) = channel();
            tx.send(7u32);
            assert_eq!(pollster::block_on(rx), Some(7));
            let (tx, rx) = channel::<u32>();
            drop(tx);
            assert_eq!(pollster::block_on(rx), None);
        }

        #[test]
        fn a_value_sent_from_another_thread_wakes_the_waiting_task() {
            let (tx, rx) = channel();
            let t = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                tx.send("mapped");
            });
            assert_eq!(pollster::block_on(rx), Some("mapped"));
            t.join().unwrap();
        }
    }
}
