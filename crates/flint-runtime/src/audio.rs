//! Audio in: WAV files read with hound (8-, 16-, 24- and 32-bit PCM, 32-bit float; any number
//! of channels, averaged to mono), resampled to Whisper's 16 kHz with rubato's FFT resampler,
//! cut into 30-second windows (the last padded with silence, as Whisper pads), and their
//! log-mel features computed on the GPU ([`flint_kernels::audio`]).

use std::path::Path;

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::audio::MelTables;
use flint_ref::audio::{MelParams, WHISPER_RATE, WHISPER_SAMPLES};
use rubato::Resampler;

use crate::{Result, RuntimeError};

/// The longest audio flint reads from one file, in seconds (two hours).
pub const MAX_SECONDS: u64 = 2 * 3600;
/// The most sample frames flint reads from one file (1 GiB of f32 mono samples), which bounds
/// high-rate files more tightly than [`MAX_SECONDS`].
pub const MAX_FRAMES: u64 = 1 << 28;
/// The sample rates flint accepts, in Hz.
pub const RATES: std::ops::RangeInclusive<u32> = 1_000..=384_000;

/// Mono audio: samples in [-1, 1] at a sample rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// The samples.
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate.max(1))
    }

    /// The same audio at `rate` (itself when the rate already is `rate`).
    pub fn resampled(&self, rate: u32) -> Result<Audio> {
        if rate == self.sample_rate || self.samples.is_empty() {
            return Ok(Audio { samples: self.samples.clone(), sample_rate: rate });
        }
        let err = |m: String| RuntimeError::Request(format!("resampling {} Hz to {rate} Hz: {m}", self.sample_rate));
        let n = self.samples.len();
        let mut r =
            rubato::Fft::<f32>::new(self.sample_rate as usize, rate as usize, 1024, 1, rubato::FixedSync::Input)
                .map_err(|e| err(e.to_string()))?;
        let mut out = vec![0.0; r.process_all_needed_output_len(n)];
        let input = rubato::audioadapter_buffers::direct::InterleavedSlice::new(&self.samples, 1, n)
            .map_err(|e| err(e.to_string()))?;
        let len = out.len();
        let mut output = rubato::audioadapter_buffers::direct::InterleavedSlice::new_mut(&mut out, 1, len)
            .map_err(|e| err(e.to_string()))?;
        let (_, produced) = r.process_all_into_buffer(&input, &mut output, n, None).map_err(|e| err(e.to_string()))?;
        out.truncate(produced);
        Ok(Audio { samples: out, sample_rate: rate })
    }
}

/// Read a WAV file to mono (see [`decode_wav`]), streaming it: the header's limits are checked
/// before any sample is read.
pub fn read_wav(path: &Path) -> Result<Audio> {
    crate::check_regular(path).map_err(|e| RuntimeError::io(path, e))?;
    let file = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    decode(path, std::io::BufReader::new(file))
}

/// Decode a WAV file held in memory (`name` is what errors call it): PCM of 8 to 32 bits or
/// 32-bit float, channels averaged to mono. Refuses rates outside [`RATES`] and audio over
/// [`MAX_SECONDS`] or [`MAX_FRAMES`] (read from the header, before any sample is decoded), and
/// a file cut short of the samples its header promises.
pub fn decode_wav(name: &Path, bytes: &[u8]) -> Result<Audio> {
    decode(name, std::io::Cursor::new(bytes))
}

