//! Whisper-style audio encoders and the audio side of audio-language models.
//!
//! The encoder (`AudioEncoder`): a 30-second window's log-mel features `[3000, mels]` through two
//! convolutions over time (kernel 3, strides 1 and 2) with exact GELU, plus the positions
//! table, then pre-LN blocks of biased bidirectional attention and a GELU MLP: `[1500, d]`,
//! before the final LayerNorm. Whisper ([`crate::whisper`]) norms that; Qwen2-Audio's tower
//! ([`AudioTower`]) first averages pairs of positions, then norms and projects into the text
//! decoder's width. A clip shorter than its window masks the padded keys: each clip's queries
//! attend to its first `(frames - 1) / 2 + 1` positions only, as transformers' Qwen2-Audio does.
//!
//! Weights are asked for by CTranslate2's names; Hugging Face checkpoints are mapped onto them.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_ref::audio::{Conv1dParams, Pool1dParams};
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::norm::{NormKind, NormParams};

use crate::audio::{Audio, LogMel};
use crate::ct2::Ct2File;
use crate::hf::{Config, HfDir};
use crate::model::vision::{Affine, Block, EncoderShape, LayerNorm, encoder_blocks_masked};
use crate::whisper::file_err;
use crate::{RequestError, Result, RuntimeError};

/// Frames of log-mel features per window.
pub const WINDOW_FRAMES: usize = 3000;
/// Encoder positions per window (after the stride-2 convolution).
pub const AUDIO_CTX: usize = 1500;
/// Samples per 30-second window at 16 kHz.
pub const WINDOW_SAMPLES: usize = flint_ref::audio::WHISPER_SAMPLES;
/// The sample rate the features are made at.
pub const SAMPLE_RATE: u32 = flint_ref::audio::WHISPER_RATE as u32;
/// Samples between feature frames.
const HOP: usize = 160;

/// An encoder's shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct EncoderDims {
    pub(crate) mels: usize,
    pub(crate) d: usize,
    pub(crate) ffn: usize,
    pub(crate) heads: usize,
    pub(crate) layers: usize,
    pub(crate) eps: f32,
}

/// The stem and blocks of a Whisper-style encoder, and its final LayerNorm (f32 weights: its
/// products are matmuls of 1500 rows, fastest from f32).
pub(crate) struct AudioEncoder {
    pub(crate) dims: EncoderDims,
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    pos: Tensor,
    blocks: Vec<Block>,
    pub(crate) ln: LayerNorm,
}

impl AudioEncoder {
    /// Load the encoder's tensors (CTranslate2's `encoder/...` names) from `src`.
    pub(crate) fn load(dev: &Device, src: &dyn Source, dims: EncoderDims) -> Result<AudioEncoder> {
        let (d, f) = (dims.d, dims.ffn);
        let part = |name: &str, total: usize, rows: std::ops::Range<usize>, k: usize| {
            fused_rows(dev, src, name, total, rows, k, DType::F32)
        };
        let linear = |name: &str, n: usize, k: usize| part(name, n, 0..n, k);
        let norm = |name: &str| layer_norm(dev, src, name, d);
        let conv = |name: &str, cin: usize| -> Result<(Tensor, Tensor)> {
            let w = src.f32s(&format!("{name}/weight"), &[d, cin, 3])?;
            let b = src.f32s(&format!("{name}/bias"), &[d])?;
            Ok((dev.upload_f32(name, &w, &[d, cin * 3], DType::F32)?, dev.upload_f32(name, &b, &[d], DType::F32)?))
        };
        let mut blocks = Vec::with_capacity(dims.layers);
        for l in 0..dims.layers {
            let p = format!("encoder/layer_{l}");
            let qkv = format!("{p}/self_attention/linear_0");
            blocks.push(Block {
                ln1: norm(&format!("{p}/self_attention/layer_norm"))?,
                q: part(&qkv, 3 * d, 0..d, d)?,
                k: part(&qkv, 3 * d, d..2 * d, d)?,
                v: part(&qkv, 3 * d, 2 * d..3 * d, d)?,
                o: linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                ln2: norm(&format!("{p}/ffn/layer_norm"))?,
                fc1: linear(&format!("{p}/ffn/linear_0"), f, d)?,
                fc2: linear(&format!("{p}/ffn/linear_1"), d, f)?,
            });
        }
        Ok(AudioEncoder {
            dims,
            conv1: conv("encoder/conv1", dims.mels)?,
            conv2: conv("encoder/conv2", d)?,
            pos: {
                let name = "encoder/position_encodings/encodings";
                dev.upload_f32(name, &src.f32s(name, &[AUDIO_CTX, d])?, &[AUDIO_CTX, d], DType::F32)?
            },
            blocks,
            ln: norm("encoder/layer_norm")?,
        })
    }

