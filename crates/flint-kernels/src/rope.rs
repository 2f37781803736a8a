//! RoPE launcher (`shaders/rope.wgsl`).

use flint_gpu::{DType, Device, GpuError, Recorder, Result, Tensor};
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
    row: u32,
    pad: u32,
}

fn key(layout: RopeLayout, dtype: DType, angles: bool) -> flint_gpu::PipelineKey {
    typed_key("rope.wgsl", "main", WG, &[("T", dtype)])
        .flag("INTERLEAVED", layout == RopeLayout::Interleaved)
        .flag("ANGLES", angles)
}

/// Every rope variant.
pub fn variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for angles in [false, true] {
        for l in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
            for dt in [DType::F32, DType::F16] {
                let table = if angles { " angles" } else { "" };
                v.push(Variant {
                    name: format!("rope/{}{table} {dt}", l.name()),
                    key: key(l, dt, angles),
                    needs: needs_for(&[dt], false),
                });
            }
        }
    }
    v
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
    check_tensor("rope", "positions", positions, p.tokens, &[DType::U32])?;
    record(dev, rec, p, p.heads * p.head_dim, x, positions, out, false)
}

/// Record RoPE of `x` `[tokens, heads, head_dim]` into `out` with each token's angles given:
/// `angles` f32 `[tokens, rot_dim / 2]` ([`flint_ref::rope::rope_angles`]; `theta` and
/// `freq_scale` are not used). The 2D rotary of vision towers and M-RoPE make such tables.
pub fn rope_angles(
    dev: &Device,
    rec: &mut Recorder,
    p: &RopeParams,
    x: &Tensor,
    angles: &Tensor,
    out: &Tensor,
) -> Result<()> {
    rope_angles_rows(dev, rec, p, p.heads * p.head_dim, x, angles, out)
}

/// [`rope_angles`] over heads that lead rows of `row` elements (`x` and `out` `[tokens, row]`;
/// [`flint_ref::rope::rope_angles_rows`]): Q and K in a fused QKV row. The elements of `out`
/// past the heads are not written.
pub fn rope_angles_rows(
    dev: &Device,
    rec: &mut Recorder,
    p: &RopeParams,
    row: usize,
    x: &Tensor,
    angles: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    if row < p.heads * p.head_dim {
        return Err(GpuError::Shape {
            what: "rope".into(),
            message: format!("rows of {row} cannot hold {} heads of {}", p.heads, p.head_dim),
        });
    }
    check_tensor("rope", "angles", angles, p.tokens * (p.rot_dim / 2), &[DType::F32])?;
    record(dev, rec, p, row, x, angles, out, true)
}

#[allow(clippy::too_many_arguments)]
fn record(
    dev: &Device,
    rec: &mut Recorder,
    p: &RopeParams,
    row: usize,
    x: &Tensor,
    table: &Tensor,
    out: &Tensor,
    angles: bool,
) -> Result<()> {
    check_tensor("rope", "x", x, p.tokens * row, FLOATS)?;
    let dt = x.dtype();
    check_tensor("rope", "out", out, p.tokens * row, &[dt])?;
    require(dev, needs_for(&[dt], false), "rope")?;
    let kernel = dev.kernel(registry(), &key(p.layout, dt, angles))?;
    let uniform = Uniform {
        tokens: u32_of(p.tokens),
        heads: u32_of(p.heads),
        head_dim: u32_of(p.head_dim),
        rot_dim: u32_of(p.rot_dim),
        log2_theta: p.theta.log2(),
        freq_scale: p.freq_scale,
        row: u32_of(row),
        pad: 0,
    };
    let work = u32_of(p.tokens * p.heads * (p.head_dim - p.rot_dim / 2));
    rec.dispatch(
        &format!("rope {}x{}x{}", p.tokens, p.heads, p.head_dim),
        &kernel,
        &uniform,
        &[x, table, out],
        dev.grid(work.div_ceil(WG)),
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QkvUniform {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    d: u32,
    log2_theta: f32,
    freq_scale: f32,
    page_size: u32,
    max_pages: u32,
    eps: f32,
    pad: [u32; 3],
}

fn qkv_key(layout: RopeLayout, kv: DType, qk_norm: bool) -> flint_gpu::PipelineKey {
    typed_key("rope.wgsl", "rope_qkv", 64, &[("TKV", kv)])
        .flag("QKV", true)
        .flag("INTERLEAVED", layout == RopeLayout::Interleaved)
        .flag("QKNORM", qk_norm)
}

/// The fused QKV-step variants.
pub fn qkv_variants() -> Vec<Variant> {
    let mut v = Vec::new();
    for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
        for kv in [DType::F32, DType::F16] {
            for norm in [false, true] {
                v.push(Variant {
                    name: format!("rope/qkv {} {kv}{}", layout.name(), if norm { " qknorm" } else { "" }),
                    key: qkv_key(layout, kv, norm),
                    needs: needs_for(&[kv], false),
                });
            }
        }
    }
    v
}

/// Record the step between the QKV projection and attention: `qkv` (f32 `[tokens, row]`, row =
/// q heads, k heads, v heads) gets its Q and K heads normalised (when `norms`) and rotated; Q
/// goes to `q_out` `[tokens, heads, d]`, K and V into `cache` at row `dest[t].0` of `table`,
/// position `dest[t].1`.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    dev: &Device,
    rec: &mut Recorder,
    p: &flint_ref::rope::RopeQkvParams,
    qkv: &Tensor,
    positions: &Tensor,
    dest: &[(usize, usize)],
    cache: &crate::attention::KvCache,
    table: &crate::attention::PageTable,
    norms: Option<(&Tensor, &Tensor)>,
    q_out: &Tensor,
) -> Result<()> {
    if dest.len() != p.tokens {
        return Err(GpuError::Shape {
            what: "rope_qkv".into(),
            message: format!("{p:?} with {} destinations", dest.len()),
        });
    }
    for (t, &(s, pos)) in dest.iter().enumerate() {
        if s >= table.rows() || pos >= table.pages_of(s) * cache.page_size {
            return Err(GpuError::Shape {
                what: "rope_qkv".into(),
                message: format!(
                    "token {t} goes to sequence {s} position {pos}, outside the pages its table row lists"
                ),
            });
        }
    }
    let flat: Vec<u32> = dest.iter().flat_map(|&(s, pos)| [u32_of(s), u32_of(pos)]).collect();
    let dest_t = dev.upload_u32("rope_qkv destinations", &flat, &[p.tokens, 2])?;
    rope_qkv_planned(dev, rec, p, qkv, positions, &dest_t, cache, table, norms, q_out)
}

