//! Whisper speech recognition on the GPU, from CTranslate2 model directories (`model.bin`,
//! `config.json`, `tokenizer.json`, as faster-whisper uses them) and Hugging Face directories
//! (`WhisperForConditionalGeneration`: safetensors in f32, f16 or bf16).
//!
//! Encoder: the log-mel features `[3000, mels]` of a 30-second window through two convolutions
//! over time (kernel 3; strides 1 and 2) with exact GELU, plus sinusoidal positions, then
//! pre-LN blocks of biased bidirectional attention and a GELU MLP, and a final LayerNorm:
//! `[1500, d]`. Decoder: token embeddings plus learned positions, pre-LN blocks of causal
//! self-attention over a KV cache of the window's tokens, cross-attention over the encoder
//! output (its keys and values computed once per window) and a GELU MLP, a final LayerNorm, and
//! the embedding matrix as the output head. Decoding is greedy from `<|startoftranscript|>`
//! (plus language and task tokens for multilingual models) and `<|notimestamps|>`, with the
//! suppressed tokens of the model's config (and its blank and end of text at the first step) and
//! the timestamps suppressed; or, with timestamps, from the same prompt without
//! `<|notimestamps|>` under Whisper's timestamp rules, giving timed segments. A
//! multilingual model takes a language (its tokens listed by `lang_ids` in a CTranslate2
//! config.json, `lang_to_id` in a Hugging Face generation_config.json) or detects it from a
//! clip's first window, and transcribes or translates into English. Each window is decoded from
//! the start token (no text carried over), up to [`MAX_BATCH`] windows at once.
//!
//! CTranslate2 fuses projections (self-attention Q/K/V in one `linear_0`, cross-attention K/V
//! in `linear_1`); flint splits them at load and appends keys and values to one cache page per
//! window (`append_kv`).

use std::path::{Path, PathBuf};
use web_time::Instant;

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, KvCache, PageTable};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::matmul::MatmulParams;
use flint_ref::norm::{NormKind, NormParams};

use crate::audio::{Audio, LogMel};
use crate::ct2::Ct2File;
use crate::hf::{Config, HfDir, read_json};
use crate::model::audio::{AudioEncoder, EncoderDims, HfSource, Source, fused_rows, layer_norm};
use crate::model::vision::{Affine as Linear, LayerNorm as Norm};
use crate::{Result, RuntimeError};

pub use crate::model::audio::{AUDIO_CTX, WINDOW_FRAMES};
/// Most decoder positions (Whisper's text context).
pub const MAX_TEXT_CTX: usize = 448;
/// Largest width flint accepts from a Whisper file (large-v3 is 1280).
pub const MAX_WIDTH: usize = 4096;

const EPS: f32 = 1e-5;

/// Shapes and special tokens of a Whisper model.
#[derive(Clone, Debug, PartialEq)]
pub struct WhisperConfig {
    /// Mel filters of the features.
    pub mels: usize,
    /// Width.
    pub d_model: usize,
    /// MLP width.
    pub ffn: usize,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_heads: usize,
    /// Decoder attention heads.
    pub decoder_heads: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Decoder positions.
    pub text_ctx: usize,
    /// Whether the model is multilingual (language and task tokens after the start token).
    pub multilingual: bool,
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|notimestamps|>`; ids above it are timestamps.
    pub no_timestamps: u32,
    /// Language codes (`en`, `fr`, ...) and their tokens, for multilingual models.
    pub languages: Vec<(String, u32)>,
    /// `<|transcribe|>` and `<|translate|>`, for multilingual models.
    pub tasks: Option<(u32, u32)>,
    /// Tokens never generated (`suppress_ids` of config.json).
    pub suppress: Vec<u32>,
    /// Tokens not generated first (`suppress_ids_begin`).
    pub suppress_begin: Vec<u32>,
}

struct DecoderBlock {
    ln1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_cross: Norm,
    cross_q: Linear,
    cross_k: Linear,
    cross_v: Linear,
    cross_o: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// A Whisper model on one device.
pub struct Whisper {
    /// Shapes and special tokens.
    pub cfg: WhisperConfig,
    dev: Device,
    path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    mel: LogMel,
    encoder: AudioEncoder,
    /// The output head (the token embeddings), f16 where the adapter has it.
    embed: Tensor,
    /// The token embeddings on the host and the learned positions: a step's input rows are
    /// formed where its tokens are chosen.
    embed_host: Vec<f32>,
    pos_host: Vec<f32>,
    dec: Vec<DecoderBlock>,
    dec_ln: Norm,
}

/// What a multilingual model is asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Task {
    /// Write down what is said, in its language.
    #[default]
    Transcribe,
    /// Write it down in English.
    Translate,
}

/// Options of [`Whisper::transcribe_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscribeOptions {
    /// Most tokens per window.
    pub max_tokens: usize,
    /// Most windows decoded at once (1 to [`MAX_BATCH`]).
    pub batch: usize,
    /// The spoken language's code (`en`, `fr`, ...); `None` detects it from each clip's first
    /// window on multilingual models (English-only models take `None` or `en`).
    pub language: Option<String>,
    /// Transcribe or translate (multilingual models only).
    pub task: Task,
    /// Decode timestamps and return segments.
    pub timestamps: bool,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            max_tokens: 224,
            batch: MAX_BATCH,
            language: None,
            task: Task::Transcribe,
            timestamps: false,
        }
    }
}

/// A span of speech between two timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Start, in seconds from the clip's start.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
    /// Its text.
    pub text: String,
}

/// One window's decoder state.
struct Window {
    caches: Vec<KvCache>,
    cross: Vec<KvCache>,
    table: PageTable,
}

/// The latest timestamp a window's first token may be, in 20 ms steps (1 s, as CTranslate2's
/// and OpenAI's `max_initial_timestamp` default).
pub const MAX_INITIAL_TIMESTAMP: usize = 50;
/// Seconds per timestamp step.
pub const TIMESTAMP_STEP: f64 = 0.02;

/// Most windows [`Whisper::decode_batch`] decodes at once (the matrix-vector product's rows).
pub const MAX_BATCH: usize = flint_kernels::matmul::MATVEC_MAX_ROWS;

/// One window's or one file's transcription.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    /// Generated token ids (without the prompt and the end of text), window after window.
    pub ids: Vec<u32>,
    /// Each id's log-probability under the full softmax of the raw logits.
    pub logprobs: Vec<f32>,
    /// The text.
    pub text: String,
    /// Timed segments, when decoded with timestamps (times in seconds from the clip's start).
    pub segments: Vec<Segment>,
    /// The language it was decoded as (given or detected), for multilingual models.
    pub language: Option<String>,
    /// Audio length in seconds.
    pub audio_seconds: f64,
    /// 30-second windows.
    pub windows: usize,
    /// Seconds spent on the features (wall clock, with resampling, uploads and waits).
    pub features_s: f64,
    /// Encoder seconds (with the language detection of multilingual models).
    pub encoder_s: f64,
    /// Decoder seconds.
    pub decoder_s: f64,
}

