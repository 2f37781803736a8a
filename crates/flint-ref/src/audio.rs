//! Audio features: Whisper's log-mel spectrogram, as transformers' `WhisperFeatureExtractor`
//! computes it (and OpenAI's Whisper before it).
//!
//! For each clip of `samples` values: reflect-pad `n_fft / 2` on both sides, cut frames of
//! `n_fft` every `hop` samples, weight them with a periodic Hann window, take the power spectrum
//! of the `n_fft / 2 + 1` real-DFT bins, project it on Slaney-normalised triangular mel filters
//! (0 Hz to the Nyquist frequency, Slaney's mel scale), then `log10(max(x, 1e-10))`, clamp each
//! clip from below at its maximum minus 8, and map `x -> (x + 4) / 4`. Whisper drops the STFT's
//! last frame, so a clip gives `samples / hop` frames (3000 for 30 s at 16 kHz).
//!
//! The output is `[clips, frames, mels]`, one row per frame, as flint lays out activations;
//! transformers' `input_features` is the transpose `[clips, mels, frames]`.

use crate::{ParamError, check_len};

/// Shape of a log-mel extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MelParams {
    /// Clips, each with its own maximum.
    pub clips: usize,
    /// Samples per clip.
    pub samples: usize,
    /// DFT length (and window length).
    pub n_fft: usize,
    /// Samples between frames.
    pub hop: usize,
    /// Mel filters.
    pub mels: usize,
    /// Sample rate in Hz (the filters span 0 Hz to half of it).
    pub sample_rate: usize,
}

/// Whisper's sample rate.
pub const WHISPER_RATE: usize = 16_000;
/// Samples in one Whisper window (30 s).
pub const WHISPER_SAMPLES: usize = 30 * WHISPER_RATE;

impl MelParams {
    /// Whisper's extraction for `clips` 30-second windows and `mels` filters (80, or 128 for
    /// large-v3).
    pub fn whisper(clips: usize, mels: usize) -> Self {
        MelParams { clips, samples: WHISPER_SAMPLES, n_fft: 400, hop: 160, mels, sample_rate: WHISPER_RATE }
    }

    /// Frequency bins of the real DFT.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames per clip: the centred STFT's `1 + samples / hop`, less the last, which Whisper drops.
    pub fn frames(&self) -> usize {
        self.samples / self.hop.max(1)
    }

    /// Output values: `clips * frames * mels`.
    pub fn out_len(&self) -> usize {
        self.clips * self.frames() * self.mels
    }

    /// FLOPs of the DFT (multiply-adds count two), the part that dominates: the mel projection
    /// adds about 6 per bin and frame.
    pub fn flops(&self) -> f64 {
        let rows = (self.clips * self.frames()) as f64;
        rows * 2.0 * (2 * self.bins()) as f64 * self.n_fft as f64
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.clips == 0 || self.n_fft < 2 || self.hop == 0 || self.mels == 0 || self.sample_rate < 2 {
            return Err(ParamError::new("log_mel", format!("empty or degenerate shape {self:?}")));
        }
        // Reflect padding mirrors n_fft / 2 samples without repeating the edge.
        if self.samples <= self.n_fft / 2 {
            return Err(ParamError::new(
                "log_mel",
                format!(
                    "{} samples per clip; reflect padding needs more than n_fft / 2 = {}",
                    self.samples,
                    self.n_fft / 2
                ),
            ));
        }
        if self.frames() == 0 {
            return Err(ParamError::new(
                "log_mel",
                format!("{} samples give no frame of hop {}", self.samples, self.hop),
            ));
        }
        let biggest = [
            self.clips.checked_mul(self.samples),
            // The kernels pad frame rows and spectrum columns to multiples of 4.
            self.clips
                .checked_mul(self.frames())
                .and_then(|r| r.checked_mul(self.n_fft.next_multiple_of(4).max((2 * self.bins()).next_multiple_of(4)))),
            self.out_len().checked_mul(1),
        ];
        if biggest.iter().any(|n| n.is_none_or(|n| n > u32::MAX as usize)) {
            return Err(ParamError::new("log_mel", format!("{self:?} has more than u32::MAX elements")));
        }
        Ok(())
    }
}

/// The periodic Hann window of length `n` (`torch.hann_window(n)`, numpy's `hanning(n + 1)[:-1]`).
pub fn hann(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect()
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    if f < 1000.0 { 3.0 * f / 200.0 } else { 15.0 + (f / 1000.0).ln() * 27.0 / 6.4f64.ln() }
}

