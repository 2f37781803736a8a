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

fn key(dtype: DType, slots: bool) -> flint_gpu::PipelineKey {
    typed_key("embed.wgsl", "main", WG, &[("T", dtype)]).flag("SLOTS", slots)
}

/// Every embedding variant.
pub fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::F16] {
        for slots in [false, true] {
            v.push(Variant {
                name: format!("embed {dt}{}", if slots { " slots" } else { "" }),
                key: key(dt, slots),
                needs: needs_for(&[dt], false),
            });
        }
    }
    v
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
    check_tensor("embed", "ids", ids, p.tokens, &[DType::U32])?;
    record(dev, rec, p, table, ids, None, out)
}

/// Record `out[t] = table[ids[slots[t]]] * scale`: the ids stay where a sampler wrote them
/// (`ids` u32, any length; `slots` u32 `[tokens]`, each below it).
pub fn embed_slots(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &Tensor,
    ids: &Tensor,
    slots: &Tensor,
    out: &Tensor,
) -> Result<()> {
    check_tensor("embed", "slots", slots, p.tokens, &[DType::U32])?;
    check_tensor("embed", "ids", ids, ids.numel(), &[DType::U32])?;
    record(dev, rec, p, table, ids, Some(slots), out)
}

fn record(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &Tensor,
    ids: &Tensor,
    slots: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("embed", "table", table, p.vocab * p.dim, FLOATS)?;
    let dt = table.dtype();
    check_tensor("embed", "out", out, p.tokens * p.dim, &[dt])?;
    require(dev, needs_for(&[dt], false), "embed")?;
    let kernel = dev.kernel(registry(), &key(dt, slots.is_some()))?;
    let uniform = Uniform { tokens: u32_of(p.tokens), vocab: u32_of(p.vocab), dim: u32_of(p.dim), scale: p.scale };
    let work = u32_of(p.tokens * p.dim);
    rec.dispatch_at(
        &format!("embed {}x{}", p.tokens, p.dim),
        &kernel,
        &uniform,
        &[(1, table), (2, ids), (3, out)].into_iter().chain(slots.map(|s| (4, s))).collect::<Vec<_>>(),
        dev.grid(work.div_ceil(WG)),
    )
}
