//! RMSNorm and LayerNorm launchers (`shaders/norm.wgsl`).

use flint_gpu::{DType, Device, GpuError, Recorder, Result, Tensor};
use flint_ref::norm::{NormKind, NormParams};

use crate::{
    FLOATS, Variant, check_tensor, fixed_subgroup, needs_for, param_err, registry, require, typed_key, u32_of,
};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    rows: u32,
    dim: u32,
    eps: f32,
    pad: u32,
}

/// Subgroup sizes the one-subgroup variants are built for (lavapipe's 8, NVIDIA's 32).
const SG_SIZES: [u32; 2] = [8, 32];

/// One workgroup per row: of the adapter's fixed subgroup size, reducing with subgroup
/// operations, where there is one (on lavapipe 10x faster than the 256-lane tree, whose barriers
/// are switches between invocations); else 256 lanes reducing through workgroup memory.
fn reduce_with(dev: &Device) -> Option<u32> {
    fixed_subgroup(dev.caps()).filter(|sg| SG_SIZES.contains(sg))
}

fn with_reduce(key: flint_gpu::PipelineKey, sg: Option<u32>) -> flint_gpu::PipelineKey {
    match sg {
        Some(sg) => key.define("WG", sg).flag("SG_REDUCE", true),
        None => key,
    }
}

fn key(kind: NormKind, dtype: DType, sg: Option<u32>) -> flint_gpu::PipelineKey {
    let code = match kind {
        NormKind::Rms => 0,
        NormKind::RmsUnitOffset => 1,
        NormKind::Layer => 2,
    };
    with_reduce(typed_key("norm.wgsl", "main", WG, &[("T", dtype)]).define("KIND", code), sg)
}

/// Every norm variant.
pub fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for k in [NormKind::Rms, NormKind::RmsUnitOffset, NormKind::Layer] {
        for dt in [DType::F32, DType::F16] {
            for sg in std::iter::once(None).chain(SG_SIZES.map(Some)) {
                v.push(Variant {
                    name: format!("norm/{} {dt}{}", k.name(), sg.map_or(String::new(), |s| format!(" sg{s}"))),
                    key: key(k, dt, sg),
                    needs: needs_for(&[dt], sg.is_some()),
                });
            }
        }
    }
    v
}

/// Record a row normalisation of `x` into `out` with `weight` (and `bias` for LayerNorm).
pub fn norm(
    dev: &Device,
    rec: &mut Recorder,
    p: &NormParams,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    let op = p.kind.name();
    check_tensor(op, "x", x, p.rows * p.dim, FLOATS)?;
    let dt = x.dtype();
    check_tensor(op, "weight", weight, p.dim, &[dt])?;
    check_tensor(op, "out", out, p.rows * p.dim, &[dt])?;
    match (p.kind, bias) {
        (NormKind::Layer, Some(b)) => check_tensor(op, "bias", b, p.dim, &[dt])?,
        (NormKind::Layer, None) => {
            return Err(GpuError::Shape { what: op.into(), message: "layernorm needs a bias".into() });
        }
        (_, Some(_)) => return Err(GpuError::Shape { what: op.into(), message: "rmsnorm takes no bias".into() }),
        (_, None) => {}
    }
    require(dev, needs_for(&[dt], false), op)?;
    let kernel = dev.kernel(registry(), &key(p.kind, dt, reduce_with(dev)))?;
    let uniform = Uniform { rows: u32_of(p.rows), dim: u32_of(p.dim), eps: p.eps, pad: 0 };
    let tensors: Vec<&Tensor> = [Some(x), Some(weight), bias, Some(out)].into_iter().flatten().collect();
    rec.dispatch(&format!("{op} {}x{}", p.rows, p.dim), &kernel, &uniform, &tensors, dev.grid(u32_of(p.rows)))
}

fn add_norm_key(add: bool, post: bool, sg: Option<u32>) -> flint_gpu::PipelineKey {
    let key = typed_key("norm.wgsl", "add_norm", WG, &[("T", DType::F32)])
        .flag("ADD_NORM", true)
        .flag("ADD", add)
        .flag("POST", post);
    with_reduce(key, sg)
}

/// The fused residual-step variants.
pub fn add_norm_variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for (add, post) in [(false, false), (true, false), (true, true)] {
        for sg in std::iter::once(None).chain(SG_SIZES.map(Some)) {
            v.push(Variant {
                name: format!(
                    "norm/add_norm{}{}{}",
                    if add { " add" } else { "" },
                    if post { " post" } else { "" },
                    sg.map_or(String::new(), |s| format!(" sg{s}"))
                ),
                key: add_norm_key(add, post, sg),
                needs: needs_for(&[], sg.is_some()),
            });
        }
    }
    v
}

/// Record the residual step between decoder blocks (f32): `x += y` (or `x += rmsnorm(y,
/// post)`), then `out = rmsnorm(x, w)`; `x` is updated in place.
#[allow(clippy::too_many_arguments)]
pub fn add_norm(
    dev: &Device,
    rec: &mut Recorder,
    p: &flint_ref::norm::AddNormParams,
    x: &Tensor,
    y: Option<&Tensor>,
    post: Option<&Tensor>,
    w: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    let n = p.rows * p.dim;
    let f32s = &[DType::F32];
    check_tensor("add_norm", "x", x, n, f32s)?;
    check_tensor("add_norm", "weight", w, p.dim, f32s)?;
    check_tensor("add_norm", "out", out, n, f32s)?;
    let mut tensors = vec![(1, x)];
    match (p.add, y) {
        (true, Some(y)) => {
            check_tensor("add_norm", "y", y, n, f32s)?;
            tensors.push((2, y));
        }
        (false, None) => {}
        _ => {
            return Err(GpuError::Shape {
                what: "add_norm".into(),
                message: "y given without params.add, or missing".into(),
            });
        }
    }
    match (p.post_norm, post) {
        (true, Some(post)) => {
            check_tensor("add_norm", "post weight", post, p.dim, f32s)?;
            tensors.push((3, post));
        }
        (false, None) => {}
        _ => {
            return Err(GpuError::Shape {
                what: "add_norm".into(),
                message: "post weight given without params.post_norm, or missing".into(),
            });
        }
    }
    tensors.push((4, w));
    tensors.push((5, out));
    let kernel = dev.kernel(registry(), &add_norm_key(p.add, p.post_norm, reduce_with(dev)))?;
    let uniform = Uniform { rows: u32_of(p.rows), dim: u32_of(p.dim), eps: p.eps, pad: 0 };
    rec.dispatch_at(&format!("add_norm {}x{}", p.rows, p.dim), &kernel, &uniform, &tensors, dev.grid(u32_of(p.rows)))
}