fn decode<R: std::io::Read>(name: &Path, source: R) -> Result<Audio> {
    let err = |m: String| RuntimeError::Request(format!("{}: {m}", name.display()));
    let reader = hound::WavReader::new(source).map_err(|e| err(format!("not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(err("the header says 0 channels".into()));
    }
    if !RATES.contains(&spec.sample_rate) {
        return Err(err(format!(
            "sample rate {} Hz is outside the {}..={} Hz flint reads",
            spec.sample_rate,
            RATES.start(),
            RATES.end()
        )));
    }
    let frames = u64::from(reader.duration());
    if frames > MAX_SECONDS * u64::from(spec.sample_rate) || frames > MAX_FRAMES {
        return Err(err(format!(
            "{frames} frames ({:.0} s) of audio is over flint's limit of {MAX_SECONDS} s and {MAX_FRAMES} frames per file",
            frames as f64 / f64::from(spec.sample_rate)
        )));
    }
    let samples = match spec.sample_format {
        hound::SampleFormat::Float if spec.bits_per_sample == 32 => mix(reader.into_samples::<f32>(), channels, frames),
        hound::SampleFormat::Int if (8..=32).contains(&spec.bits_per_sample) => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f64;
            mix(reader.into_samples::<i32>().map(|s| s.map(|v| (f64::from(v) * scale) as f32)), channels, frames)
        }
        f => {
            return Err(err(format!("{}-bit {f:?} samples are not a format flint reads", spec.bits_per_sample)));
        }
    }
    .map_err(|e| err(format!("cannot decode its samples (is the file cut short?): {e}")))?;
    Ok(Audio { samples, sample_rate: spec.sample_rate })
}

/// Average each frame's `channels` values as they stream in.
fn mix(values: impl Iterator<Item = hound::Result<f32>>, channels: usize, frames: u64) -> hound::Result<Vec<f32>> {
    // The header's count bounds the reservation, but a file may promise more than it holds.
    let mut out = Vec::with_capacity(usize::try_from(frames.min(1 << 22)).unwrap_or(0));
    let (mut acc, mut k) = (0.0f32, 0);
    for v in values {
        acc += v?;
        k += 1;
        if k == channels {
            out.push(acc / channels as f32);
            (acc, k) = (0.0, 0);
        }
    }
    Ok(out)
}

/// Whisper's windows of `samples` (16 kHz): `[windows, 480000]` row-major, the last padded with
/// zeros; at least one window, so silence or a very short clip gives one.
pub fn whisper_windows(samples: &[f32]) -> (Vec<f32>, usize) {
    let windows = samples.len().div_ceil(WHISPER_SAMPLES).max(1);
    let mut out = samples.to_vec();
    out.resize(windows * WHISPER_SAMPLES, 0.0);
    (out, windows)
}

/// Whisper's log-mel feature extractor on one device: the DFT and filter tables uploaded once.
pub struct LogMel {
    mels: usize,
    tables: MelTables,
}

impl LogMel {
    /// An extractor of `mels` filters (80, or 128 for Whisper large-v3).
    pub fn new(dev: &Device, mels: usize) -> Result<Self> {
        Ok(LogMel { mels, tables: MelTables::new(dev, &MelParams::whisper(1, mels))? })
    }

    /// Mel filters.
    pub fn mels(&self) -> usize {
        self.mels
    }

    /// Record the features of windows `first..first + count` of `samples` (16 kHz; windows of
    /// 30 s, the last padded with zeros): f32 `[count, 3000, mels]`, each window normalised by
    /// its own maximum as transformers' `WhisperFeatureExtractor` does.
    pub fn record_windows(
        &self,
        dev: &Device,
        rec: &mut Recorder,
        samples: &[f32],
        first: usize,
        count: usize,
    ) -> Result<Tensor> {
        let windows = samples.len().div_ceil(WHISPER_SAMPLES).max(1);
        if count == 0 || first + count > windows {
            return Err(RuntimeError::Request(format!(
                "windows {first}..{} of audio that has {windows}",
                first + count
            )));
        }
        let start = (first * WHISPER_SAMPLES).min(samples.len());
        let end = ((first + count) * WHISPER_SAMPLES).min(samples.len());
        let mut padded = samples[start..end].to_vec();
        padded.resize(count * WHISPER_SAMPLES, 0.0);
        let p = MelParams::whisper(count, self.mels);
        let upload = dev.upload_f32("audio samples", &padded, &[count, WHISPER_SAMPLES], DType::F32)?;
        let out = dev.empty("log-mel features", &[count, p.frames(), self.mels], DType::F32)?;
        flint_kernels::audio::log_mel(dev, rec, &p, &self.tables, &upload, &out)?;
        Ok(out)
    }

    /// The features of `audio` (any rate; resampled to 16 kHz first) read back:
    /// `[windows, 3000, mels]` row-major, and the window count. Computed [`WINDOWS_AT_ONCE`]
    /// windows at a time, so that long audio stays within the adapter's binding size.
    pub fn features(&self, dev: &Device, audio: &Audio) -> Result<(Vec<f32>, usize)> {
        if audio.samples.is_empty() {
            return Err(RuntimeError::Request("the audio has no samples".into()));
        }
        let audio = audio.resampled(WHISPER_RATE as u32)?;
        let windows = audio.samples.len().div_ceil(WHISPER_SAMPLES).max(1);
        let mut out = Vec::with_capacity(windows * 3000 * self.mels);
        for first in (0..windows).step_by(WINDOWS_AT_ONCE) {
            let count = WINDOWS_AT_ONCE.min(windows - first);
            let mut rec = Recorder::new(dev);
            let t = self.record_windows(dev, &mut rec, &audio.samples, first, count)?;
            rec.submit()?.wait()?;
            out.extend(dev.read_f32(&t)?);
        }
        Ok((out, windows))
    }
}

/// Windows whose features [`LogMel::features`] computes in one go: their scratch (about 10 MB a
/// window) stays far below a 128 MiB binding.
pub const WINDOWS_AT_ONCE: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(spec: hound::WavSpec, frames: &[Vec<f64>]) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut bytes, spec).unwrap();
        for frame in frames {
            for &v in frame {
                match spec.sample_format {
                    hound::SampleFormat::Float => w.write_sample(v as f32).unwrap(),
                    hound::SampleFormat::Int => {
                        let full = (1i64 << (spec.bits_per_sample - 1)) as f64;
                        let q = (v * full).round().clamp(-full, full - 1.0) as i32;
                        if spec.bits_per_sample == 8 {
                            w.write_sample(q as i8).unwrap();
                        } else {
                            w.write_sample(q).unwrap();
                        }
                    }
                }
            }
        }
        w.finalize().unwrap();
        bytes.into_inner()
    }

    fn spec(channels: u16, bits: u16, float: bool) -> hound::WavSpec {
        let sample_format = if float { hound::SampleFormat::Float } else { hound::SampleFormat::Int };
        hound::WavSpec { channels, sample_rate: 8000, bits_per_sample: bits, sample_format }
    }

    #[test]
    fn every_pcm_width_and_float_decodes_and_mixes_to_mono() {
        let frames: Vec<Vec<f64>> = (0..50).map(|i| vec![(i as f64 / 50.0) - 0.5, 0.25]).collect();
        for (bits, float, tol) in
            [(8, false, 1.0 / 128.0), (16, false, 1e-4), (24, false, 1e-6), (32, false, 1e-6), (32, true, 1e-7)]
        {
            let a = decode_wav(Path::new("t.wav"), &wav(spec(2, bits, float), &frames)).unwrap();
            assert_eq!((a.samples.len(), a.sample_rate), (50, 8000), "{bits}-bit");
            for (got, f) in a.samples.iter().zip(&frames) {
                let want = (f[0] + f[1]) / 2.0;
                assert!((f64::from(*got) - want).abs() <= tol, "{bits}-bit float={float}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn bad_files_name_the_file_and_the_reason() {
        let e = decode_wav(Path::new("clip.wav"), b"RIFF\x10\0\0\0WAVEjunk").unwrap_err().to_string();
        assert!(e.starts_with("clip.wav: not a readable WAV file"), "{e}");
        let mut bytes = wav(spec(1, 16, false), &[vec![0.1], vec![0.2]]);
        // The sample rate field, 24 bytes in: 1 Hz.
        bytes[24..28].copy_from_slice(&1u32.to_le_bytes());
        bytes[28..32].copy_from_slice(&2u32.to_le_bytes());
        let e = decode_wav(Path::new("slow.wav"), &bytes).unwrap_err().to_string();
        assert!(e.contains("slow.wav") && e.contains("sample rate 1 Hz"), "{e}");
        // A data chunk claiming more than two hours at 8 kHz.
        let mut bytes = wav(spec(1, 16, false), &[vec![0.1]]);
        let n = bytes.len();
        bytes[n - 6..n - 2].copy_from_slice(&(2 * 8000 * 7201u32).to_le_bytes());
        let e = decode_wav(Path::new("long.wav"), &bytes).unwrap_err().to_string();
        assert!(e.contains("long.wav") && e.contains("limit of 7200 s"), "{e}");
        let cut = wav(spec(1, 16, false), &[vec![0.1], vec![0.2], vec![0.3]]);
        let e = decode_wav(Path::new("cut.wav"), &cut[..cut.len() - 3]).unwrap_err().to_string();
        assert!(e.starts_with("cut.wav: cannot decode its samples"), "{e}");
    }

    #[test]
    fn resampling_keeps_a_tone_and_the_length() {
        let tone: Vec<f32> =
            (0..22_050).map(|i| (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 22_050.0).sin() as f32).collect();
        let a = Audio { samples: tone, sample_rate: 22_050 };
        let b = a.resampled(16_000).unwrap();
        assert_eq!(b.sample_rate, 16_000);
        assert!((b.samples.len() as i64 - 16_000).abs() <= 1, "{}", b.samples.len());
        // rubato's FFT resampler leads by half an input sample (23 us at 22.05 kHz: a 440 Hz
        // tone is off by up to 0.06 without this), nothing to a 10 ms hop of Whisper's features.
        let lead = 0.5 * 16_000.0 / 22_050.0;
        let want = |i: usize| (2.0 * std::f64::consts::PI * 440.0 * (i as f64 + lead) / 16_000.0).sin() as f32;
        // Away from the edges, where the resampler's filter sees the clip's ends.
        let worst = (500..15_500).map(|i| (b.samples[i] - want(i)).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-3, "{worst}");
    }

    #[test]
    fn windows_pad_to_thirty_seconds() {
        assert_eq!(whisper_windows(&[]).1, 1);
        let (w, n) = whisper_windows(&vec![0.5; WHISPER_SAMPLES + 1]);
        assert_eq!((n, w.len()), (2, 2 * WHISPER_SAMPLES));
        assert_eq!((w[WHISPER_SAMPLES], w[WHISPER_SAMPLES + 1]), (0.5, 0.0));
    }
}
