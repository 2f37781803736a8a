//! Audio: Whisper's stem convolution (kernel 3, strides 1 and 2, odd lengths, one step of
//! input), the average pool over time (Qwen2-Audio; odd lengths, several sequences), and
//! Whisper's log-mel spectrogram (frames, the DFT as a matmul, the mel
//! projection over each filter's bins, each clip's maximum, the log and scale) against the f64
//! reference with a direct DFT. Clips mix tones, noise and a stretch of exact silence (whose mel power is zero, so it
//! lands on the clip's floor), at different loudness per clip so that a maximum taken over the
//! wrong clip shows; shapes cover the shortest clip reflect padding allows, a hop that divides
//! nothing, an n_fft that is no multiple of 4 (the frame rows and spectrum columns get zero
//! padding), odd filter counts and 128 mels (Whisper large-v3).

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::audio::MelTables;
use flint_ref::ParamError;
use flint_ref::audio::{Conv1dParams, MelParams, Pool1dParams};

use crate::{Case, Input, Rng, Tier, Tolerance};

/// Log-mel in f32 against the f64 reference. The DFT sums n_fft = 400 products in f32, so a
/// bin's amplitude carries an absolute error near sqrt(400) * 2^-24 of the frame's loudest
/// amplitude (1.2e-6); a mel value far below the clip's loudest (down to 1e-8 of its power,
/// where the clamp stops) can thus be off by up to a few percent in power: 0.01 in log10, 0.003
/// after the final /4, hence max-abs 2e-3 of the largest value (about 1.5). Such values are
/// few: measured NMSE is 4e-15 to 1.5e-12 on lavapipe and llvmpipe GL (max-abs 3.5e-5), and
/// 1e-10 keeps the test sharp: frames read one sample late give 2.5e-9 on the shortest clip,
/// a maximum taken over the wrong clip 8e-3.
pub const LOG_MEL_TOL: Tolerance = Tolerance { nmse: 1e-10, max_abs_rel: 2e-3 };

struct LogMelCase {
    p: MelParams,
    tier: Tier,
}

impl Case for LogMelCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!("log_mel_{}x{}_n{}_h{}_m{}_{}hz", p.clips, p.samples, p.n_fft, p.hop, p.mels, p.sample_rate)
    }
    fn op(&self) -> &'static str {
        "audio"
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn tolerance(&self) -> Tolerance {
        LOG_MEL_TOL
    }
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        let p = &self.p;
        let rows = p.clips * p.frames();
        // Samples in, frames out and back, the spectrum out and back, mels out, in twice and back.
        4.0 * (p.clips * p.samples + 2 * rows * p.n_fft + 2 * rows * 2 * p.bins() + 4 * rows * p.mels) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let p = &self.p;
        let mut rng = Rng::from_name(&self.name());
        let noise = rng.vec(p.clips * p.samples, -1.0, 1.0);
        let rate = p.sample_rate as f32;
        let audio = noise
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let (clip, s) = (i / p.samples, i % p.samples);
                let t = s as f32 / rate;
                // A silent stretch in the middle third of every clip.
                if s >= p.samples / 3 && s < p.samples / 2 {
                    return 0.0;
                }
                let loud = 0.9 / (1 + clip) as f32;
                let tone = (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.3 * (2.0 * std::f32::consts::PI * rate * 0.31 * t).sin();
                loud * (0.6 * tone + 0.05 * n)
            })
            .collect();
        vec![Input::float("audio", &[p.clips, p.samples], DType::F32, audio)]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::audio::log_mel(&self.p, inputs[0].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.clips, self.p.frames(), self.p.mels], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let tables = MelTables::new(dev, &self.p)?;
        flint_kernels::audio::log_mel(dev, rec, &self.p, &tables, &t[0], out)
    }
}

/// Whisper's stem convolution: the columns, then a matmul with bias (f32 throughout; the
/// matmul's f32 tolerance).
struct Conv1dCase {
    p: Conv1dParams,
    tier: Tier,
}