    /// Record the stem and blocks over `features` f32 `[clips, 3000, mels]`, clip `c`'s queries
    /// attending to its first `keys[c]` positions: `[clips * 1500, d]`, before the final norm.
    pub(crate) fn hidden(&self, dev: &Device, rec: &mut Recorder, features: &Tensor, keys: &[usize]) -> Result<Tensor> {
        let (d, clips) = (self.dims.d, keys.len());
        features
            .expect("audio features", &[clips, WINDOW_FRAMES, self.dims.mels], DType::F32)
            .map_err(RuntimeError::Gpu)?;
        let gelu = |rec: &mut Recorder, x: &Tensor, n: usize, out: &Tensor| -> Result<()> {
            let p = EltParams::unary(EltOp::GeluErf, n);
            Ok(flint_kernels::elementwise::elementwise(dev, rec, &p, x, None, out)?)
        };
        let x = dev.empty("audio encoder hidden", &[clips * AUDIO_CTX, d], DType::F32)?;
        let c1 = Conv1dParams {
            len: WINDOW_FRAMES,
            channels: self.dims.mels,
            out_channels: d,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let c2 = Conv1dParams { len: WINDOW_FRAMES, channels: d, out_channels: d, kernel: 3, stride: 2, pad: 1 };
        let h1 = dev.empty("audio conv1", &[WINDOW_FRAMES, d], DType::F32)?;
        let g1 = dev.empty("audio conv1 gelu", &[WINDOW_FRAMES, d], DType::F32)?;
        let h2 = dev.empty("audio conv2", &[AUDIO_CTX, d], DType::F32)?;
        let (in_row, out_row) = (WINDOW_FRAMES * self.dims.mels * 4, AUDIO_CTX * d * 4);
        for c in 0..clips {
            let f = features.view((c * in_row) as u64, &[WINDOW_FRAMES, self.dims.mels], DType::F32)?;
            flint_kernels::audio::conv1d(dev, rec, &c1, &f, &self.conv1.0, &self.conv1.1, &h1)?;
            gelu(rec, &h1, WINDOW_FRAMES * d, &g1)?;
            flint_kernels::audio::conv1d(dev, rec, &c2, &g1, &self.conv2.0, &self.conv2.1, &h2)?;
            let xc = x.view((c * out_row) as u64, &[AUDIO_CTX, d], DType::F32)?;
            gelu(rec, &h2, AUDIO_CTX * d, &xc)?;
            let add = EltParams { op: EltOp::ResidualAdd, n: AUDIO_CTX * d, b_len: AUDIO_CTX * d, scale: 1.0 };
            flint_kernels::elementwise::residual_add(dev, rec, &add, &xc, &self.pos)?;
        }
        let shape = EncoderShape {
            dim: d,
            ffn: self.dims.ffn,
            heads: self.dims.heads,
            eps: self.dims.eps,
            gelu: EltOp::GeluErf,
        };
        encoder_blocks_masked(dev, rec, &self.blocks, &shape, &x, AUDIO_CTX, keys)?;
        Ok(x)
    }

    /// Record the final LayerNorm of `rows` rows of `x` into `out`.
    pub(crate) fn norm(&self, dev: &Device, rec: &mut Recorder, x: &Tensor, rows: usize, out: &Tensor) -> Result<()> {
        let p = NormParams { kind: NormKind::Layer, rows, dim: self.dims.d, eps: self.dims.eps };
        Ok(flint_kernels::norm::norm(dev, rec, &p, x, &self.ln.w, Some(&self.ln.b), out)?)
    }
}

/// Rows `rows` of the fused projection `name` (`{name}/weight` `[total, k]`, `{name}/bias`) as an
/// [`Affine`] stored as `dt`.
pub(crate) fn fused_rows(
    dev: &Device,
    src: &dyn Source,
    name: &str,
    total: usize,
    rows: std::ops::Range<usize>,
    k: usize,
    dt: DType,
) -> Result<Affine> {
    let w = src.f32s(&format!("{name}/weight"), &[total, k])?;
    let b = src.f32s(&format!("{name}/bias"), &[total])?;
    let n = rows.len();
    Ok(Affine {
        w: dev.upload_f32(name, &w[rows.start * k..rows.end * k], &[n, k], dt)?,
        b: Some(dev.upload_f32(name, &b[rows], &[n], dt)?),
        n,
        k,
    })
}

/// The LayerNorm `name` (`{name}/gamma`, `{name}/beta`) of width `d`.
pub(crate) fn layer_norm(dev: &Device, src: &dyn Source, name: &str, d: usize) -> Result<LayerNorm> {
    let up = |leaf: &str| -> Result<Tensor> {
        let n = format!("{name}/{leaf}");
        Ok(dev.upload_f32(&n, &src.f32s(&n, &[d])?, &[d], DType::F32)?)
    };
    Ok(LayerNorm { w: up("gamma")?, b: up("beta")? })
}

/// Clips ready for an audio tower: each clip's log-mel features, padded to a 30-second window,
/// and how many of its frames hold audio.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioFeatures {
    /// `[clips, 3000, mels]` f32 row-major (a row per frame).
    pub data: Vec<f32>,
    /// Mel filters.
    pub mels: usize,
    /// Frames of audio in each clip (`ceil(samples / 160)`, at most 3000): the rest is padding.
    pub frames: Vec<usize>,
}

