//! RMSNorm and LayerNorm launchers (`shaders/norm.wgsl`).

use flint_gpu::{DType, Device, GpuError, Recorder, Result, Tensor};
use flint_ref::norm::{NormKind, NormParams};

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    rows: u32,
    dim: u32,
    eps: f32,
    pad: u32,
}

fn key(kind: NormKind, dtype: DType) -> flint_gpu::PipelineKey {
    let code = match kind {
        NormKind::Rms => 0,
        NormKind::RmsUnitOffset => 1,
        NormKind::Layer => 2,
    };
    typed_key("norm.wgsl", "main", WG, &[("T", dtype)]).define("KIND", code)
}

/// Every norm variant.
pub fn variants() -> Vec<Variant> {
    [NormKind::Rms, NormKind::RmsUnitOffset, NormKind::Layer]
        .iter()
        .flat_map(|&k| {
            [DType::F32, DType::F16].map(|dt| Variant {
                name: format!("norm/{} {dt}", k.name()),
                key: key(k, dt),
                needs: needs_for(&[dt], false),
            })
        })
        .collect()
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
    let kernel = dev.kernel(registry(), &key(p.kind, dt))?;
    let uniform = Uniform { rows: u32_of(p.rows), dim: u32_of(p.dim), eps: p.eps, pad: 0 };
    let tensors: Vec<&Tensor> = [Some(x), Some(weight), bias, Some(out)].into_iter().flatten().collect();
    rec.dispatch(&format!("{op} {}x{}", p.rows, p.dim), &kernel, &uniform, &tensors, dev.grid(u32_of(p.rows)))
}
