//! Audio launchers (`shaders/audio.wgsl`): Whisper's log-mel spectrogram on the GPU.
//!
//! The STFT is a DFT as one matmul, `[clips * frames, row] x [cols, row]^T`, against a matrix
//! of windowed cosines and sines made once ([`MelTables`]); on CPU adapters and GPUs alike it
//! runs at the matmul's measured rate (an FFT would do ~40x fewer FLOPs for n_fft = 400, but in
//! dependent passes of scattered loads, and 400 is not a power of two). The frame rows and the
//! spectrum's (re, im) columns are zero-padded to multiples of 4 for the matmul's vec4 path.
//! The mel projection is not a matmul: a Slaney filter spans a few bins, so each output sums
//! the power of its own run of bins (about 2 x 201 terms per frame for all 80 filters, against
//! 80 x 402 for the dense product, which took 14 ms of a 30 s window's 50 ms on lavapipe).
//! Five dispatches: frames, DFT, mel projection, per-clip maximum, log and scale. Also the
//! encoders' stem convolution ([`conv1d`]) and the average pool over time ([`avg_pool1d`]).

use flint_gpu::{DType, Device, Recorder, Result, Tensor};
use flint_ref::audio::{Conv1dParams, MelParams, Pool1dParams};
use flint_ref::matmul::MatmulParams;

use crate::{Variant, check_tensor, needs_for, param_err, registry, typed_key, u32_of};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    clips: u32,
    samples: u32,
    n_fft: u32,
    hop: u32,
    per_clip: u32,
    row: u32,
    cols: u32,
    bins: u32,
    mels: u32,
    total: u32,
    pad: [u32; 2],
}