impl AudioFeatures {
    /// Clips.
    pub fn clips(&self) -> usize {
        self.frames.len()
    }

    /// The text tokens each clip becomes (see [`tokens_for_frames`]).
    pub fn tokens(&self) -> Vec<usize> {
        self.frames.iter().map(|&f| tokens_for_frames(f)).collect()
    }

    /// Check the features fit a tower of `mels` filters: the shape, 3 to 3000 frames of audio
    /// per clip, finite values.
    pub fn validate(&self, mels: usize) -> std::result::Result<(), RequestError> {
        let clips = self.clips();
        if self.mels != mels || clips == 0 || self.data.len() != clips * WINDOW_FRAMES * mels {
            return Err(RequestError::Audio(format!(
                "{} feature values of {} mels for {clips} clips; the tower takes [clips, {WINDOW_FRAMES}, {mels}]",
                self.data.len(),
                self.mels
            )));
        }
        if let Some(c) = self.frames.iter().position(|&f| !(3..=WINDOW_FRAMES).contains(&f)) {
            return Err(RequestError::Audio(format!(
                "clip {} has {} frames of audio; 3 to {WINDOW_FRAMES} make tokens",
                c + 1,
                self.frames[c]
            )));
        }
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(RequestError::Audio(format!("feature value {i} is {}: features must be finite", self.data[i])));
        }
        Ok(())
    }
}

/// Encoder positions that `frames` frames of audio reach through the stride-2 convolution:
/// `(frames - 1) / 2 + 1`.
pub fn positions_for_frames(frames: usize) -> usize {
    frames.saturating_sub(1) / 2 + 1
}

/// Text tokens that `frames` frames of audio become in Qwen2-Audio: the positions, averaged
/// in pairs (`(positions - 2) / 2 + 1`, as transformers computes it, 0 below 2 positions).
pub fn tokens_for_frames(frames: usize) -> usize {
    let positions = positions_for_frames(frames);
    if positions < 2 { 0 } else { (positions - 2) / 2 + 1 }
}

