//! Vision-encoder launchers (`shaders/vision.wgsl`): patch extraction for the patch embedding
//! (the conv becomes one matmul), the Idefics3 connector's pixel shuffle and the Gemma 3
//! projector's average pool, one invocation per output element.

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::vision::{PatchParams, ShuffleParams};

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    total: u32,
}

fn key(entry: &str, dtype: DType) -> flint_gpu::PipelineKey {
    typed_key("vision.wgsl", entry, WG, &[("T", dtype)]).flag(
        match entry {
            "patches" => "PATCHES",
            "shuffle" => "SHUFFLE",
            _ => "POOL",
        },
        true,
    )
}

/// Every vision variant.
pub fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for entry in ["patches", "shuffle", "pool"] {
        for dt in [DType::F32, DType::F16] {
            v.push(Variant {
                name: format!("vision/{entry} {dt}"),
                key: key(entry, dt),
                needs: needs_for(&[dt], false),
            });
        }
    }
    v
}

/// Record the patch extraction of `pixels` (NCHW) into `out` `[images * patches, C * P * P]`.
pub fn patches(dev: &Device, rec: &mut Recorder, p: &PatchParams, pixels: &Tensor, out: &Tensor) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("patches", "pixels", pixels, p.images * p.channels * p.height * p.width, FLOATS)?;
    let dt = pixels.dtype();
    let total = p.images * p.patches() * p.row();
    check_tensor("patches", "out", out, total, &[dt])?;
    require(dev, needs_for(&[dt], false), "patches")?;
    let kernel = dev.kernel(registry(), &key("patches", dt))?;
    let uniform = Uniform {
        a: u32_of(p.images),
        b: u32_of(p.channels),
        c: u32_of(p.height),
        d: u32_of(p.width),
        e: u32_of(p.patch),
        f: u32_of(p.width / p.patch),
        g: u32_of(p.row()),
        total: u32_of(total),
    };
    rec.dispatch(
        &format!("patches {}x{}x{}x{} p{}", p.images, p.channels, p.height, p.width, p.patch),
        &kernel,
        &uniform,
        &[pixels, out],
        dev.grid(u32_of(total).div_ceil(WG)),
    )
}

/// Record the pixel shuffle of `x` `[images, side * side, dim]` into `out`
/// `[images, (side / scale)^2, dim * scale^2]`.
pub fn pixel_shuffle(dev: &Device, rec: &mut Recorder, p: &ShuffleParams, x: &Tensor, out: &Tensor) -> Result<()> {
    grid_op(dev, rec, "shuffle", "pixel_shuffle", p, x, out, p.images * p.side * p.side * p.dim)
}

/// Record the average pool of `x` `[images, side * side, dim]` over `scale x scale` squares into
/// `out` `[images, (side / scale)^2, dim]`.
pub fn avg_pool(dev: &Device, rec: &mut Recorder, p: &ShuffleParams, x: &Tensor, out: &Tensor) -> Result<()> {
    grid_op(dev, rec, "pool", "avg_pool", p, x, out, p.images * p.tokens_out() * p.dim)
}

/// Record `entry` (shuffle or pool) over each image's token grid: `total` output elements.
#[allow(clippy::too_many_arguments)]
fn grid_op(
    dev: &Device,
    rec: &mut Recorder,
    entry: &str,
    op: &str,
    p: &ShuffleParams,
    x: &Tensor,
    out: &Tensor,
    total: usize,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor(op, "x", x, p.images * p.side * p.side * p.dim, FLOATS)?;
    let dt = x.dtype();
    check_tensor(op, "out", out, total, &[dt])?;
    require(dev, needs_for(&[dt], false), op)?;
    let kernel = dev.kernel(registry(), &key(entry, dt))?;
    let uniform = Uniform {
        a: u32_of(p.images),
        b: u32_of(p.side),
        c: u32_of(p.dim),
        d: u32_of(p.scale),
        e: 0,
        f: 0,
        g: 0,
        total: u32_of(total),
    };
    rec.dispatch(
        &format!("{op} {}x{}^2x{} s{}", p.images, p.side, p.dim, p.scale),
        &kernel,
        &uniform,
        &[x, out],
        dev.grid(u32_of(total).div_ceil(WG)),
    )
}