const ENTRIES: [(&str, &str); 6] = [
    ("frames", "FRAMES"),
    ("mel_project", "MEL"),
    ("mel_max", "MEL_MAX"),
    ("mel_log", "MEL_LOG"),
    ("conv_cols", "CONV_COLS"),
    ("pool1d", "POOL1D"),
];

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvUniform {
    len: u32,
    channels: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    out_len: u32,
    unused: u32,
    total: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolUniform {
    seqs: u32,
    len: u32,
    dim: u32,
    kernel: u32,
    out_len: u32,
    unused: [u32; 2],
    total: u32,
}

fn key(entry: &str) -> flint_gpu::PipelineKey {
    let flag = ENTRIES.iter().find(|(e, _)| *e == entry).map_or("FRAMES", |(_, f)| f);
    typed_key("audio.wgsl", entry, WG, &[]).flag(flag, true)
}

/// Every audio variant.
pub fn variants() -> Vec<Variant> {
    ENTRIES
        .iter()
        .map(|(entry, _)| Variant { name: format!("audio/{entry}"), key: key(entry), needs: needs_for(&[], false) })
        .collect()
}

/// The constant tables of a log-mel extraction, made once per (n_fft, mels, sample rate): the
/// windowed DFT `[cols, row]` (rows `2f` and `2f + 1` are `w[n] cos(2 pi f n / N)` and
/// `-w[n] sin(2 pi f n / N)`; rows and columns past the last bin and sample are zero), the mel
/// filters `[mels, bins]` and each filter's span of non-zero bins. Computed in f64, stored f32.
pub struct MelTables {
    n_fft: usize,
    mels: usize,
    sample_rate: usize,
    dft: Tensor,
    filters: Tensor,
    spans: Tensor,
}

impl MelTables {
    /// Build and upload the tables for `p`'s n_fft, mels and sample rate.
    pub fn new(dev: &Device, p: &MelParams) -> Result<Self> {
        p.validate().map_err(param_err)?;
        let (n, bins, row, cols) = (p.n_fft, p.bins(), frame_row(p), spectrum_cols(p));
        let window = flint_ref::audio::hann(n);
        let mut dft = vec![0.0f32; cols * row];
        for f in 0..bins {
            for i in 0..n {
                let a = 2.0 * std::f64::consts::PI * ((f * i) % n) as f64 / n as f64;
                dft[2 * f * row + i] = (window[i] * a.cos()) as f32;
                dft[(2 * f + 1) * row + i] = (-window[i] * a.sin()) as f32;
            }
        }
        let mel = flint_ref::audio::mel_filters(p);
        let filters: Vec<f32> = mel.iter().map(|&w| w as f32).collect();
        let mut spans = Vec::with_capacity(2 * p.mels);
        for weights in filters.chunks_exact(bins) {
            let first = weights.iter().position(|&w| w != 0.0).unwrap_or(0);
            let end = weights.iter().rposition(|&w| w != 0.0).map_or(0, |l| l + 1);
            spans.extend([u32_of(first), u32_of(end)]);
        }
        Ok(MelTables {
            n_fft: n,
            mels: p.mels,
            sample_rate: p.sample_rate,
            dft: dev.upload_f32("log-mel DFT matrix", &dft, &[cols, row], DType::F32)?,
            filters: dev.upload_f32("log-mel filters", &filters, &[p.mels, bins], DType::F32)?,
            spans: dev.upload_u32("log-mel filter spans", &spans, &[p.mels, 2])?,
        })
    }

    /// Whether these tables serve `p`.
    pub fn fits(&self, p: &MelParams) -> bool {
        (self.n_fft, self.mels, self.sample_rate) == (p.n_fft, p.mels, p.sample_rate)
    }
}

/// Values per frame row: n_fft rounded up to a multiple of 4.
fn frame_row(p: &MelParams) -> usize {
    p.n_fft.next_multiple_of(4)
}

/// Columns of the spectrum: (re, im) per bin, rounded up to a multiple of 4.
fn spectrum_cols(p: &MelParams) -> usize {
    (2 * p.bins()).next_multiple_of(4)
}

/// Record the log-mel spectrogram of `audio` (f32 `[clips, samples]`) into `out` (f32
/// `[clips, frames, mels]`), as [`flint_ref::audio::log_mel`] defines it.
pub fn log_mel(
    dev: &Device,
    rec: &mut Recorder,
    p: &MelParams,
    tables: &MelTables,
    audio: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    if !tables.fits(p) {
        return Err(flint_gpu::GpuError::Shape {
            what: "log_mel".into(),
            message: format!(
                "tables for n_fft {}, {} mels at {} Hz do not serve {p:?}",
                tables.n_fft, tables.mels, tables.sample_rate
            ),
        });
    }
    check_tensor("log_mel", "audio", audio, p.clips * p.samples, &[DType::F32])?;
    check_tensor("log_mel", "out", out, p.out_len(), &[DType::F32])?;
    let (rows, row, cols) = (p.clips * p.frames(), frame_row(p), spectrum_cols(p));
    let framed = dev.empty("log-mel frames", &[rows, row], DType::F32)?;
    let spec = dev.empty("log-mel spectrum", &[rows, cols], DType::F32)?;
    let maxes = dev.empty("log-mel clip maxima", &[p.clips], DType::F32)?;
    let uniform = |per_clip: usize, total: usize| Uniform {
        clips: u32_of(p.clips),
        samples: u32_of(p.samples),
        n_fft: u32_of(p.n_fft),
        hop: u32_of(p.hop),
        per_clip: u32_of(per_clip),
        row: u32_of(row),
        cols: u32_of(cols),
        bins: u32_of(p.bins()),
        mels: u32_of(p.mels),
        total: u32_of(total),
        pad: [0; 2],
    };
    let shape = format!("{}x{} n{} h{} m{}", p.clips, p.samples, p.n_fft, p.hop, p.mels);
    let grid = |n: usize| dev.grid(u32_of(n).div_ceil(WG));

    let u = uniform(p.frames() * row, rows * row);
    let kernel = dev.kernel(registry(), &key("frames"))?;
    rec.dispatch(&format!("audio frames {shape}"), &kernel, &u, &[audio, &framed], grid(rows * row))?;
    crate::matmul::matmul(dev, rec, &MatmulParams::new(rows, cols, row), &framed, &tables.dft, None, &spec)?;
    let u = uniform(p.frames() * p.mels, p.out_len());
    let kernel = dev.kernel(registry(), &key("mel_project"))?;
    let bufs = [&spec, &tables.filters, &tables.spans, out];
    rec.dispatch(&format!("audio mel_project {shape}"), &kernel, &u, &bufs, grid(p.out_len()))?;
    let kernel = dev.kernel(registry(), &key("mel_max"))?;
    rec.dispatch(&format!("audio mel_max {shape}"), &kernel, &u, &[out, &maxes], dev.grid(u32_of(p.clips)))?;
    let kernel = dev.kernel(registry(), &key("mel_log"))?;
    rec.dispatch(&format!("audio mel_log {shape}"), &kernel, &u, &[&maxes, out], grid(p.out_len()))
}

/// Record a 1D convolution with bias ([`flint_ref::audio::conv1d`]): `x` f32 `[len, channels]`,
/// `weight` `[out_channels, channels * kernel]` (the checkpoint's `[out, in, kernel]`
/// flattened), `bias` `[out_channels]` of the weight's dtype, into `out` f32
/// `[out_len, out_channels]`: the columns, then one matmul.
pub fn conv1d(
    dev: &Device,
    rec: &mut Recorder,
    p: &Conv1dParams,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("conv1d", "x", x, p.len * p.channels, &[DType::F32])?;
    check_tensor("conv1d", "out", out, p.out_len() * p.out_channels, &[DType::F32])?;
    let total = p.out_len() * p.row();
    let cols = dev.empty("conv1d columns", &[p.out_len(), p.row()], DType::F32)?;
    let u = ConvUniform {
        len: u32_of(p.len),
        channels: u32_of(p.channels),
        kernel: u32_of(p.kernel),
        stride: u32_of(p.stride),
        pad: u32_of(p.pad),
        out_len: u32_of(p.out_len()),
        unused: 0,
        total: u32_of(total),
    };
    let kernel = dev.kernel(registry(), &key("conv_cols"))?;
    let label = format!("audio conv_cols {}x{} k{} s{}", p.len, p.channels, p.kernel, p.stride);
    rec.dispatch(&label, &kernel, &u, &[x, &cols], dev.grid(u32_of(total).div_ceil(WG)))?;
    let mp = MatmulParams { bias: true, ..MatmulParams::new(p.out_len(), p.out_channels, p.row()) };
    crate::matmul::matmul(dev, rec, &mp, &cols, weight, Some(bias), out)
}

/// Record the average pool over time ([`flint_ref::audio::avg_pool1d`]): `x` f32
/// `[seqs, len, dim]` into `out` f32 `[seqs, len / kernel, dim]`.
pub fn avg_pool1d(dev: &Device, rec: &mut Recorder, p: &Pool1dParams, x: &Tensor, out: &Tensor) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("avg_pool1d", "x", x, p.seqs * p.len * p.dim, &[DType::F32])?;
    let total = p.seqs * p.out_len() * p.dim;
    check_tensor("avg_pool1d", "out", out, total, &[DType::F32])?;
    let u = PoolUniform {
        seqs: u32_of(p.seqs),
        len: u32_of(p.len),
        dim: u32_of(p.dim),
        kernel: u32_of(p.kernel),
        out_len: u32_of(p.out_len()),
        unused: [0; 2],
        total: u32_of(total),
    };
    let kernel = dev.kernel(registry(), &key("pool1d"))?;
    let label = format!("audio pool1d {}x{}x{} k{}", p.seqs, p.len, p.dim, p.kernel);
    rec.dispatch(&label, &kernel, &u, &[x, out], dev.grid(u32_of(total).div_ceil(WG)))
}