/// Qwen2-Audio's processor: features as WhisperFeatureExtractor makes them (16 kHz, n_fft 400,
/// hop 160, 30-second windows) and the prompt markup.
pub struct AudioProcessor {
    mel: LogMel,
    /// The token each clip's placeholder expands into (`<|AUDIO|>`).
    pub audio_token: String,
    /// The tokens written around a clip (`<|audio_bos|>`, `<|audio_eos|>`).
    pub bos: String,
    /// See `bos`.
    pub eos: String,
}

impl std::fmt::Debug for AudioProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioProcessor")
            .field("mels", &self.mel.mels())
            .field("audio_token", &self.audio_token)
            .finish_non_exhaustive()
    }
}

impl AudioProcessor {
    /// Qwen2-Audio's processor for `mels` filters: its feature extractor's settings (from
    /// `processor_config.json`'s `feature_extractor`, or `preprocessor_config.json`) must be
    /// WhisperFeatureExtractor's, since those are the features flint computes.
    pub(crate) fn new(dev: &Device, dir: &HfDir, mels: usize) -> Result<AudioProcessor> {
        let files = &dir.files;
        let read = |name: &str| -> Result<Option<serde_json::Value>> {
            if files.has(name) { Ok(Some(files.read_json(name)?)) } else { Ok(None) }
        };
        let processor = read("processor_config.json")?.unwrap_or(serde_json::Value::Null);
        let (name, extractor) = match processor.get("feature_extractor") {
            Some(v) if v.is_object() => ("processor_config.json", v.clone()),
            _ => ("preprocessor_config.json", read("preprocessor_config.json")?.unwrap_or(serde_json::Value::Null)),
        };
        if extractor.is_object() {
            let c = Config::new(files.path(name), &extractor);
            for (key, want) in [
                ("feature_size", mels),
                ("sampling_rate", SAMPLE_RATE as usize),
                ("hop_length", HOP),
                ("n_fft", 400),
                ("chunk_length", 30),
            ] {
                let got = c.usize_or(key, want)?;
                if got != want {
                    return Err(c.error(key, &format!("is {got}; flint computes Whisper's features with {want}")));
                }
            }
        }
        let token = |key: &str, default: &str| -> String {
            processor.get(key).and_then(|t| t.as_str()).unwrap_or(default).to_string()
        };
        Ok(AudioProcessor {
            mel: LogMel::new(dev, mels)?,
            audio_token: token("audio_token", "<|AUDIO|>"),
            bos: token("audio_bos_token", "<|audio_bos|>"),
            eos: token("audio_eos_token", "<|audio_eos|>"),
        })
    }

    /// Whether `text` holds an audio placeholder.
    pub fn has_placeholder(&self, text: &str) -> bool {
        text.contains(self.audio_token.as_str())
    }

    /// The markup a clip takes when the prompt does not place it: `Audio n: <|audio_bos|>
    /// <|AUDIO|><|audio_eos|>\n`, as the Instruct checkpoint's chat template writes it (the
    /// base model's prompts have no `Audio n:` prefix: write `<|AUDIO|>` in the text to place a
    /// clip exactly).
    pub fn markup(&self, n: usize) -> String {
        format!("Audio {n}: {}{}{}\n", self.bos, self.audio_token, self.eos)
    }