pub(crate) fn file_err(path: &Path, m: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model(format!("{}: {m}", path.display()))
}

/// A list of token ids in a JSON config, each below `vocab`.
fn token_list(v: Option<&serde_json::Value>, vocab: usize, path: &Path, key: &str) -> Result<Vec<u32>> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or_else(|| file_err(path, format!("{key} is not a list")))?;
    list.iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .filter(|&x| (x as usize) < vocab)
                .ok_or_else(|| file_err(path, format!("{key}: {x} is not a token id below {vocab}")))
        })
        .collect()
}

impl WhisperConfig {
    /// A CTranslate2 model: shapes from `model.bin`, heads from its scalars, suppressed tokens
    /// from `config.json`, special tokens from `tokenizer.json`; multilingual when the
    /// vocabulary has more than English's 51864 tokens (as CTranslate2 decides).
    fn from_ct2(bin: &Ct2File, dir: &Path, tokenizer: &tokenizers::Tokenizer) -> Result<WhisperConfig> {
        let path = bin.path();
        if bin.spec != "WhisperSpec" {
            return Err(file_err(path, format!("spec {:?}; flint reads WhisperSpec models here", bin.spec)));
        }
        let shape = |name: &str| -> Result<Vec<usize>> {
            bin.get(name).map(|v| v.shape.clone()).ok_or_else(|| file_err(path, format!("no variable {name}")))
        };
        let (d, mels) = match shape("encoder/conv1/weight")?[..] {
            [d, mels, 3] => (d, mels),
            ref s => return Err(file_err(path, format!("encoder/conv1/weight has shape {s:?}, not [d, mels, 3]"))),
        };
        let ffn = shape("encoder/layer_0/ffn/linear_0/weight")?.first().copied().unwrap_or(0);
        let vocab = shape("decoder/embeddings/weight")?.first().copied().unwrap_or(0);
        let text_ctx = shape("decoder/position_encodings/encodings")?.first().copied().unwrap_or(0);
        let layers = |side: &str| {
            (0..).take_while(|i| bin.get(&format!("{side}/layer_{i}/ffn/linear_0/weight")).is_some()).count()
        };
        let heads = |name: &str| -> Result<usize> {
            usize::try_from(bin.scalar(name)?).map_err(|_| file_err(path, format!("{name} is negative")))
        };
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let cfg = WhisperConfig::with_tokens(
            tokenizer,
            dir,
            Shapes {
                mels,
                d_model: d,
                ffn,
                encoder_layers: layers("encoder"),
                decoder_layers: layers("decoder"),
                encoder_heads: heads("encoder/num_heads")?,
                decoder_heads: heads("decoder/num_heads")?,
                vocab,
                text_ctx,
            },
            vocab >= 51865,
            token_list(config.get("lang_ids"), vocab, &config_path, "lang_ids")?,
            token_list(config.get("suppress_ids"), vocab, &config_path, "suppress_ids")?,
            token_list(config.get("suppress_ids_begin"), vocab, &config_path, "suppress_ids_begin")?,
        )?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// A Hugging Face Whisper directory: shapes from `config.json`; multilingual and the
    /// suppressed tokens from `generation_config.json` (or `config.json`), special tokens from
    /// `tokenizer.json`.
    fn from_hf(hf: &HfDir, tokenizer: &tokenizers::Tokenizer) -> Result<WhisperConfig> {
        let c = Config::new(hf.dir.join("config.json"), &hf.config);
        let enc_ffn = c.usize("encoder_ffn_dim")?;
        if c.usize("decoder_ffn_dim")? != enc_ffn {
            return Err(c.error("decoder_ffn_dim", "differs from encoder_ffn_dim, which flint does not support"));
        }
        if c.usize_or("max_source_positions", AUDIO_CTX)? != AUDIO_CTX {
            return Err(c.error("max_source_positions", &format!("is not {AUDIO_CTX} (30-second windows)")));
        }
        if c.str_or("activation_function", "gelu")? != "gelu" {
            return Err(c.error("activation_function", "is not gelu"));
        }
        if c.bool_or("scale_embedding", false)? {
            return Err(c.error("scale_embedding", "is true, which flint does not support"));
        }
        let vocab = c.usize("vocab_size")?;
        let gen_path = hf.dir.join("generation_config.json");
        let generation = if gen_path.exists() { read_json(&gen_path)? } else { serde_json::Value::Null };
        let (list_src, list_path) =
            if generation.get("suppress_tokens").is_some() { (&generation, &gen_path) } else { (&hf.config, &c.path) };
        let multilingual = generation.get("is_multilingual").and_then(|v| v.as_bool()).unwrap_or(vocab >= 51865);
        let cfg = WhisperConfig::with_tokens(
            tokenizer,
            &hf.dir,
            Shapes {
                mels: c.usize("num_mel_bins")?,
                d_model: c.usize("d_model")?,
                ffn: enc_ffn,
                encoder_layers: c.usize("encoder_layers")?,
                decoder_layers: c.usize("decoder_layers")?,
                encoder_heads: c.usize("encoder_attention_heads")?,
                decoder_heads: c.usize("decoder_attention_heads")?,
                vocab,
                text_ctx: c.usize("max_target_positions")?,
            },
            multilingual,
            {
                // lang_to_id: {"<|en|>": 50259, ...}, in id order.
                let mut ids: Vec<u32> = Vec::new();
                if let Some(map) = generation.get("lang_to_id").and_then(|m| m.as_object()) {
                    let list: Vec<serde_json::Value> = map.values().cloned().collect();
                    ids = token_list(Some(&serde_json::Value::Array(list)), vocab, &gen_path, "lang_to_id")?;
                }
                ids.sort_unstable();
                ids
            },
            token_list(list_src.get("suppress_tokens"), vocab, list_path, "suppress_tokens")?,
            token_list(list_src.get("begin_suppress_tokens"), vocab, list_path, "begin_suppress_tokens")?,
        )?;
        cfg.validate(&c.path)?;
        Ok(cfg)
    }

    fn with_tokens(
        tokenizer: &tokenizers::Tokenizer,
        dir: &Path,
        s: Shapes,
        multilingual: bool,
        language_ids: Vec<u32>,
        suppress: Vec<u32>,
        suppress_begin: Vec<u32>,
    ) -> Result<WhisperConfig> {
        let need = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| file_err(&dir.join("tokenizer.json"), format!("no token {t}")))
        };
        let tasks = if multilingual { Some((need("<|transcribe|>")?, need("<|translate|>")?)) } else { None };
        let mut languages = Vec::new();
        if multilingual {
            for &id in &language_ids {
                let token = tokenizer.id_to_token(id).unwrap_or_default();
                let Some(code) = token.strip_prefix("<|").and_then(|t| t.strip_suffix("|>")) else {
                    return Err(file_err(
                        &dir.join("tokenizer.json"),
                        format!("language token {id} is {token:?}, not <|xx|>"),
                    ));
                };
                languages.push((code.to_string(), id));
            }
            if languages.is_empty() {
                return Err(file_err(dir, "a multilingual model whose config lists no language tokens"));
            }
        }
        Ok(WhisperConfig {
            mels: s.mels,
            d_model: s.d_model,
            ffn: s.ffn,
            encoder_layers: s.encoder_layers,
            decoder_layers: s.decoder_layers,
            encoder_heads: s.encoder_heads,
            decoder_heads: s.decoder_heads,
            vocab: s.vocab,
            text_ctx: s.text_ctx,
            multilingual,
            eot: need("<|endoftext|>")?,
            sot: need("<|startoftranscript|>")?,
            no_timestamps: need("<|notimestamps|>")?,
            languages,
            tasks,
            suppress,
            suppress_begin,
        })
    }

    /// Check the shapes flint can run, naming `path` in errors.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(file_err(path, m));
        let d = self.d_model;
        if !(1..=MAX_WIDTH).contains(&d) || !d.is_multiple_of(64) {
            return bad(format!("width {d}: flint takes multiples of 64 up to {MAX_WIDTH}"));
        }
        for (what, h) in [("encoder", self.encoder_heads), ("decoder", self.decoder_heads)] {
            if h == 0 || !d.is_multiple_of(h) || d / h > 256 || !(d / h).is_multiple_of(4) {
                return bad(format!(
                    "{h} {what} heads do not split width {d} into heads of at most 256 (a multiple of 4)"
                ));
            }
        }
        if !(1..=512).contains(&self.mels) || self.ffn == 0 || self.ffn > 4 * MAX_WIDTH {
            return bad(format!("{} mel filters and an MLP of {} are outside what flint takes", self.mels, self.ffn));
        }
        let layers = (self.encoder_layers, self.decoder_layers);
        if layers.0 == 0 || layers.1 == 0 || layers.0 > 256 || layers.1 > 256 {
            return bad(format!("{} encoder and {} decoder layers (1 to 256 each)", layers.0, layers.1));
        }
        // The longest prompt is four tokens, and one more position is needed to generate.
        if !(5..=MAX_TEXT_CTX).contains(&self.text_ctx) || !(1..=1 << 20).contains(&self.vocab) {
            return bad(format!(
                "a text context of {} (5 to {MAX_TEXT_CTX}) and a vocabulary of {}",
                self.text_ctx, self.vocab
            ));
        }
        let specials = [self.eot, self.sot, self.no_timestamps]
            .into_iter()
            .chain(self.tasks.iter().flat_map(|&(a, b)| [a, b]))
            .chain(self.languages.iter().map(|l| l.1));
        for t in specials {
            if t as usize >= self.vocab {
                return bad(format!("special token {t} is outside the vocabulary of {}", self.vocab));
            }
        }
        Ok(())
    }
}

