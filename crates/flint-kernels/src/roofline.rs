//! Roofline probes (`shaders/roofline.wgsl`): the peak rates `flint bench` measures kernels
//! against when the user gives none.

use flint_gpu::{DType, Device, GpuError, PipelineKey, Recorder, Result, Tensor};

use crate::{Variant, check_tensor, needs_for, registry, typed_key, u32_of};

const WG: u32 = 64;
/// Invocations of the FMA probe and loop trips of each.
const FMA_THREADS: u32 = 64 * 256;
const FMA_ITERS: u32 = 4096;
/// Invocations of the read probe.
const READ_THREADS: u32 = 64 * 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    n: u32,
    iters: u32,
    pad: [u32; 2],
}

fn fma_key() -> PipelineKey {
    typed_key("roofline.wgsl", "fma_peak", WG, &[]).flag("FMA", true)
}

fn read_key() -> PipelineKey {
    typed_key("roofline.wgsl", "read_peak", WG, &[]).flag("READ", true)
}

fn copy_key() -> PipelineKey {
    typed_key("roofline.wgsl", "copy", WG, &[])
}

/// The roofline variants.
pub fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "roofline/fma".into(), key: fma_key(), needs: needs_for(&[], false) },
        Variant { name: "roofline/copy".into(), key: copy_key(), needs: needs_for(&[], false) },
        Variant { name: "roofline/read".into(), key: read_key(), needs: needs_for(&[], false) },
    ]
}

/// Floating point operations of one [`fma_peak`] launch.
pub fn fma_flops(_dev: &Device) -> f64 {
    // 8 chains x 4 lanes x 2 flops per trip.
    f64::from(FMA_THREADS) * f64::from(FMA_ITERS) * 8.0 * 4.0 * 2.0
}

/// Record the arithmetic-bound probe.
pub fn fma_peak(dev: &Device, rec: &mut Recorder) -> Result<()> {
    let out = dev.empty("roofline fma out", &[1024 * 4], DType::F32)?;
    let kernel = dev.kernel(registry(), &fma_key())?;
    rec.dispatch(
        "roofline fma",
        &kernel,
        &Uniform { n: 1024, iters: FMA_ITERS, pad: [0; 2] },
        &[&out],
        dev.grid(FMA_THREADS / WG),
    )
}

/// Record a copy of `src` into `dst` (f32, same length, a multiple of 4).
pub fn copy(dev: &Device, rec: &mut Recorder, src: &Tensor, dst: &Tensor) -> Result<()> {
    let n = src.numel();
    if !n.is_multiple_of(4) {
        return Err(GpuError::Shape {
            what: "roofline copy".into(),
            message: format!("{n} elements is not a multiple of 4"),
        });
    }
    check_tensor("roofline copy", "src", src, n, &[DType::F32])?;
    check_tensor("roofline copy", "dst", dst, n, &[DType::F32])?;
    let kernel = dev.kernel(registry(), &copy_key())?;
    let vecs = u32_of(n / 4);
    rec.dispatch(
        "roofline copy",
        &kernel,
        &Uniform { n: vecs, iters: 0, pad: [0; 2] },
        &[src, dst],
        dev.grid(vecs.div_ceil(WG)),
    )
}

/// Record the load-only probe: a sum of every vec4 of `src` (u32, a multiple of 4 x 4 x 16384
/// words, i.e. of 1 MiB), one vec4 per invocation into `sums` (u32, 4 x 16384 words).
pub fn read(dev: &Device, rec: &mut Recorder, src: &Tensor, sums: &Tensor) -> Result<()> {
    let n = src.numel();
    let chunk = 16 * READ_THREADS as usize;
    if n == 0 || !n.is_multiple_of(chunk) {
        return Err(GpuError::Shape {
            what: "roofline read".into(),
            message: format!("{n} words is not a positive multiple of {chunk}"),
        });
    }
    check_tensor("roofline read", "src", src, n, &[DType::U32])?;
    check_tensor("roofline read", "sums", sums, 4 * READ_THREADS as usize, &[DType::U32])?;
    let kernel = dev.kernel(registry(), &read_key())?;
    rec.dispatch(
        "roofline read",
        &kernel,
        &Uniform { n: u32_of(n / 4), iters: READ_THREADS, pad: [0; 2] },
        &[src, sums],
        dev.grid(READ_THREADS / WG),
    )
}