/// [`rope_qkv`] with the destinations given as a tensor (u32 `[tokens, 2]`: table row,
/// position), which a decode plan rewrites before every replay; the caller keeps them within
/// the pages the table lists.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv_planned(
    dev: &Device,
    rec: &mut Recorder,
    p: &flint_ref::rope::RopeQkvParams,
    qkv: &Tensor,
    positions: &Tensor,
    dest_t: &Tensor,
    cache: &crate::attention::KvCache,
    table: &crate::attention::PageTable,
    norms: Option<(&Tensor, &Tensor)>,
    q_out: &Tensor,
) -> Result<()> {
    let d = p.head_dim;
    if p.tokens == 0 || p.heads == 0 || p.kv_heads == 0 || d == 0 || !d.is_multiple_of(2) {
        return Err(GpuError::Shape { what: "rope_qkv".into(), message: format!("{p:?}") });
    }
    let f32s = &[DType::F32];
    check_tensor("rope_qkv", "qkv", qkv, p.tokens * p.row(), f32s)?;
    check_tensor("rope_qkv", "positions", positions, p.tokens, &[DType::U32])?;
    check_tensor("rope_qkv", "q out", q_out, p.tokens * p.heads * d, f32s)?;
    let pool = cache.num_pages * cache.page_size * p.kv_heads * d;
    check_tensor("rope_qkv", "k pool", &cache.k, pool, FLOATS)?;
    check_tensor("rope_qkv", "v pool", &cache.v, pool, &[cache.k.dtype()])?;
    check_tensor("rope_qkv", "destinations", dest_t, p.tokens * 2, &[DType::U32])?;
    if p.qk_norm_eps.is_some() != norms.is_some() {
        return Err(GpuError::Shape {
            what: "rope_qkv".into(),
            message: "QK norm weights and qk_norm_eps go together".into(),
        });
    }
    if let Some((qn, kn)) = norms {
        check_tensor("rope_qkv", "q norm", qn, d, f32s)?;
        check_tensor("rope_qkv", "k norm", kn, d, f32s)?;
    }
    require(dev, needs_for(&[cache.k.dtype()], false), "rope_qkv")?;
    let kernel = dev.kernel(registry(), &qkv_key(p.layout, cache.k.dtype(), norms.is_some()))?;
    let uniform = QkvUniform {
        tokens: u32_of(p.tokens),
        heads: u32_of(p.heads),
        kv_heads: u32_of(p.kv_heads),
        d: u32_of(d),
        log2_theta: p.theta.log2(),
        freq_scale: p.freq_scale,
        page_size: u32_of(cache.page_size),
        max_pages: u32_of(table.max_pages()),
        eps: p.qk_norm_eps.unwrap_or(0.0),
        pad: [0; 3],
    };
    let mut tensors = vec![qkv, positions, dest_t, table.tensor(), q_out, &cache.k, &cache.v];
    if let Some((qn, kn)) = norms {
        tensors.push(qn);
        tensors.push(kn);
    }
    let work = u32_of(p.tokens * (p.heads + 2 * p.kv_heads));
    rec.dispatch(
        &format!("rope_qkv {}x{}", p.tokens, p.heads),
        &kernel,
        &uniform,
        &tensors,
        dev.grid(work.div_ceil(64)),
    )
}