    /// The features of `clips` (any rate; resampled to 16 kHz first). A clip longer than one
    /// window (30 s), or too short to make a token (under 3 frames, 20 ms), is refused.
    pub fn features(&self, dev: &Device, clips: &[Audio]) -> Result<AudioFeatures> {
        // Each clip padded to one window, one after another: LogMel's windows are the clips.
        let mut windows = Vec::with_capacity(clips.len() * WINDOW_SAMPLES);
        let mut frames = Vec::with_capacity(clips.len());
        for (i, clip) in clips.iter().enumerate() {
            let i = i + 1;
            // Checked before resampling, so that a long clip costs nothing to refuse.
            let seconds = clip.samples.len() as f64 / f64::from(clip.sample_rate.max(1));
            if !crate::audio::RATES.contains(&clip.sample_rate) || seconds > 30.0 {
                return Err(RequestError::Audio(format!(
                    "clip {i} is {seconds:.2} s long at {} Hz; this model takes clips of at most 30 s, at {} to {} Hz",
                    clip.sample_rate,
                    crate::audio::RATES.start(),
                    crate::audio::RATES.end()
                ))
                .into());
            }
            let mut samples = clip.resampled(SAMPLE_RATE)?.samples;
            let n = samples.len().min(WINDOW_SAMPLES);
            let f = n.div_ceil(HOP);
            if tokens_for_frames(f) == 0 {
                return Err(RequestError::Audio(format!(
                    "clip {i} has {n} samples at 16 kHz; it takes at least {} (3 frames) to make a token",
                    2 * HOP + 1
                ))
                .into());
            }
            samples.resize(WINDOW_SAMPLES, 0.0);
            windows.extend(samples);
            frames.push(f);
        }
        if windows.is_empty() {
            return Ok(AudioFeatures { data: Vec::new(), mels: self.mel.mels(), frames });
        }
        let all = Audio { samples: windows, sample_rate: SAMPLE_RATE };
        let (data, _) = self.mel.features(dev, &all)?;
        Ok(AudioFeatures { data, mels: self.mel.mels(), frames })
    }

    /// `text` with each placeholder expanded into its clip's tokens (`counts`, in order).
    pub fn expand(&self, text: &str, counts: &[usize]) -> Result<String> {
        let found = text.matches(self.audio_token.as_str()).count();
        if found != counts.len() {
            return Err(RequestError::Audio(format!(
                "the prompt has {found} audio placeholders ({}) for {} clips",
                self.audio_token,
                counts.len()
            ))
            .into());
        }
        let mut out = String::with_capacity(text.len());
        let mut pieces = text.split(self.audio_token.as_str());
        out.push_str(pieces.next().unwrap_or_default());
        for (piece, &n) in pieces.zip(counts) {
            out.push_str(&self.audio_token.repeat(n));
            out.push_str(piece);
        }
        Ok(out)
    }
}

/// The audio side of an audio-language model (Qwen2-Audio): the encoder with its masked keys,
/// the pool, the final LayerNorm, the projector into the text decoder's width, the processor
/// and the token marking audio positions.
#[derive(Debug)]
pub struct AudioTower {
    dev: Device,
    encoder: AudioEncoder,
    proj: Affine,
    /// Width of the text decoder the projector writes.
    pub text_hidden: usize,
    /// Features and prompt markup.
    pub processor: AudioProcessor,
    /// The audio token's id (`audio_token_index`).
    pub audio_token_id: u32,
}

impl std::fmt::Debug for AudioEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioEncoder").field("dims", &self.dims).finish_non_exhaustive()
    }
}

impl AudioTower {
    /// Load Qwen2-Audio's tower: the encoder under `encoder` (`audio_tower`, or transformers
    /// 5.x's `model.audio_tower`), the projector `{projector}.linear`, the processor settings
    /// from `processor`.
    pub(crate) fn load(
        dev: &Device,
        dir: &HfDir,
        names: (&str, &str),
        dims: EncoderDims,
        text_hidden: usize,
        processor: AudioProcessor,
        audio_token_id: u32,
    ) -> Result<AudioTower> {
        let (encoder, projector) = names;
        let src = HfSource { dir, d: dims.d, encoder };
        let encoder = AudioEncoder::load(dev, &src, dims)?;
        let w = format!("{projector}.linear.weight");
        let b = format!("{projector}.linear.bias");
        let proj = Affine {
            w: dev.upload_f32(&w, &dir.f32(&w, &[text_hidden, dims.d])?, &[text_hidden, dims.d], DType::F32)?,
            b: Some(dev.upload_f32(&b, &dir.f32(&b, &[text_hidden])?, &[text_hidden], DType::F32)?),
            n: text_hidden,
            k: dims.d,
        };
        Ok(AudioTower { dev: dev.clone(), encoder, proj, text_hidden, processor, audio_token_id })
    }

