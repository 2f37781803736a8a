//! Embedding gather launcher (`shaders/embed.wgsl`).

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::embed::EmbedParams;

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    tokens: u32,
    vocab: u32,
    dim: u32,
    scale: f32,
}

fn key(dtype: DType) -> flint_gpu::PipelineKey {
    typed_key("embed.wgsl", "main", WG, &[("T", dtype)])
}

/// Every embedding variant.
pub fn variants() -> Vec<Variant> {
    [DType::F32, DType::F16]
        .map(|dt| Variant { name: format!("embed {dt}"), key: key(dt), needs: needs_for(&[dt], false) })
        .to_vec()
}

/// Record `out[t] = table[ids[t]] * scale`; `table` is `[vocab, dim]`, `ids` u32.
pub fn embed(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &Tensor,
    ids: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("embed", "table", table, p.vocab * p.dim, FLOATS)?;
    let dt = table.dtype();
    check_tensor("embed", "ids", ids, p.tokens, &[DType::U32])?;
    check_tensor("embed", "out", out, p.tokens * p.dim, &[dt])?;
    require(dev, needs_for(&[dt], false), "embed")?;
    let kernel = dev.kernel(registry(), &key(dt))?;
    let uniform = Uniform { tokens: u32_of(p.tokens), vocab: u32_of(p.vocab), dim: u32_of(p.dim), scale: p.scale };
    let work = u32_of(p.tokens * p.dim);
    rec.dispatch(
        &format!("embed {}x{}", p.tokens, p.dim),
        &kernel,
        &uniform,
        &[table, ids, out],
        dev.grid(work.div_ceil(WG)),
    )
}