fn mel_to_hz(m: f64) -> f64 {
    if m < 15.0 { 200.0 * m / 3.0 } else { 1000.0 * ((m - 15.0) * 6.4f64.ln() / 27.0).exp() }
}

/// Slaney-normalised triangular mel filters over the real DFT's bins, `[mels, bins]` row-major:
/// filter centres evenly spaced on Slaney's mel scale from 0 Hz to `sample_rate / 2`, each
/// triangle scaled by `2 / (right edge - left edge)` in Hz (librosa's `filters.mel` with
/// `norm="slaney"`, transformers' `mel_filter_bank`).
pub fn mel_filters(p: &MelParams) -> Vec<f64> {
    let bins = p.bins();
    let top = hz_to_mel((p.sample_rate / 2) as f64);
    let edges: Vec<f64> = (0..p.mels + 2).map(|i| mel_to_hz(top * i as f64 / (p.mels + 1) as f64)).collect();
    let nyquist = (p.sample_rate / 2) as f64;
    let mut out = vec![0.0; p.mels * bins];
    for m in 0..p.mels {
        let (lo, mid, hi) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (hi - lo);
        for b in 0..bins {
            let f = nyquist * b as f64 / (bins - 1).max(1) as f64;
            let down = (f - lo) / (mid - lo);
            let up = (hi - f) / (hi - mid);
            out[m * bins + b] = down.min(up).max(0.0) * norm;
        }
    }
    out
}

/// Reference log-mel spectrogram of `audio` (`[clips, samples]`): `[clips, frames, mels]`,
/// computed in f64 with a direct DFT.
pub fn log_mel(p: &MelParams, audio: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("log_mel", "audio", audio, p.clips * p.samples)?;
    let (n, bins, frames, half) = (p.n_fft, p.bins(), p.frames(), p.n_fft / 2);
    let window = hann(n);
    let filters = mel_filters(p);
    // cos and sin of 2 pi j / n: the DFT's twiddles, indexed by (bin * sample) mod n.
    let angle = |j: usize| 2.0 * std::f64::consts::PI * j as f64 / n as f64;
    let (cos, sin): (Vec<f64>, Vec<f64>) = (0..n).map(|j| (angle(j).cos(), angle(j).sin())).unzip();
    let mut out = Vec::with_capacity(p.out_len());
    let mut frame = vec![0.0; n];
    let mut power = vec![0.0; bins];
    for clip in audio.chunks_exact(p.samples) {
        let mut logs = Vec::with_capacity(frames * p.mels);
        for t in 0..frames {
            for (i, v) in frame.iter_mut().enumerate() {
                let s = reflect(t * p.hop + i, half, p.samples);
                *v = f64::from(clip[s]) * window[i];
            }
            for (b, pw) in power.iter_mut().enumerate() {
                let (mut re, mut im) = (0.0, 0.0);
                for (i, v) in frame.iter().enumerate() {
                    let j = (b * i) % n;
                    re += v * cos[j];
                    im -= v * sin[j];
                }
                *pw = re * re + im * im;
            }
            for m in 0..p.mels {
                let mel: f64 = filters[m * bins..(m + 1) * bins].iter().zip(&power).map(|(f, x)| f * x).sum();
                logs.push(mel.max(1e-10).log10());
            }
        }
        let floor = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
        out.extend(logs.into_iter().map(|x| ((x.max(floor) + 4.0) / 4.0) as f32));
    }
    Ok(out)
}

/// The sample of a clip of `len` that position `i` of its reflect-padded copy (`pad` on each
/// side) holds: `-1` mirrors to `1`, `len` to `len - 2` (the edge is not repeated).
pub fn reflect(i: usize, pad: usize, len: usize) -> usize {
    let x = i as isize - pad as isize;
    let last = len as isize - 1;
    let x = if x < 0 { -x } else { x };
    (if x > last { 2 * last - x } else { x }) as usize
}

/// Shape of a 1D convolution over time with a bias (Whisper's stem: kernel 3, padding 1, stride 1
/// then 2). The input is `[len, channels]`, a row per time step as flint lays out activations;
/// the weight is `[out_channels, channels, kernel]` as checkpoints store it; the output is
/// `[out_len, out_channels]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dParams {
    /// Input time steps.
    pub len: usize,
    /// Input channels.
    pub channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel width.
    pub kernel: usize,
    /// Step between outputs.
    pub stride: usize,
    /// Zeros added at both ends.
    pub pad: usize,
}