    /// Mel filters the encoder takes.
    pub fn mels(&self) -> usize {
        self.encoder.dims.mels
    }

    /// Record the tower over `features`: one `[750, text hidden]` tensor per clip, of whose
    /// rows the first [`AudioFeatures::tokens`] hold the clip's tokens. Each clip runs alone,
    /// so that the largest buffer is one clip's (its MLP's `[1500, ffn]`), whatever the count.
    pub fn embed(&self, rec: &mut Recorder, features: &AudioFeatures) -> Result<Vec<Tensor>> {
        Ok(self.record(rec, features)?.into_iter().map(|(_, out)| out).collect())
    }

    /// [`AudioTower::embed`], also returning each clip's normed tower output `[750, d]`.
    fn record(&self, rec: &mut Recorder, features: &AudioFeatures) -> Result<Vec<(Tensor, Tensor)>> {
        let dev = self.dev.clone();
        let (mels, d) = (self.mels(), self.encoder.dims.d);
        features.validate(mels)?;
        let per = WINDOW_FRAMES * mels;
        let rows = self.rows_per_clip();
        let mut outs = Vec::with_capacity(features.clips());
        for (c, &frames) in features.frames.iter().enumerate() {
            let data = &features.data[c * per..(c + 1) * per];
            let t = dev.upload_f32("audio features", data, &[1, WINDOW_FRAMES, mels], DType::F32)?;
            let h = self.encoder.hidden(&dev, rec, &t, &[positions_for_frames(frames)])?;
            let pool = Pool1dParams { seqs: 1, len: AUDIO_CTX, dim: d, kernel: 2 };
            let pooled = dev.empty("audio pooled", &[rows, d], DType::F32)?;
            flint_kernels::audio::avg_pool1d(&dev, rec, &pool, &h, &pooled)?;
            let normed = dev.empty("audio normed", &[rows, d], DType::F32)?;
            self.encoder.norm(&dev, rec, &pooled, rows, &normed)?;
            let out = dev.empty("audio embeddings", &[rows, self.text_hidden], DType::F32)?;
            self.proj.forward(&dev, rec, &normed, rows, &out)?;
            outs.push((normed, out));
        }
        Ok(outs)
    }

    /// FLOPs of one clip through the tower (convolutions, blocks over the whole window, the
    /// projector), multiply-adds counting two.
    pub fn flops_per_clip(&self) -> f64 {
        let e = &self.encoder.dims;
        let (t, d, f) = (AUDIO_CTX as f64, e.d as f64, e.ffn as f64);
        let convs = 2.0 * WINDOW_FRAMES as f64 * d * (e.mels * 3) as f64 + 2.0 * t * d * d * 3.0;
        let layer = 2.0 * t * d * d * 4.0 + 2.0 * t * d * f * 2.0 + 4.0 * t * t * d;
        convs + e.layers as f64 * layer + 2.0 * (t / 2.0) * d * self.text_hidden as f64
    }

    /// Rows of each clip's tensor in [`AudioTower::embed`]'s output.
    pub fn rows_per_clip(&self) -> usize {
        AUDIO_CTX / 2
    }

    /// The tower's output (after the pool and the norm, before the projector) and the
    /// projector's, each clip's token rows only, concatenated, read back: what conformance
    /// compares stage by stage.
    pub fn stages(&self, features: &AudioFeatures) -> Result<(Vec<f32>, Vec<f32>)> {
        let dev = self.dev.clone();
        let mut rec = Recorder::new(&dev);
        let outs = self.record(&mut rec, features)?;
        rec.submit()?.wait()?;
        let (mut enc, mut proj) = (Vec::new(), Vec::new());
        for ((normed, out), n) in outs.iter().zip(features.tokens()) {
            enc.extend_from_slice(&dev.read_f32(normed)?[..n * self.encoder.dims.d]);
            proj.extend_from_slice(&dev.read_f32(out)?[..n * self.text_hidden]);
        }
        Ok((enc, proj))
    }
}

/// Where a model's tensors come from, asked for by CTranslate2's names.
pub(crate) trait Source {
    /// The f32 values of tensor `name` (CTranslate2's name), checked against `shape`.
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

impl Source for Ct2File {
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ct2File::f32s(self, name, shape)
    }
}

