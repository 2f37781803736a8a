//! Elementwise launchers (`shaders/elementwise.wgsl`).

use flint_gpu::{DType, Device, GpuError, Recorder, Result, Tensor};
use flint_ref::elementwise::{EltOp, EltParams};

use crate::{FLOATS, Variant, check_tensor, needs_for, param_err, registry, require, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    n: u32,
    b_len: u32,
    scale: f32,
    pad: u32,
}

fn op_code(op: EltOp) -> u32 {
    match op {
        EltOp::Add => 0,
        EltOp::Mul => 1,
        EltOp::Scale => 2,
        EltOp::Silu => 3,
        EltOp::GeluErf => 4,
        EltOp::GeluTanh => 5,
        EltOp::SwiGlu => 6,
        EltOp::ResidualAdd => 7,
        EltOp::GeGlu => 8,
    }
}

fn key(op: EltOp, dtype: DType) -> flint_gpu::PipelineKey {
    typed_key("elementwise.wgsl", "main", WG, &[("T", dtype)]).define("OP", op_code(op))
}

/// Every elementwise variant.
pub fn variants() -> Vec<Variant> {
    let mut v: Vec<Variant> = EltOp::ALL
        .iter()
        .flat_map(|&op| {
            [DType::F32, DType::F16].map(|dt| Variant {
                name: format!("elementwise/{} {dt}", op.name()),
                key: key(op, dt),
                needs: needs_for(&[dt], false),
            })
        })
        .collect();
    for op in [EltOp::SwiGlu, EltOp::GeGlu] {
        v.push(Variant {
            name: format!("elementwise/{} pair interleaved", op.name()),
            key: pair_key(op).flag("INTERLEAVED", true),
            needs: needs_for(&[], false),
        });
        v.push(Variant {
            name: format!("elementwise/{} pair", op.name()),
            key: pair_key(op),
            needs: needs_for(&[], false),
        });
    }
    v
}

fn pair_key(op: EltOp) -> flint_gpu::PipelineKey {
    key(op, DType::F32).flag("PAIR", true)
}

/// Record a gated unit over paired rows (f32): `x` `[rows, 2f]` holds each row's gate then up
/// values; `out` `[rows, f]` gets `act(gate) * up` (`op` is SwiGlu or GeGlu).
pub fn glu_pair(
    dev: &Device,
    rec: &mut Recorder,
    op: EltOp,
    rows: usize,
    f: usize,
    x: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record_glu(dev, rec, op, rows, f, x, out, false)
}

/// [`glu_pair`] over rows whose gate and up values alternate (`[g0, u0, g1, u1, ...]`), as a
/// weight uploaded for a GLU epilogue writes them.
pub fn glu_interleaved(
    dev: &Device,
    rec: &mut Recorder,
    op: EltOp,
    rows: usize,
    f: usize,
    x: &Tensor,
    out: &Tensor,
) -> Result<()> {
    record_glu(dev, rec, op, rows, f, x, out, true)
}

#[allow(clippy::too_many_arguments)]
fn record_glu(
    dev: &Device,
    rec: &mut Recorder,
    op: EltOp,
    rows: usize,
    f: usize,
    x: &Tensor,
    out: &Tensor,
    interleaved: bool,
) -> Result<()> {
    if !matches!(op, EltOp::SwiGlu | EltOp::GeGlu) || rows == 0 || f == 0 {
        return Err(GpuError::Shape { what: "glu_pair".into(), message: format!("{} over {rows}x{f}", op.name()) });
    }
    check_tensor("glu_pair", "x", x, rows * 2 * f, &[DType::F32])?;
    check_tensor("glu_pair", "out", out, rows * f, &[DType::F32])?;
    let kernel = dev.kernel(registry(), &pair_key(op).flag("INTERLEAVED", interleaved))?;
    let n = rows * f;
    let uniform = Uniform { n: u32_of(n), b_len: u32_of(f), scale: 1.0, pad: 0 };
    rec.dispatch(
        &format!("{} pair {rows}x{f}", op.name()),
        &kernel,
        &uniform,
        &[x, out],
        dev.grid(u32_of(n).div_ceil(WG)),
    )
}

/// Record `out = op(a[, b])`. [`EltOp::ResidualAdd`] updates in place: use [`residual_add`].
pub fn elementwise(
    dev: &Device,
    rec: &mut Recorder,
    p: &EltParams,
    a: &Tensor,
    b: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    if p.op == EltOp::ResidualAdd {
        return Err(GpuError::Shape {
            what: "elementwise".into(),
            message: "residual_add works in place; call residual_add".into(),
        });
    }
    launch(dev, rec, p, a, b, Some(out))
}

/// Record `x += b` in place (`b` broadcast over `x` when `p.b_len` divides `p.n`).
pub fn residual_add(dev: &Device, rec: &mut Recorder, p: &EltParams, x: &Tensor, b: &Tensor) -> Result<()> {
    if p.op != EltOp::ResidualAdd {
        return Err(GpuError::Shape {
            what: "residual_add".into(),
            message: format!("params are for {}", p.op.name()),
        });
    }
    launch(dev, rec, p, x, Some(b), None)
}

fn launch(
    dev: &Device,
    rec: &mut Recorder,
    p: &EltParams,
    a: &Tensor,
    b: Option<&Tensor>,
    out: Option<&Tensor>,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    let op = p.op.name();
    check_tensor(op, "a", a, p.n, FLOATS)?;
    let dt = a.dtype();
    if let Some(out) = out {
        check_tensor(op, "out", out, p.n, &[dt])?;
    }
    match (p.op.is_binary(), b) {
        (true, Some(b)) => check_tensor(op, "b", b, p.b_len, &[dt])?,
        (false, None) => {}
        (true, None) => return Err(GpuError::Shape { what: op.into(), message: "needs a second operand".into() }),
        (false, Some(_)) => return Err(GpuError::Shape { what: op.into(), message: "takes no second operand".into() }),
    }
    require(dev, needs_for(&[dt], false), op)?;
    let kernel = dev.kernel(registry(), &key(p.op, dt))?;
    let uniform = Uniform { n: u32_of(p.n), b_len: u32_of(p.b_len.max(1)), scale: p.scale, pad: 0 };
    let tensors: Vec<&Tensor> = [Some(a), b, out].into_iter().flatten().collect();
    rec.dispatch(&format!("{op} {}", p.n), &kernel, &uniform, &tensors, dev.grid(u32_of(p.n).div_ceil(WG)))
}