impl Conv1dParams {
    /// Output time steps: `(len + 2 pad - kernel) / stride + 1`.
    pub fn out_len(&self) -> usize {
        (self.len + 2 * self.pad).saturating_sub(self.kernel) / self.stride.max(1) + 1
    }

    /// Values per column row: `channels * kernel`.
    pub fn row(&self) -> usize {
        self.channels * self.kernel
    }

    /// FLOPs (multiply-adds count two).
    pub fn flops(&self) -> f64 {
        2.0 * (self.out_len() * self.out_channels * self.row()) as f64
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.len == 0 || self.channels == 0 || self.out_channels == 0 || self.kernel == 0 || self.stride == 0 {
            return Err(ParamError::new("conv1d", format!("empty shape {self:?}")));
        }
        if self.len + 2 * self.pad < self.kernel || self.pad >= self.kernel {
            return Err(ParamError::new(
                "conv1d",
                format!(
                    "{} steps padded by {} do not fit kernel {} (padding must be below the kernel)",
                    self.len, self.pad, self.kernel
                ),
            ));
        }
        let big = [
            self.len.checked_mul(self.channels),
            self.out_len().checked_mul(self.row()),
            self.out_channels.checked_mul(self.row()),
            self.out_len().checked_mul(self.out_channels),
        ];
        if big.iter().any(|n| n.is_none_or(|n| n > u32::MAX as usize)) {
            return Err(ParamError::new("conv1d", format!("{self:?} has more than u32::MAX elements")));
        }
        Ok(())
    }
}

/// Reference convolution: `out[t, o] = bias[o] + sum_{c, j} w[o, c, j] x[t stride + j - pad, c]`
/// (zero outside the input), in f64.
pub fn conv1d(p: &Conv1dParams, x: &[f32], w: &[f32], bias: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("conv1d", "x", x, p.len * p.channels)?;
    check_len("conv1d", "weight", w, p.out_channels * p.row())?;
    check_len("conv1d", "bias", bias, p.out_channels)?;
    let mut out = Vec::with_capacity(p.out_len() * p.out_channels);
    for t in 0..p.out_len() {
        for o in 0..p.out_channels {
            let mut acc = f64::from(bias[o]);
            for c in 0..p.channels {
                for j in 0..p.kernel {
                    let at = (t * p.stride + j) as isize - p.pad as isize;
                    if at >= 0 && (at as usize) < p.len {
                        acc += f64::from(w[(o * p.channels + c) * p.kernel + j])
                            * f64::from(x[at as usize * p.channels + c]);
                    }
                }
            }
            out.push(acc as f32);
        }
    }
    Ok(out)
}

/// Shape of an average pool over time: `[seqs, len, dim]` rows averaged `kernel` at a time with
/// stride `kernel` into `[seqs, len / kernel, dim]` (torch's `AvgPool1d(k, stride=k)`: a last
/// partial group is dropped). Qwen2-Audio pools its encoder output with `kernel` 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool1dParams {
    /// Independent sequences.
    pub seqs: usize,
    /// Rows per sequence.
    pub len: usize,
    /// Values per row.
    pub dim: usize,
    /// Rows per average (and the step between them).
    pub kernel: usize,
}

impl Pool1dParams {
    /// Output rows per sequence.
    pub fn out_len(&self) -> usize {
        self.len / self.kernel.max(1)
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.seqs == 0 || self.dim == 0 || self.kernel == 0 || self.len < self.kernel {
            return Err(ParamError::new(
                "avg_pool1d",
                format!("{self:?}: every sequence needs at least one full group of `kernel` rows"),
            ));
        }
        if self.seqs.checked_mul(self.len).and_then(|n| n.checked_mul(self.dim)).is_none_or(|n| n > u32::MAX as usize) {
            return Err(ParamError::new("avg_pool1d", format!("{self:?} has more than u32::MAX elements")));
        }
        Ok(())
    }
}