/// A Hugging Face checkpoint (`WhisperForConditionalGeneration`, or an audio-language model's
/// audio tower) seen through CTranslate2's names: its separate Q/K/V (and cross-attention K/V)
/// projections concatenated as CTranslate2 fuses them, with the key projection's missing bias
/// as zeros. `encoder/...` names map under `encoder` (`model.encoder` for Whisper,
/// `audio_tower` for Qwen2-Audio), `decoder/...` under `model.decoder`.
pub(crate) struct HfSource<'a> {
    pub(crate) dir: &'a HfDir,
    pub(crate) d: usize,
    pub(crate) encoder: &'a str,
}

impl HfSource<'_> {
    fn missing(&self, name: &str) -> RuntimeError {
        file_err(&self.dir.dir, format!("no Hugging Face tensor for CTranslate2's {name}"))
    }
}

impl Source for HfSource<'_> {
    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let parts: Vec<&str> = name.split('/').collect();
        let (side, rest) = match parts.as_slice() {
            ["encoder", rest @ ..] => (self.encoder, rest),
            ["decoder", rest @ ..] => ("model.decoder", rest),
            _ => return Err(self.missing(name)),
        };
        let get = |n: &str, shape: &[usize]| self.dir.f32(n, shape);
        let d = self.d;
        let param = |leaf: &str| match leaf {
            "gamma" | "weight" => "weight",
            _ => "bias",
        };
        match rest {
            ["conv1" | "conv2", leaf] => get(&format!("{side}.{}.{leaf}", rest[0]), shape),
            ["position_encodings", "encodings"] => get(&format!("{side}.embed_positions.weight"), shape),
            ["embeddings", "weight"] => get("model.decoder.embed_tokens.weight", shape),
            ["layer_norm", leaf] => get(&format!("{side}.layer_norm.{}", param(leaf)), shape),
            [layer, block, module, leaf] => {
                let l = layer.strip_prefix("layer_").ok_or_else(|| self.missing(name))?;
                let p = format!("{side}.layers.{l}");
                let leaf_name = param(leaf);
                let fused = |projs: &[&str]| -> Result<Vec<f32>> {
                    let attn = if *block == "attention" { "encoder_attn" } else { "self_attn" };
                    let mut out = Vec::with_capacity(shape.iter().product());
                    for proj in projs {
                        let n = format!("{p}.{attn}.{proj}_proj.{leaf_name}");
                        if leaf_name == "bias" && *proj == "k" && !self.dir.has(&n) {
                            out.extend(std::iter::repeat_n(0.0, d));
                        } else if leaf_name == "bias" {
                            out.extend(get(&n, &[d])?);
                        } else {
                            out.extend(get(&n, &[d, d])?);
                        }
                    }
                    Ok(out)
                };
                match (*block, *module) {
                    ("self_attention", "layer_norm") => get(&format!("{p}.self_attn_layer_norm.{leaf_name}"), shape),
                    ("self_attention", "linear_0") => fused(&["q", "k", "v"]),
                    ("self_attention", "linear_1") => get(&format!("{p}.self_attn.out_proj.{leaf_name}"), shape),
                    ("attention", "layer_norm") => get(&format!("{p}.encoder_attn_layer_norm.{leaf_name}"), shape),
                    ("attention", "linear_0") => fused(&["q"]),
                    ("attention", "linear_1") => fused(&["k", "v"]),
                    ("attention", "linear_2") => get(&format!("{p}.encoder_attn.out_proj.{leaf_name}"), shape),
                    ("ffn", "layer_norm") => get(&format!("{p}.final_layer_norm.{leaf_name}"), shape),
                    ("ffn", "linear_0") => get(&format!("{p}.fc1.{leaf_name}"), shape),
                    ("ffn", "linear_1") => get(&format!("{p}.fc2.{leaf_name}"), shape),
                    _ => Err(self.missing(name)),
                }
            }
            _ => Err(self.missing(name)),
        }
    }
}
