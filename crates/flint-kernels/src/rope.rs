//! RoPE launcher (`shaders/rope.wgsl`).

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::rope::{RopeLayout, RopeParams};

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dim: u32,
    log2_theta: f32,
    freq_scale: f32,
    pad: [u32; 2],
}

fn key(layout: RopeLayout, dtype: DType) -> flint_gpu::PipelineKey {
    typed_key("rope.wgsl", "main", WG, &[("T", dtype)]).flag("INTERLEAVED", layout == RopeLayout::Interleaved)
}

/// Every rope variant.
pub fn variants() -> Vec<Variant> {
    [RopeLayout::RotateHalf, RopeLayout::Interleaved]
        .iter()
        .flat_map(|&l| {
            [DType::F32, DType::F16].map(|dt| Variant {
                name: format!("rope/{} {dt}", l.name()),
                key: key(l, dt),
                needs: needs_for(&[dt], false),
            })
        })
        .collect()
}

/// Record RoPE of `x` `[tokens, heads, head_dim]` at `positions` (u32 per token) into `out`.
pub fn rope(
    dev: &Device,
    rec: &mut Recorder,
    p: &RopeParams,
    x: &Tensor,
    positions: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("rope", "x", x, p.numel(), FLOATS)?;
    let dt = x.dtype();
    check_tensor("rope", "positions", positions, p.tokens, &[DType::U32])?;
    check_tensor("rope", "out", out, p.numel(), &[dt])?;
    require(dev, needs_for(&[dt], false), "rope")?;
    let kernel = dev.kernel(registry(), &key(p.layout, dt))?;
    let uniform = Uniform {
        tokens: u32_of(p.tokens),
        heads: u32_of(p.heads),
        head_dim: u32_of(p.head_dim),
        rot_dim: u32_of(p.rot_dim),
        log2_theta: p.theta.log2(),
        freq_scale: p.freq_scale,
        pad: [0; 2],
    };
    let work = u32_of(p.tokens * p.heads * (p.head_dim - p.rot_dim / 2));
    rec.dispatch(
        &format!("rope {}x{}x{}", p.tokens, p.heads, p.head_dim),
        &kernel,
        &uniform,
        &[x, positions, out],
        dev.grid(work.div_ceil(WG)),
    )
}