/// Reference average pool over time ([`Pool1dParams`]), summed in f64.
pub fn avg_pool1d(p: &Pool1dParams, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("avg_pool1d", "x", x, p.seqs * p.len * p.dim)?;
    let mut out = Vec::with_capacity(p.seqs * p.out_len() * p.dim);
    for s in 0..p.seqs {
        for t in 0..p.out_len() {
            for c in 0..p.dim {
                let sum: f64 = (0..p.kernel).map(|j| f64::from(x[(s * p.len + t * p.kernel + j) * p.dim + c])).sum();
                out.push((sum / p.kernel as f64) as f32);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn reflect_mirrors_without_repeating_the_edge() {
        // [a b c d] padded by 2: c b | a b c d | c b
        let got: Vec<usize> = (0..8).map(|i| reflect(i, 2, 4)).collect();
        assert_eq!(got, [2, 1, 0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn slaney_filters_match_transformers() {
        // transformers' mel_filter_bank(201, 80, 0, 8000, 16000, "slaney", "slaney")[b, m]
        // (float64), printed by transformers 5.24: the first filter's peak, filter 30's peak
        // (above the 1 kHz knee) and the last filter's tail.
        let p = MelParams::whisper(1, 80);
        let f = mel_filters(&p);
        let at = |m: usize, b: usize| f[m * p.bins() + b];
        assert!((at(0, 1) - 0.024_862_593_984_176_087).abs() < 1e-15, "{}", at(0, 1));
        assert!((at(30, 29) - 0.015_856_038_061_721_99).abs() < 1e-15, "{}", at(30, 29));
        assert!((at(79, 199) - 0.000_448_759_027_589_055_84).abs() < 1e-15, "{}", at(79, 199));
        assert_eq!(at(0, 3), 0.0);
        // Every filter is non-empty and non-negative.
        for m in 0..p.mels {
            assert!(f[m * p.bins()..(m + 1) * p.bins()].iter().any(|&x| x > 0.0), "filter {m} empty");
        }
        assert!(f.iter().all(|&x| x >= 0.0));
    }

    #[test]
    fn a_pure_tone_peaks_in_its_filter() {
        // 1 kHz at 16 kHz: the loudest mel row is the filter whose centre is nearest 1 kHz.
        let p = MelParams { clips: 1, samples: 1600, n_fft: 400, hop: 160, mels: 80, sample_rate: 16_000 };
        let audio: Vec<f32> =
            (0..p.samples).map(|i| (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 16000.0).sin() as f32).collect();
        let out = log_mel(&p, &audio).unwrap();
        let row = &out[5 * p.mels..6 * p.mels];
        let best = (0..p.mels).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        let top = hz_to_mel(8000.0);
        let centre = |m: usize| mel_to_hz(top * (m + 1) as f64 / 81.0);
        let nearest = (0..p.mels).min_by(|&a, &b| (centre(a) - 1000.0).abs().total_cmp(&(centre(b) - 1000.0).abs()));
        assert_eq!(Some(best), nearest);
        // The clamp: nothing lies more than 8 (2 after scaling) below the maximum.
        let max = out.iter().copied().fold(f32::MIN, f32::max);
        assert!(out.iter().all(|&x| x >= max - 2.0 - 1e-6));
    }

    #[test]
    fn conv1d_counts_and_pads_like_torch() {
        // Whisper's second conv: 3000 steps, stride 2, padding 1 -> 1500.
        let p = Conv1dParams { len: 3000, channels: 1, out_channels: 1, kernel: 3, stride: 2, pad: 1 };
        assert_eq!(p.out_len(), 1500);
        // [1, 2, 3] with kernel [1, 10, 100] and bias 0.5, padding 1: the ends see a zero.
        let p = Conv1dParams { len: 3, channels: 1, out_channels: 1, kernel: 3, stride: 1, pad: 1 };
        let out = conv1d(&p, &[1.0, 2.0, 3.0], &[1.0, 10.0, 100.0], &[0.5]).unwrap();
        assert_eq!(out, [210.5, 321.5, 32.5]);
        assert!(Conv1dParams { pad: 3, ..p }.validate().is_err());
    }

    #[test]
    fn rejects_clips_too_short_to_reflect() {
        let p = MelParams { clips: 1, samples: 200, n_fft: 400, hop: 160, mels: 80, sample_rate: 16_000 };
        assert!(p.validate().unwrap_err().message.contains("reflect"));
        assert!(log_mel(&p, &[0.0; 200]).is_err());
    }

    #[test]
    fn pool1d_averages_pairs_and_drops_a_partial_group() {
        let p = Pool1dParams { seqs: 2, len: 3, dim: 2, kernel: 2 };
        let x = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0, -1.0, 0.0, 1.0, 2.0, 9.0, 9.0];
        assert_eq!(avg_pool1d(&p, &x).unwrap(), vec![2.0, 3.0, 0.0, 1.0]);
        assert!(avg_pool1d(&Pool1dParams { len: 1, ..p }, &x[..4]).is_err());
    }
}
