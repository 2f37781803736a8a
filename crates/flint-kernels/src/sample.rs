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

fn key(rows: bool) -> flint_gpu::PipelineKey {
    typed_key("sample.wgsl", "sample", WG, &[]).flag("ROWS", rows)
}

fn tiles_key() -> flint_gpu::PipelineKey {
    typed_key("sample.wgsl", "sample_tiles", WG, &[]).flag("ROWS", true).flag("TILES", true)
}

/// The sampler's variants: options for all rows, or per row with the ids kept on the GPU, and
/// the greedy pick from the head's argmax tiles.
pub fn variants() -> Vec<Variant> {
    vec![
        Variant { name: "sample".into(), key: key(false), needs: needs_for(&[], false) },
        Variant { name: "sample rows".into(), key: key(true), needs: needs_for(&[], false) },
        Variant { name: "sample tiles".into(), key: tiles_key(), needs: needs_for(&[], false) },
    ]
}

/// One row's options for [`sample_rows`]: the sampling values, the `(seed, step)` of its draw,
/// and the slot of `tokens` that receives the chosen id. Eight u32 words.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowOptions {
    /// Temperature, top-k and top-p (its `rows` and `vocab` are ignored).
    pub params: SampleParams,
    /// Seed of the row's random stream.
    pub seed: u32,
    /// The draw's step in that stream.
    pub step: u32,
    /// Where the chosen id goes in `tokens`.
    pub slot: u32,
}

impl RowOptions {
    /// u32 words of a row in `row_opts`.
    pub const WORDS: usize = 8;

    /// The row's words as the kernel reads them.
    pub fn words(&self) -> [u32; 8] {
        [
            self.seed,
            self.step,
            self.params.temperature.to_bits(),
            u32_of(self.params.k_eff()),
            self.params.top_p.to_bits(),
            self.slot,
            0,
            0,
        ]
    }
}

/// Record sampling of `logits` (f32 `[rows, vocab]`) with per-row options (`row_opts`, u32
/// `[rows, 8]` of [`RowOptions::words`]) into `out` (f32 `[rows, 2]`: token id,
/// log-probability), also writing each row's id to `tokens[slot]` (u32), where the next decode
/// step reads it. The options are the caller's to validate ([`SampleParams::validate`]).
#[allow(clippy::too_many_arguments)]
pub fn sample_rows(
    dev: &Device,
    rec: &mut Recorder,
    rows: usize,
    vocab: usize,
    logits: &Tensor,
    row_opts: &Tensor,
    out: &Tensor,
    tokens: &Tensor,
) -> Result<()> {
    SampleParams::greedy(rows, vocab).validate().map_err(param_err)?;
    check_tensor("sample", "logits", logits, rows * vocab, &[DType::F32])?;
    check_tensor("sample", "row options", row_opts, rows * RowOptions::WORDS, &[DType::U32])?;
    check_tensor("sample", "out", out, rows * 2, &[DType::F32])?;
    check_tokens(tokens)?;
    let kernel = dev.kernel(registry(), &key(true))?;
    let uniform =
        Uniform { rows: u32_of(rows), vocab: u32_of(vocab), temperature: 0.0, k_eff: 0, top_p: 1.0, pad: [0; 3] };
    rec.dispatch_at(
        &format!("sample {rows}x{vocab}"),
        &kernel,
        &uniform,
        &[(1, logits), (2, row_opts), (3, out), (4, tokens)],
        dev.grid(u32_of(rows)),
    )
}

/// Record the greedy pick of each row from the output head's argmax tiles (`tiles` f32
/// `[rows, count, 4]`, written by [`crate::quant::quant_head_tiles`]) into `out` (f32
/// `[rows, 2]`: token id, log-probability under the full softmax), also writing each row's id
/// to `tokens[slot]` of its options (`row_opts`, u32 `[rows, 8]` of [`RowOptions::words`], whose
/// sampling values are not read: every row is greedy). The same ids as [`sample_rows`] at
/// temperature 0 over the logits (the lower id on a tie); the log-probabilities' sums run in
/// another order, so they agree to f32 rounding.
#[allow(clippy::too_many_arguments)]
pub fn sample_tiles(
    dev: &Device,
    rec: &mut Recorder,
    rows: usize,
    count: usize,
    tiles: &Tensor,
    row_opts: &Tensor,
    out: &Tensor,
    tokens: &Tensor,
) -> Result<()> {
    SampleParams::greedy(rows, count).validate().map_err(param_err)?;
    check_tensor("sample tiles", "tiles", tiles, rows * count * 4, &[DType::F32])?;
    check_tensor("sample tiles", "row options", row_opts, rows * RowOptions::WORDS, &[DType::U32])?;
    check_tensor("sample tiles", "out", out, rows * 2, &[DType::F32])?;
    check_tokens(tokens)?;
    let kernel = dev.kernel(registry(), &tiles_key())?;
    let uniform =
        Uniform { rows: u32_of(rows), vocab: u32_of(count), temperature: 0.0, k_eff: 0, top_p: 1.0, pad: [0; 3] };
    rec.dispatch_at(
        &format!("sample tiles {rows}x{count}"),
        &kernel,
        &uniform,
        &[(1, tiles), (2, row_opts), (3, out), (4, tokens)],
        dev.grid(u32_of(rows)),
    )
}

/// The token slots the sampler writes: a non-empty u32 vector.
fn check_tokens(tokens: &Tensor) -> Result<()> {
    if tokens.dtype() != DType::U32 || tokens.numel() == 0 {
        return Err(flint_gpu::GpuError::Shape {
            what: "sample tokens".into(),
            message: format!("{} {:?} is not a u32 vector", tokens.dtype(), tokens.shape()),
        });
    }
    Ok(())
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
    let kernel = dev.kernel(registry(), &key(false))?;
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
