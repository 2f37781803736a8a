//! Token sampling on the GPU (`shaders/sample.wgsl`): only the chosen ids (and their
//! log-probabilities) ever leave the device.

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::sample::SampleParams;

use crate::{Variant, check_tensor, needs_for, param_err, registry, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    rows: u32,
    vocab: u32,
    temperature: f32,
    k_eff: u32,
    top_p: f32,
    pad: [u32; 3],
}

fn key() -> flint_gpu::PipelineKey {
    typed_key("sample.wgsl", "sample", WG, &[])
}

/// The sampler's variant.
pub fn variants() -> Vec<Variant> {
    vec![Variant { name: "sample".into(), key: key(), needs: needs_for(&[], false) }]
}

/// Record sampling of `logits` (f32 `[rows, vocab]`) with per-row `(seed, step)` in `rng` (u32
/// `[rows, 2]`) into `out` (f32 `[rows, 2]`: token id, log-probability).
pub fn sample(
    dev: &Device,
    rec: &mut Recorder,
    p: &SampleParams,
    logits: &Tensor,
    rng: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("sample", "logits", logits, p.rows * p.vocab, &[DType::F32])?;
    check_tensor("sample", "rng", rng, p.rows * 2, &[DType::U32])?;
    check_tensor("sample", "out", out, p.rows * 2, &[DType::F32])?;
    let kernel = dev.kernel(registry(), &key())?;
    let uniform = Uniform {
        rows: u32_of(p.rows),
        vocab: u32_of(p.vocab),
        temperature: p.temperature,
        k_eff: u32_of(p.k_eff()),
        top_p: p.top_p,
        pad: [0; 3],
    };
    rec.dispatch(
        &format!("sample {}x{}", p.rows, p.vocab),
        &kernel,
        &uniform,
        &[logits, rng, out],
        dev.grid(u32_of(p.rows)),
    )
}