/// The shapes both readers find.
struct Shapes {
    mels: usize,
    d_model: usize,
    ffn: usize,
    encoder_layers: usize,
    decoder_layers: usize,
    encoder_heads: usize,
    decoder_heads: usize,
    vocab: usize,
    text_ctx: usize,
}

impl Whisper {
    /// Load a Whisper model: a CTranslate2 directory (or its `model.bin`, with `config.json`
    /// and `tokenizer.json` beside it), or a Hugging Face directory of
    /// `WhisperForConditionalGeneration` (`config.json`, safetensors, `tokenizer.json`, and
    /// `generation_config.json` when it has one).
    pub fn load(dev: &Device, path: &Path) -> Result<Whisper> {
        let (dir, bin_path) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.bin"))
        } else {
            (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
        };
        let tok_path = dir.join("tokenizer.json");
        crate::check_regular(&tok_path).map_err(|e| RuntimeError::io(&tok_path, e))?;
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| RuntimeError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        if path.is_dir() && !bin_path.exists() {
            let hf = HfDir::open(&dir)?;
            let cfg = WhisperConfig::from_hf(&hf, &tokenizer)?;
            let src = HfSource { dir: &hf, d: cfg.d_model, encoder: "model.encoder" };
            let f16 = hf.main_dtype() == safetensors::Dtype::F16;
            return Whisper::build(dev, &src, f16, cfg, dir.join("config.json"), tokenizer);
        }
        let bin = Ct2File::open(&bin_path)?;
        let cfg = WhisperConfig::from_ct2(&bin, &dir, &tokenizer)?;
        let f16 = bin.get("decoder/embeddings/weight").is_some_and(|v| v.dtype == crate::ct2::Ct2Type::F16);
        Whisper::build(dev, &bin, f16, cfg, bin_path, tokenizer)
    }