impl Case for Conv1dCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!("conv1d_f32_{}x{}_to{}_k{}_s{}_p{}", p.len, p.channels, p.out_channels, p.kernel, p.stride, p.pad)
    }
    fn op(&self) -> &'static str {
        "audio"
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn tolerance(&self) -> Tolerance {
        crate::cases::F32_TOL
    }
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        let p = &self.p;
        4.0 * (p.len * p.channels + 2 * p.out_len() * p.row() + p.out_channels * p.row() + p.out_len() * p.out_channels)
            as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let p = &self.p;
        let mut rng = Rng::from_name(&self.name());
        let bound = 1.0 / (p.row() as f32).sqrt();
        vec![
            Input::float("x", &[p.len, p.channels], DType::F32, rng.vec(p.len * p.channels, -1.0, 1.0)),
            Input::float(
                "weight",
                &[p.out_channels, p.row()],
                DType::F32,
                rng.vec(p.out_channels * p.row(), -bound, bound),
            ),
            Input::float("bias", &[p.out_channels], DType::F32, rng.vec(p.out_channels, -0.5, 0.5)),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::audio::conv1d(&self.p, inputs[0].f32s(), inputs[1].f32s(), inputs[2].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.out_len(), self.p.out_channels], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::audio::conv1d(dev, rec, &self.p, &t[0], &t[1], &t[2], out)
    }
}

/// The average pool over time (Qwen2-Audio's encoder): sums of `kernel` f32 values, so within
/// the f32 tolerance; odd lengths check that a last partial group is dropped, several
/// sequences that each pools its own rows.
struct Pool1dCase {
    p: Pool1dParams,
    tier: Tier,
}

impl Case for Pool1dCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!("avg_pool1d_f32_{}x{}x{}_k{}", p.seqs, p.len, p.dim, p.kernel)
    }
    fn op(&self) -> &'static str {
        "audio"
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn tolerance(&self) -> Tolerance {
        crate::cases::F32_TOL
    }
    fn flops(&self) -> f64 {
        (self.p.seqs * self.p.len * self.p.dim) as f64
    }
    fn bytes(&self) -> f64 {
        let p = &self.p;
        4.0 * (p.seqs * (p.len + p.out_len()) * p.dim) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let p = &self.p;
        let mut rng = Rng::from_name(&self.name());
        let n = p.seqs * p.len * p.dim;
        vec![Input::float("x", &[p.seqs, p.len, p.dim], DType::F32, rng.vec(n, -2.0, 2.0))]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::audio::avg_pool1d(&self.p, inputs[0].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.seqs, self.p.out_len(), self.p.dim], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::audio::avg_pool1d(dev, rec, &self.p, &t[0], out)
    }
}

/// Log-mel, stem convolution and pooling cases.
pub fn cases(out: &mut Vec<Box<dyn Case>>) {
    let cp = |len, channels, out_channels, kernel, stride, pad| Conv1dParams {
        len,
        channels,
        out_channels,
        kernel,
        stride,
        pad,
    };
    for p in [
        cp(1, 1, 1, 3, 1, 1),
        cp(7, 5, 3, 3, 2, 1),
        cp(65, 80, 17, 3, 1, 1),
        cp(64, 17, 9, 3, 2, 1),
        cp(10, 3, 4, 5, 3, 2),
    ] {
        out.push(Box::new(Conv1dCase { p, tier: Tier::Test }));
    }
    let pp = |seqs, len, dim, kernel| Pool1dParams { seqs, len, dim, kernel };
    for p in [pp(1, 2, 1, 2), pp(3, 7, 5, 2), pp(2, 1500, 64, 2), pp(1, 10, 33, 3)] {
        out.push(Box::new(Pool1dCase { p, tier: Tier::Test }));
    }
    // Qwen2-Audio's pool over one window of a 1280-wide encoder.
    out.push(Box::new(Pool1dCase { p: pp(1, 1500, 1280, 2), tier: Tier::Bench }));
    // Whisper tiny's stem over one 30 s window.
    out.push(Box::new(Conv1dCase { p: cp(3000, 80, 384, 3, 1, 1), tier: Tier::Bench }));
    out.push(Box::new(Conv1dCase { p: cp(3000, 384, 384, 3, 2, 1), tier: Tier::Bench }));
    let mp =
        |clips, samples, n_fft, hop, mels, sample_rate| MelParams { clips, samples, n_fft, hop, mels, sample_rate };
    for p in [
        mp(1, 201, 400, 160, 80, 16_000),
        mp(2, 16_037, 400, 160, 80, 16_000),
        mp(1, 4_099, 400, 160, 128, 16_000),
        mp(3, 1_000, 64, 17, 13, 8_000),
        mp(2, 333, 50, 9, 7, 11_025),
    ] {
        out.push(Box::new(LogMelCase { p, tier: Tier::Test }));
    }
    out.push(Box::new(LogMelCase { p: MelParams::whisper(1, 80), tier: Tier::Bench }));
    out.push(Box::new(LogMelCase { p: MelParams::whisper(4, 128), tier: Tier::Bench }));
}
