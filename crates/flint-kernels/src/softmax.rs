//! Row softmax launcher (`shaders/softmax.wgsl`).

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::softmax::SoftmaxParams;

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    rows: u32,
    dim: u32,
    scale: f32,
    pad: u32,
}

fn key(dtype: DType) -> flint_gpu::PipelineKey {
    typed_key("softmax.wgsl", "main", WG, &[("T", dtype)])
}

/// Every softmax variant.
pub fn variants() -> Vec<Variant> {
    [DType::F32, DType::F16]
        .map(|dt| Variant { name: format!("softmax {dt}"), key: key(dt), needs: needs_for(&[dt], false) })
        .to_vec()
}

/// Record `out = softmax(scale * x)` over rows.
pub fn softmax(dev: &Device, rec: &mut Recorder, p: &SoftmaxParams, x: &Tensor, out: &Tensor) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("softmax", "x", x, p.rows * p.dim, FLOATS)?;
    let dt = x.dtype();
    check_tensor("softmax", "out", out, p.rows * p.dim, &[dt])?;
    require(dev, needs_for(&[dt], false), "softmax")?;
    let kernel = dev.kernel(registry(), &key(dt))?;
    let uniform = Uniform { rows: u32_of(p.rows), dim: u32_of(p.dim), scale: p.scale, pad: 0 };
    rec.dispatch(&format!("softmax {}x{}", p.rows, p.dim), &kernel, &uniform, &[x, out], dev.grid(u32_of(p.rows)))
}