    fn build(
        dev: &Device,
        bin: &dyn Source,
        f16_source: bool,
        cfg: WhisperConfig,
        bin_path: PathBuf,
        tokenizer: tokenizers::Tokenizer,
    ) -> Result<Whisper> {
        let (d, f) = (cfg.d_model, cfg.ffn);
        // The encoder's products are matmuls of 1500 rows, fastest from f32 weights (see
        // AudioEncoder); the decoder's are matrix-vector products bound by the bytes of their
        // weights, read as f16 when the checkpoint stores f16 (so nothing is rounded) and the
        // adapter has it.
        let dec_dt = if dev.caps().f16 && f16_source { DType::F16 } else { DType::F32 };
        let dpart = |name: &str, total: usize, rows: std::ops::Range<usize>, k: usize| {
            fused_rows(dev, bin, name, total, rows, k, dec_dt)
        };
        let dlinear = |name: &str, n: usize, k: usize| dpart(name, n, 0..n, k);
        let norm = |name: &str| layer_norm(dev, bin, name, d);
        let dims =
            EncoderDims { mels: cfg.mels, d, ffn: f, heads: cfg.encoder_heads, layers: cfg.encoder_layers, eps: EPS };
        let encoder = AudioEncoder::load(dev, bin, dims)?;
        let embed = bin.f32s("decoder/embeddings/weight", &[cfg.vocab, d])?;
        let mut dec = Vec::with_capacity(cfg.decoder_layers);
        for l in 0..cfg.decoder_layers {
            let p = format!("decoder/layer_{l}");
            let qkv = format!("{p}/self_attention/linear_0");
            let kv = format!("{p}/attention/linear_1");
            dec.push(DecoderBlock {
                ln1: norm(&format!("{p}/self_attention/layer_norm"))?,
                q: dpart(&qkv, 3 * d, 0..d, d)?,
                k: dpart(&qkv, 3 * d, d..2 * d, d)?,
                v: dpart(&qkv, 3 * d, 2 * d..3 * d, d)?,
                o: dlinear(&format!("{p}/self_attention/linear_1"), d, d)?,
                ln_cross: norm(&format!("{p}/attention/layer_norm"))?,
                cross_q: dlinear(&format!("{p}/attention/linear_0"), d, d)?,
                cross_k: dpart(&kv, 2 * d, 0..d, d)?,
                cross_v: dpart(&kv, 2 * d, d..2 * d, d)?,
                cross_o: dlinear(&format!("{p}/attention/linear_2"), d, d)?,
                ln2: norm(&format!("{p}/ffn/layer_norm"))?,
                fc1: dlinear(&format!("{p}/ffn/linear_0"), f, d)?,
                fc2: dlinear(&format!("{p}/ffn/linear_1"), d, f)?,
            });
        }
        Ok(Whisper {
            mel: LogMel::new(dev, cfg.mels)?,
            encoder,
            embed: dev.upload_f32("decoder/embeddings/weight", &embed, &[cfg.vocab, d], dec_dt)?,
            embed_host: embed.clone(),
            pos_host: bin.f32s("decoder/position_encodings/encodings", &[cfg.text_ctx, d])?,
            dec,
            dec_ln: norm("decoder/layer_norm")?,
            dev: dev.clone(),
            path: bin_path,
            tokenizer,
            cfg,
        })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log-mel extractor this model's features come from.
    pub fn log_mel(&self) -> &LogMel {
        &self.mel
    }

    fn norm(&self, rec: &mut Recorder, x: &Tensor, n: &Norm, rows: usize, out: &Tensor) -> Result<()> {
        let p = NormParams { kind: NormKind::Layer, rows, dim: self.cfg.d_model, eps: EPS };
        Ok(flint_kernels::norm::norm(&self.dev, rec, &p, x, &n.w, Some(&n.b), out)?)
    }

    fn gelu(&self, rec: &mut Recorder, x: &Tensor, n: usize, out: &Tensor) -> Result<()> {
        let p = EltParams::unary(EltOp::GeluErf, n);
        Ok(flint_kernels::elementwise::elementwise(&self.dev, rec, &p, x, None, out)?)
    }

    fn residual(&self, rec: &mut Recorder, x: &Tensor, y: &Tensor, n: usize) -> Result<()> {
        let p = EltParams { op: EltOp::ResidualAdd, n, b_len: n, scale: 1.0 };
        Ok(flint_kernels::elementwise::residual_add(&self.dev, rec, &p, x, y)?)
    }

    fn attn(&self, heads: usize, q_len: usize, mask: Mask) -> AttnParams {
        let hd = self.cfg.d_model / heads;
        AttnParams {
            seqs: 1,
            q_len,
            n_heads: heads,
            n_kv_heads: heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            mask,
            additive_mask: false,
            mask_stride: 0,
        }
    }

    /// Record the encoder over one window's features `[3000, mels]`: `[1500, d]`.
    pub fn encode(&self, rec: &mut Recorder, features: &Tensor) -> Result<Tensor> {
        let d = self.cfg.d_model;
        features.expect("whisper features", &[WINDOW_FRAMES, self.cfg.mels], DType::F32).map_err(RuntimeError::Gpu)?;
        let window = features.view(0, &[1, WINDOW_FRAMES, self.cfg.mels], DType::F32)?;
        let x = self.encoder.hidden(&self.dev, rec, &window, &[AUDIO_CTX])?;
        let out = self.dev.empty("whisper encoder out", &[AUDIO_CTX, d], DType::F32)?;
        self.encoder.norm(&self.dev, rec, &x, AUDIO_CTX, &out)?;
        Ok(out)
    }

    /// The encoder output of one window's features (host `[3000, mels]`), read back.
    pub fn encode_host(&self, features: &[f32]) -> Result<Vec<f32>> {
        let t = self.dev.upload_f32("whisper features", features, &[WINDOW_FRAMES, self.cfg.mels], DType::F32)?;
        let mut rec = Recorder::new(&self.dev);
        let out = self.encode(&mut rec, &t)?;
        rec.submit()?.wait()?;
        Ok(self.dev.read_f32(&out)?)
    }

    /// The prompt of English transcription: `<|startoftranscript|>`, `<|en|><|transcribe|>` for
    /// multilingual models (or the model's first language, should it lack English),
    /// `<|notimestamps|>`.
    pub fn prompt(&self) -> Vec<u32> {
        let first = self.cfg.languages.iter().find(|l| l.0 == "en").or(self.cfg.languages.first());
        let code = first.map(|l| l.0.as_str());
        self.prompt_for(code, Task::Transcribe).unwrap_or_else(|_| vec![self.cfg.sot, self.cfg.no_timestamps])
    }

    /// Whether the vocabulary holds Whisper's 1501 timestamps (0.00 to 30.00 s) after
    /// `<|notimestamps|>`.
    pub fn has_timestamps(&self) -> bool {
        self.cfg.no_timestamps as usize + 1 + 1501 <= self.cfg.vocab
    }

    /// The prompt a window's decoding starts from: `<|startoftranscript|>`, then for
    /// multilingual models the language's token (`language` a code such as `fr`; `None` only
    /// for English-only models) and the task's, then `<|notimestamps|>`. English-only models
    /// take English transcription only.
    pub fn prompt_for(&self, language: Option<&str>, task: Task) -> Result<Vec<u32>> {
        self.prompt_with(language, task, false)
    }

    /// [`Whisper::prompt_for`], without `<|notimestamps|>` when `timestamps` is set: decoding
    /// then writes timestamp tokens around each segment.
    pub fn prompt_with(&self, language: Option<&str>, task: Task, timestamps: bool) -> Result<Vec<u32>> {
        let mut p = self.prompt_notimestamps(language, task)?;
        if timestamps {
            p.pop();
        }
        Ok(p)
    }

    fn prompt_notimestamps(&self, language: Option<&str>, task: Task) -> Result<Vec<u32>> {
        let c = &self.cfg;
        let Some((transcribe, translate)) = c.tasks else {
            if language.is_some_and(|l| l != "en") || task == Task::Translate {
                return Err(RuntimeError::Request(format!(
                    "{} is an English-only model: it transcribes English only",
                    self.path.display()
                )));
            }
            return Ok(vec![c.sot, c.no_timestamps]);
        };
        let Some(code) = language else {
            return Err(RuntimeError::Request("a multilingual model needs a language (or detection)".into()));
        };
        let lang = self.language_token(code)?;
        Ok(vec![c.sot, lang, if task == Task::Translate { translate } else { transcribe }, c.no_timestamps])
    }

    /// The token of language `code` (`en`, `fr`, ...), or an error listing the model's languages.
    pub fn language_token(&self, code: &str) -> Result<u32> {
        let langs = &self.cfg.languages;
        langs.iter().find(|(c, _)| c == code).map(|l| l.1).ok_or_else(|| {
            let known: Vec<&str> = langs.iter().map(|(c, _)| c.as_str()).collect();
            RuntimeError::Request(format!(
                "language {code:?} is not one of the model's {} ({})",
                known.len(),
                if known.is_empty() { "English only".to_string() } else { known.join(", ") }
            ))
        })
    }

    /// The most likely language of one window, as Whisper detects it: the decoder's first step
    /// from `<|startoftranscript|>` alone, its logits restricted to the language tokens. The
    /// code and its probability among the languages; `None` for English-only models.
    pub fn detect_language(&self, encoded: &Tensor) -> Result<Option<(String, f32)>> {
        if self.cfg.languages.is_empty() {
            return Ok(None);
        }
        let w = self.window(std::slice::from_ref(encoded))?;
        let logits = self.step(&[self.cfg.sot], 1, 0, &w, &w.table, false)?;
        let max = self.cfg.languages.iter().map(|l| logits[l.1 as usize]).fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = self.cfg.languages.iter().map(|l| f64::from(logits[l.1 as usize] - max).exp()).sum();
        let best = self.cfg.languages.iter().max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]));
        Ok(best.map(|(code, id)| (code.clone(), (f64::from(logits[*id as usize] - max).exp() / total) as f32)))
    }

    /// Greedy decoding of one window from its encoder output `[1500, d]`: ids and log-probs, at
    /// most `max_tokens` (and the text context).
    pub fn decode(&self, encoded: &Tensor, max_tokens: usize) -> Result<(Vec<u32>, Vec<f32>)> {
        Ok(self.decode_batch(std::slice::from_ref(encoded), max_tokens)?.remove(0))
    }

    /// Greedy decoding of up to [`MAX_BATCH`] windows at once, one row of every matrix product
    /// per window still decoding: each step reads the decoder's weights once for all of them.
    /// The windows advance in step, each in its own cache page; a finished window leaves the
    /// batch. Ids and log-probs per window.
    pub fn decode_batch(&self, encoded: &[Tensor], max_tokens: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let prompts = vec![self.prompt(); encoded.len()];
        self.decode_inner(encoded, &prompts, max_tokens, true)
    }

    /// [`Whisper::decode_batch`] with a prompt per window ([`Whisper::prompt_with`]); the prompts
    /// must share one length and one timestamp mode (all with `<|notimestamps|>` or none).
    pub fn decode_prompted(
        &self,
        encoded: &[Tensor],
        prompts: &[Vec<u32>],
        max_tokens: usize,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        self.decode_inner(encoded, prompts, max_tokens, true)
    }

    /// Exactly `steps` greedy steps for each window, end of text or not (benchmarks: a fixed
    /// amount of work whatever the audio says).
    pub fn decode_steps(&self, encoded: &[Tensor], steps: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let prompts = vec![self.prompt(); encoded.len()];
        self.decode_inner(encoded, &prompts, steps, false)
    }

    fn decode_inner(
        &self,
        encoded: &[Tensor],
        prompts: &[Vec<u32>],
        max_tokens: usize,
        stop: bool,
    ) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
        let cfg = &self.cfg;
        let b = encoded.len();
        if b == 0 || b > MAX_BATCH || prompts.len() != b {
            return Err(RuntimeError::Request(format!(
                "{b} windows and {} prompts in one batch: 1 to {MAX_BATCH} of each",
                prompts.len()
            )));
        }
        let plen = prompts[0].len();
        if plen == 0
            || plen >= cfg.text_ctx
            || prompts.iter().any(|p| p.len() != plen || p.iter().any(|&t| t as usize >= cfg.vocab))
        {
            return Err(RuntimeError::Request(format!(
                "prompts must share one length below the text context of {} and hold ids below {}",
                cfg.text_ctx, cfg.vocab
            )));
        }
        let w = self.window(encoded)?;
        let budget = max_tokens.min(cfg.text_ctx - plen);
        let tokens: Vec<u32> = prompts.iter().flatten().copied().collect();
        // Timestamps unless the prompts ask for none; a batch is one or the other.
        let timestamps = !prompts[0].contains(&cfg.no_timestamps);
        if prompts.iter().any(|p| p.contains(&cfg.no_timestamps) == timestamps) {
            return Err(RuntimeError::Request("a batch mixes prompts with and without timestamps".into()));
        }
        if timestamps && !self.has_timestamps() {
            return Err(RuntimeError::Request(format!(
                "{} has no timestamp tokens after <|notimestamps|>",
                self.path.display()
            )));
        }
        let mut logits = self.step(&tokens, plen, 0, &w, &w.table, false)?;
        let mut out = vec![(Vec::new(), Vec::new()); b];
        // The windows still decoding, in the order of the rows of `logits`.
        let mut active: Vec<usize> = if budget == 0 { Vec::new() } else { (0..b).collect() };
        for step in 0..budget {
            let mut next = Vec::with_capacity(active.len());
            let mut still = Vec::with_capacity(active.len());
            for (&s, row) in active.iter().zip(logits.chunks_exact(cfg.vocab)) {
                let (tok, lp) = self.pick(row, &out[s].0, timestamps);
                if tok != cfg.eot || !stop {
                    out[s].0.push(tok);
                    out[s].1.push(lp);
                    still.push(s);
                    next.push(tok);
                }
            }
            if still.is_empty() || step + 1 == budget {
                break;
            }
            // A finished window leaves the batch: the next step's rows are the others only, each
            // still reading and writing its own page.
            let table = if still.len() == b {
                w.table.clone()
            } else {
                PageTable::new(&self.dev, &still.iter().map(|&s| vec![s as u32]).collect::<Vec<_>>(), b)?
            };
            active = still;
            logits = self.step(&next, 1, plen + step, &w, &table, false)?;
        }
        Ok(out)
    }

    /// The decoder's logits at every position of `ids` (from position 0, teacher-forced) over one
    /// window's encoder output: `[ids, vocab]`.
    pub fn decoder_logits(&self, encoded: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() || ids.len() > self.cfg.text_ctx || ids.iter().any(|&t| t as usize >= self.cfg.vocab) {
            return Err(RuntimeError::Request(format!(
                "{} ids: Whisper's decoder takes 1 to {} ids below {}",
                ids.len(),
                self.cfg.text_ctx,
                self.cfg.vocab
            )));
        }
        let w = self.window(std::slice::from_ref(encoded))?;
        self.step(ids, ids.len(), 0, &w, &w.table, true)
    }

    /// The decoding state of a batch of windows: the cross-attention keys and values of each
    /// window's encoder output `[1500, d]` (recorded and submitted) in one page per window,
    /// self-attention caches of one page of the text context per window, the page table.
    fn window(&self, encoded: &[Tensor]) -> Result<Window> {
        let (dev, cfg) = (&self.dev, &self.cfg);
        let (d, b) = (cfg.d_model, encoded.len());
        let mut rec = Recorder::new(dev);
        let mut cross = Vec::with_capacity(self.dec.len());
        let mut caches = Vec::with_capacity(self.dec.len());
        let page = (AUDIO_CTX * d * 4) as u64;
        for blk in &self.dec {
            let k = dev.empty("whisper cross k", &[b, AUDIO_CTX, d], DType::F32)?;
            let v = dev.empty("whisper cross v", &[b, AUDIO_CTX, d], DType::F32)?;
            for (s, e) in encoded.iter().enumerate() {
                e.expect("whisper encoder output", &[AUDIO_CTX, d], DType::F32).map_err(RuntimeError::Gpu)?;
                let (ks, vs) = (
                    k.view(s as u64 * page, &[AUDIO_CTX, d], DType::F32)?,
                    v.view(s as u64 * page, &[AUDIO_CTX, d], DType::F32)?,
                );
                blk.cross_k.forward(dev, &mut rec, e, AUDIO_CTX, &ks)?;
                blk.cross_v.forward(dev, &mut rec, e, AUDIO_CTX, &vs)?;
            }
            cross.push(KvCache { k, v, page_size: AUDIO_CTX, num_pages: b });
            let k = dev.empty("whisper self k", &[b, cfg.text_ctx, d], DType::F32)?;
            let v = dev.empty("whisper self v", &[b, cfg.text_ctx, d], DType::F32)?;
            caches.push(KvCache { k, v, page_size: cfg.text_ctx, num_pages: b });
        }
        rec.submit()?;
        Ok(Window { caches, cross, table: PageTable::contiguous(dev, b)? })
    }

    /// The greedy choice over `logits` after the tokens `generated` so far, with Whisper's
    /// suppressions, and its log-probability under the full softmax of the raw logits.
    /// Without timestamps, `<|notimestamps|>` and every timestamp after it are suppressed; with
    /// them, Whisper's timestamp rules apply (transformers' WhisperTimeStampLogitsProcessor,
    /// OpenAI's ApplyTimestampRules):
    /// timestamps come in pairs and never decrease, the first token is a timestamp of at most
    /// 1 s, and a timestamp is taken whenever the timestamps together are likelier than the best
    /// text token.
    fn pick(&self, logits: &[f32], generated: &[u32], timestamps: bool) -> (u32, f32) {
        pick(&self.cfg, logits, generated, timestamps)
    }

    /// Run `per_seq` tokens of each window (`tokens` holds them window after window) at
    /// positions `pos0..` through the decoder, appending their keys and values to the caches;
    /// the logits of each window's last token (`[windows, vocab]`), or of every token.
    fn step(
        &self,
        tokens: &[u32],
        per_seq: usize,
        pos0: usize,
        w: &Window,
        table: &PageTable,
        all_rows: bool,
    ) -> Result<Vec<f32>> {
        let (dev, cfg) = (&self.dev, &self.cfg);
        let (d, n, b) = (cfg.d_model, tokens.len(), table.rows());
        debug_assert_eq!(n, b * per_seq);
        let mut rec = Recorder::new(dev);
        let mut rows = Vec::with_capacity(n * d);
        for (i, &t) in tokens.iter().enumerate() {
            let p = pos0 + i % per_seq;
            let (e, p) = (&self.embed_host[t as usize * d..][..d], &self.pos_host[p * d..][..d]);
            rows.extend(e.iter().zip(p).map(|(e, p)| e + p));
        }
        let x = dev.upload_f32("whisper decoder hidden", &rows, &[n, d], DType::F32)?;
        let heads = cfg.decoder_heads;
        let hd = d / heads;
        let self_attn = AttnParams { seqs: b, ..self.attn(heads, per_seq, Mask::Causal) };
        let self_spec = vec![SeqSpec { kv_len: pos0 + per_seq, q_pos0: pos0 }; b];
        let cross_attn = AttnParams { seqs: b, ..self.attn(heads, per_seq, Mask::None) };
        let cross_spec = vec![SeqSpec { kv_len: AUDIO_CTX, q_pos0: 0 }; b];
        let dest: Vec<(usize, usize)> = (0..n).map(|i| (i / per_seq, pos0 + i % per_seq)).collect();
        let normed = dev.empty("whisper decoder normed", &[n, d], DType::F32)?;
        let (q, o, y) = (
            dev.empty("whisper decoder q", &[n, d], DType::F32)?,
            dev.empty("whisper decoder attention", &[n, d], DType::F32)?,
            dev.empty("whisper decoder proj", &[n, d], DType::F32)?,
        );
        let (k, v) = (
            dev.empty("whisper decoder k", &[n, d], DType::F32)?,
            dev.empty("whisper decoder v", &[n, d], DType::F32)?,
        );
        for ((blk, cache), cross) in self.dec.iter().zip(&w.caches).zip(&w.cross) {
            self.norm(&mut rec, &x, &blk.ln1, n, &normed)?;
            blk.q.forward(dev, &mut rec, &normed, n, &q)?;
            blk.k.forward(dev, &mut rec, &normed, n, &k)?;
            blk.v.forward(dev, &mut rec, &normed, n, &v)?;
            attention::append_kv(dev, &mut rec, heads, hd, &k, &v, &dest, cache, table)?;
            attention::attention(dev, &mut rec, &self_attn, &self_spec, &q, cache, table, None, &o)?;
            blk.o.forward(dev, &mut rec, &o, n, &y)?;
            self.residual(&mut rec, &x, &y, n * d)?;

            self.norm(&mut rec, &x, &blk.ln_cross, n, &normed)?;
            blk.cross_q.forward(dev, &mut rec, &normed, n, &q)?;
            attention::attention(dev, &mut rec, &cross_attn, &cross_spec, &q, cross, table, None, &o)?;
            blk.cross_o.forward(dev, &mut rec, &o, n, &y)?;
            self.residual(&mut rec, &x, &y, n * d)?;

            self.norm(&mut rec, &x, &blk.ln2, n, &normed)?;
            let h = dev.empty("whisper decoder mlp", &[n, cfg.ffn], DType::F32)?;
            blk.fc1.forward(dev, &mut rec, &normed, n, &h)?;
            let g = dev.empty("whisper decoder mlp act", &[n, cfg.ffn], DType::F32)?;
            self.gelu(&mut rec, &h, n * cfg.ffn, &g)?;
            blk.fc2.forward(dev, &mut rec, &g, n, &y)?;
            self.residual(&mut rec, &x, &y, n * d)?;
        }
        // The head over every row; the rows wanted are picked on the host (the prompt's rows
        // cost one matmul per batch, and after it every row is a window's last).
        let out = dev.empty("whisper decoder out", &[n, d], DType::F32)?;
        self.norm(&mut rec, &x, &self.dec_ln, n, &out)?;
        let logits = dev.empty("whisper logits", &[n, cfg.vocab], DType::F32)?;
        flint_kernels::matmul::matmul(
            dev,
            &mut rec,
            &MatmulParams::new(n, cfg.vocab, d),
            &out,
            &self.embed,
            None,
            &logits,
        )?;
        rec.submit()?.wait()?;
        let all = dev.read_f32(&logits)?;
        if all_rows || per_seq == 1 {
            return Ok(all);
        }
        Ok(all.chunks_exact(cfg.vocab).skip(per_seq - 1).step_by(per_seq).flatten().copied().collect())
    }

    /// Transcribe `audio` (any rate; resampled to 16 kHz): its 30-second windows decoded
    /// greedily from the start token, up to [`MAX_BATCH`] at once, at most `max_tokens` each.
    pub fn transcribe(&self, audio: &Audio, max_tokens: usize) -> Result<Transcript> {
        Ok(self.transcribe_many(std::slice::from_ref(audio), max_tokens)?.remove(0))
    }

    /// Transcribe several clips, their windows decoded together in batches of
    /// [`Whisper::default_batch`] (windows of different clips share a batch). A transcript's encoder and
    /// decoder seconds are those of the batches its windows were in.
    pub fn transcribe_many(&self, clips: &[Audio], max_tokens: usize) -> Result<Vec<Transcript>> {
        self.transcribe_batched(clips, max_tokens, self.default_batch())
    }

    /// Windows decoded at once by default: [`MAX_BATCH`]. Extra rows cost little on GPUs, where
    /// a step's matrix-vector products are bound by the bytes of the weights; on lavapipe a
    /// step of four windows took 110 ms against 47 ms for one, and with finished windows
    /// leaving the batch, three files' four windows took 10.5-10.7 s against 11.3-11.5 s one
    /// at a time (BENCHMARKS.md).
    pub fn default_batch(&self) -> usize {
        MAX_BATCH
    }

    /// [`Whisper::transcribe_many`] with at most `batch` windows decoded at once (1 to
    /// [`MAX_BATCH`]).
    pub fn transcribe_batched(&self, clips: &[Audio], max_tokens: usize, batch: usize) -> Result<Vec<Transcript>> {
        self.transcribe_with(clips, &TranscribeOptions { max_tokens, batch, ..Default::default() })
    }

    /// Transcribe (or translate) several clips with `opts`: their windows decoded together in
    /// batches (windows of different clips share a batch; each window keeps its own language).
    /// A transcript's encoder and decoder seconds are those of the batches its windows were in.
    pub fn transcribe_with(&self, clips: &[Audio], opts: &TranscribeOptions) -> Result<Vec<Transcript>> {
        self.transcribe_progress(clips, opts, &mut |_, _| {})
    }

    /// [`Whisper::transcribe_with`], calling `progress(windows done, windows in all)` after each
    /// batch (long audio takes a while).
    pub fn transcribe_progress(
        &self,
        clips: &[Audio],
        opts: &TranscribeOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Transcript>> {
        if !(1..=MAX_BATCH).contains(&opts.batch) {
            return Err(RuntimeError::Request(format!("a batch of {} windows: 1 to {MAX_BATCH}", opts.batch)));
        }
        // Refuse a language, task or timestamps the model cannot take before any work.
        let multilingual = !self.cfg.languages.is_empty();
        if opts.timestamps && !self.has_timestamps() {
            return Err(RuntimeError::Request(format!(
                "{} has no timestamp tokens after <|notimestamps|>",
                self.path.display()
            )));
        }
        if let Some(code) = &opts.language {
            self.prompt_for(Some(code), opts.task)?;
        } else if !multilingual {
            self.prompt_for(None, opts.task)?;
        }
        let dev = &self.dev;
        let mut out = Vec::with_capacity(clips.len());
        let mut samples = Vec::with_capacity(clips.len());
        for audio in clips {
            if audio.samples.is_empty() {
                return Err(RuntimeError::Request("the audio has no samples".into()));
            }
            let at16k = audio.resampled(flint_ref::audio::WHISPER_RATE as u32)?;
            out.push(Transcript {
                ids: Vec::new(),
                logprobs: Vec::new(),
                text: String::new(),
                segments: Vec::new(),
                language: if multilingual { opts.language.clone() } else { None },
                audio_seconds: audio.seconds(),
                windows: at16k.samples.len().div_ceil(flint_ref::audio::WHISPER_SAMPLES).max(1),
                features_s: 0.0,
                encoder_s: 0.0,
                decoder_s: 0.0,
            });
            samples.push(at16k.samples);
        }
        // Every (clip, window), in order; the text of each window. Features are made window by
        // window as the batches need them, so that long audio never sits on the GPU whole.
        let work: Vec<(usize, usize)> =
            out.iter().enumerate().flat_map(|(c, t)| (0..t.windows).map(move |w| (c, w))).collect();
        let mut texts: Vec<Vec<String>> = out.iter().map(|t| Vec::with_capacity(t.windows)).collect();
        let mut done = 0;
        progress(0, work.len());
        for batch in work.chunks(opts.batch) {
            let mut encoded = Vec::with_capacity(batch.len());
            let mut encoder_s = 0.0;
            for &(c, w) in batch {
                let t = Instant::now();
                let mut rec = Recorder::new(dev);
                let features = self.mel.record_windows(dev, &mut rec, &samples[c], w, 1)?;
                rec.submit()?.wait()?;
                out[c].features_s += t.elapsed().as_secs_f64();
                let t = Instant::now();
                let window = features.reshape(&[WINDOW_FRAMES, self.cfg.mels])?;
                let mut rec = Recorder::new(dev);
                encoded.push(self.encode(&mut rec, &window)?);
                rec.submit()?.wait()?;
                // A clip's language, when not given, is detected from its first window.
                if multilingual && out[c].language.is_none() {
                    out[c].language = self.detect_language(encoded.last().expect("just pushed"))?.map(|l| l.0);
                }
                encoder_s += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            let prompts = batch
                .iter()
                .map(|&(c, _)| self.prompt_with(out[c].language.as_deref(), opts.task, opts.timestamps))
                .collect::<Result<Vec<_>>>()?;
            let results = self.decode_prompted(&encoded, &prompts, opts.max_tokens)?;
            let decoder_s = t.elapsed().as_secs_f64();
            let mut seen = Vec::new();
            for (&(c, w), (ids, logprobs)) in batch.iter().zip(results) {
                texts[c].push(self.text(&ids)?.trim().to_string());
                if opts.timestamps {
                    let offset = (w * flint_ref::audio::WHISPER_SAMPLES) as f64 / flint_ref::audio::WHISPER_RATE as f64;
                    let window_end = (out[c].audio_seconds - offset).clamp(0.0, 30.0);
                    out[c].segments.extend(self.segments(&ids, offset, window_end)?);
                }
                out[c].ids.extend(ids);
                out[c].logprobs.extend(logprobs);
                if !seen.contains(&c) {
                    seen.push(c);
                    out[c].encoder_s += encoder_s;
                    out[c].decoder_s += decoder_s;
                }
            }
            done += batch.len();
            progress(done, work.len());
        }
        for (t, parts) in out.iter_mut().zip(texts) {
            t.text = parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ");
        }
        Ok(out)
    }

    /// The text of `ids` (special tokens and timestamps skipped).
    pub fn text(&self, ids: &[u32]) -> Result<String> {
        let text: Vec<u32> = ids.iter().copied().filter(|&t| t < self.cfg.eot).collect();
        self.tokenizer.decode(&text, true).map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }

    /// The segments of one window's ids decoded with timestamps: the text between a timestamp
    /// and the next, at `offset` seconds into the clip; text after the last timestamp ends at
    /// `window_end` (seconds into the window, where the audio ends), and no segment ends later.
    pub fn segments(&self, ids: &[u32], offset: f64, window_end: f64) -> Result<Vec<Segment>> {
        let ts = self.cfg.no_timestamps + 1;
        let (mut out, mut start, mut text) = (Vec::new(), None::<f64>, Vec::new());
        let mut flush = |start: f64, end: f64, text: &mut Vec<u32>| -> Result<()> {
            let t = self.text(text)?.trim().to_string();
            if !t.is_empty() {
                let end = end.min(window_end).max(start);
                out.push(Segment { start: offset + start, end: offset + end, text: t });
            }
            text.clear();
            Ok(())
        };
        for &id in ids {
            if id >= ts {
                let time = f64::from(id - ts) * TIMESTAMP_STEP;
                match start {
                    Some(s) if !text.is_empty() => {
                        flush(s, time, &mut text)?;
                        start = None;
                    }
                    _ => start = Some(time),
                }
            } else if id < self.cfg.eot {
                text.push(id);
            }
        }
        if !text.is_empty() {
            flush(start.unwrap_or(0.0), window_end, &mut text)?;
        }
        Ok(out)
    }
}

/// [`Whisper::pick`]'s rule over `cfg`'s special tokens (a free function, so that it is tested
/// without a model).
fn pick(cfg: &WhisperConfig, logits: &[f32], generated: &[u32], timestamps: bool) -> (u32, f32) {
    let neg = f32::NEG_INFINITY;
    let mut x = logits.to_vec();
    let first = generated.is_empty();
    for &t in cfg.suppress.iter().chain(if first { &cfg.suppress_begin[..] } else { &[] }) {
        x[t as usize] = neg;
    }
    let (nt, eot) = (cfg.no_timestamps as usize, cfg.eot as usize);
    let ts = (nt + 1).min(x.len());
    if !timestamps {
        x[nt..].fill(neg);
    } else {
        x[nt] = neg;
        let n = generated.len();
        let is_ts = |t: u32| t as usize >= ts;
        let last_ts = n >= 1 && is_ts(generated[n - 1]);
        let penultimate_ts = n < 2 || is_ts(generated[n - 2]);
        if last_ts {
            if penultimate_ts {
                x[ts..].fill(neg);
            } else {
                x[..eot].fill(neg);
            }
        }
        if let Some(&last) = generated.iter().rev().find(|&&t| is_ts(t)) {
            let bound = if last_ts && !penultimate_ts { last as usize } else { last as usize + 1 };
            let end = bound.clamp(ts, x.len());
            x[ts..end].fill(neg);
        }
        if first {
            x[..ts].fill(neg);
            let last_allowed = ts + MAX_INITIAL_TIMESTAMP;
            if last_allowed + 1 < x.len() {
                x[last_allowed + 1..].fill(neg);
            }
        }
        let lse = |v: &[f32]| {
            let m = v.iter().copied().fold(neg, f32::max);
            if m == neg { neg } else { m + v.iter().map(|&y| f64::from(y - m).exp()).sum::<f64>().ln() as f32 }
        };
        let max_text = x[..ts].iter().copied().fold(neg, f32::max);
        if lse(&x[ts..]) > max_text {
            x[..ts].fill(neg);
        }
    }
    let mut best = (0usize, neg);
    for (i, &v) in x.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    if best.1 == neg {
        // Nothing allowed is finite (a broken model): end the window.
        return (cfg.eot, neg);
    }
    let max = logits.iter().copied().fold(neg, f32::max);
    let lse = max + logits.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln() as f32;
    (best.0 as u32, logits[best.0] - lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text 0..10, end of text 10, start 11, no-timestamps 12, timestamps 13..20; token 3 is
    /// always suppressed, 4 at the first step.
    fn cfg() -> WhisperConfig {
        WhisperConfig {
            mels: 80,
            d_model: 64,
            ffn: 64,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_heads: 1,
            decoder_heads: 1,
            vocab: 20,
            text_ctx: 16,
            multilingual: false,
            eot: 10,
            sot: 11,
            no_timestamps: 12,
            languages: Vec::new(),
            tasks: None,
            suppress: vec![3],
            suppress_begin: vec![4],
        }
    }

    /// Logits that favour `best`, then `second`, everything else at 0.
    fn logits(best: usize, second: usize) -> Vec<f32> {
        let mut l = vec![0.0; 20];
        l[best] = 9.0;
        l[second] = 5.0;
        l
    }

    #[test]
    fn without_timestamps_the_lists_and_every_timestamp_are_suppressed() {
        let c = cfg();
        assert_eq!(pick(&c, &logits(15, 7), &[], false).0, 7, "a timestamp is never chosen");
        assert_eq!(pick(&c, &logits(12, 7), &[], false).0, 7, "nor <|notimestamps|>");
        assert_eq!(pick(&c, &logits(3, 7), &[1], false).0, 7, "suppress list");
        assert_eq!(pick(&c, &logits(4, 7), &[], false).0, 7, "begin list at the first step");
        assert_eq!(pick(&c, &logits(4, 7), &[1], false).0, 4, "but not later");
        // The log-probability is under the raw logits: 7 has the second largest.
        let (tok, lp) = pick(&c, &logits(15, 7), &[], false);
        let l = logits(15, 7);
        let lse = l.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln() as f32;
        assert_eq!(tok, 7);
        assert!((lp - (5.0 - lse)).abs() < 1e-5, "{lp}");
    }

    #[test]
    fn timestamps_follow_whispers_rules() {
        let c = cfg();
        // First step: a timestamp, however likely the text.
        assert_eq!(pick(&c, &logits(7, 14), &[], true).0, 14);
        // After <|0.00|> and text: text or a timestamp, by the logits (the timestamps' mass,
        // 7 of them at 0, is below the best text's 9 here).
        assert_eq!(pick(&c, &logits(7, 15), &[13, 5], true).0, 7);
        // ... but whenever the timestamps together outweigh the best text, a timestamp.
        let mut l = vec![0.0; 20];
        l[5] = 2.0;
        l[13..20].fill(1.8);
        assert!(pick(&c, &l, &[13, 5], true).0 >= 13);
        // After text then a timestamp: a timestamp (not below the last) or end of text.
        assert_eq!(pick(&c, &logits(7, 16), &[13, 5, 16], true).0, 16);
        let mut l = logits(7, 14);
        l[10] = 3.0;
        assert_eq!(pick(&c, &l, &[13, 5, 16], true).0, 10, "14 < 16 is out; end of text outweighs 16..19");
        // With end of text at 0, the four timestamps left together outweigh it: the first of them.
        assert_eq!(pick(&c, &logits(7, 14), &[13, 5, 16], true).0, 16);
        // After two timestamps: text.
        assert_eq!(pick(&c, &logits(17, 7), &[13, 5, 16, 16], true).0, 7);
        // Timestamps never go back: after <|0.06|> closed and text, 14 is out, 17 in.
        let mut l = logits(14, 17);
        l[..13].fill(-9.0);
        assert_eq!(pick(&c, &l, &[13, 5, 16, 16, 6], true).0, 17);
        // Nothing allowed: the window ends.
        let (tok, lp) = pick(&c, &[f32::NEG_INFINITY; 20], &[], false);
        assert_eq!((tok, lp), (10, f32::NEG_INFINITY));
    }
}
