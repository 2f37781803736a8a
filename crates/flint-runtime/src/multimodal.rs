//! The multimodal side of a model: the vision tower with its processor settings ([`Vision`]),
//! images ready for it ([`Pixels`]), the audio tower ([`AudioTower`]) and clips ready for it
//! ([`AudioFeatures`]), both held as a prompt's [`Media`] and a model's [`Encoders`], and the
//! embedding of a prompt whose image and audio tokens take the towers' output
//! ([`embed_prompt`]). Generation ([`crate::generate`]) and the engine ([`crate::engine`]) use
//! these without depending on [`crate::model::Model`].

use std::sync::Arc;

use flint_gpu::{DType, Recorder, Tensor};

use crate::image::{FixedSizeProcessor, ImageProcessor, Rgb};
use crate::kvpool::{KvPool, SeqId};
pub use crate::model::audio::{AudioFeatures, AudioTower};
use crate::model::decoder::Decoder;
pub use crate::model::qwen_vision::{PatchImages, QwenVision};
use crate::model::vision::VisionTower;
use crate::{RequestError, Result, RuntimeError};

/// The image side of a multimodal model: the vision tower, the processor settings and the
/// token the prompt marks image positions with.
#[derive(Debug)]
pub struct Vision {
    /// Encoder and connector.
    pub tower: VisionTower,
    /// Preprocessing and prompt markup.
    pub processor: Processor,
    /// The image token's id (`<image>`, `<image_soft_token>`).
    pub image_token_id: u32,
    /// Whether the tokens of one image attend to each other both ways inside the causal decoder
    /// (Gemma 3), not only to those before them.
    pub bidirectional: bool,
}

/// How a family's images become pixels and prompt markup.
#[derive(Clone, Debug, PartialEq)]
pub enum Processor {
    /// Idefics3 / SmolVLM: tiles plus a global view, each `<image>` expanded into the tiles'
    /// `<fake_token_around_image><row_r_col_c><image>...` markup.
    Idefics3(ImageProcessor),
    /// Gemma 3: one fixed-size tile per image; each image placeholder (`<image>`, or the
    /// `<start_of_image>` its chat template writes) becomes
    /// `"\n\n" boi image_token x tokens eoi "\n\n"`, as Gemma3Processor writes it.
    Gemma3 {
        /// The image processor.
        image: FixedSizeProcessor,
        /// `<start_of_image>`.
        boi: String,
        /// `<image_soft_token>`.
        image_token: String,
        /// `<end_of_image>`.
        eoi: String,
        /// Image tokens per image.
        tokens: usize,
    },
}

impl Processor {
    /// Whether `text` holds an image placeholder: `<image>`, or Gemma 3's `<start_of_image>`.
    pub fn has_placeholder(&self, text: &str) -> bool {
        text.contains("<image>") || matches!(self, Processor::Gemma3 { boi, .. } if text.contains(boi.as_str()))
    }

    /// `text` with its image placeholders expanded for `images`, and their pixels.
    pub(crate) fn prompt(&self, text: &str, images: &[Rgb]) -> Result<(String, Pixels)> {
        match self {
            Processor::Idefics3(p) => {
                let processed = images.iter().map(|im| p.process(im)).collect::<Result<Vec<_>>>()?;
                let grid: Vec<(usize, usize)> = processed.iter().map(|p| (p.rows, p.cols)).collect();
                let text = crate::image::expand_prompt(text, &grid, p.image_seq_len)?;
                let data = processed.iter().flat_map(|p| p.pixels.iter().copied()).collect();
                Ok((text, Pixels { data, images: processed.iter().map(|p| p.tiles).sum(), side: p.tile }))
            }
            Processor::Gemma3 { image, boi, image_token, eoi, tokens } => {
                if image.width != image.height {
                    return Err(RuntimeError::Request(format!(
                        "a {}x{} processor size: the tower takes square images",
                        image.width, image.height
                    )));
                }
                let full = format!("\n\n{boi}{}{eoi}\n\n", image_token.repeat(*tokens));
                // Each placeholder, `<image>` or the template's `boi`, becomes the full sequence.
                let mut out = String::new();
                let mut rest = text;
                let mut count = 0;
                while let Some((at, len)) = [("<image>", 7), (boi.as_str(), boi.len())]
                    .iter()
                    .filter_map(|(m, l)| rest.find(m).map(|i| (i, *l)))
                    .min()
                {
                    out.push_str(&rest[..at]);
                    out.push_str(&full);
                    rest = &rest[at + len..];
                    count += 1;
                }
                out.push_str(rest);
                if count != images.len() {
                    return Err(RuntimeError::Request(format!(
                        "the prompt has {count} image placeholders (<image> or {boi}) for {} images",
                        images.len()
                    )));
                }
                let mut data = Vec::new();
                for im in images {
                    data.extend(image.process(im)?);
                }
                Ok((out, Pixels { data, images: images.len(), side: image.width }))
            }
        }
    }
}

/// What a prompt's media tokens take: its images' pixels (or patches) and its audio clips'
/// features.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Media {
    /// The images, for the image tokens (square tiles: Idefics3, Gemma 3).
    pub pixels: Option<Pixels>,
    /// The audio clips, for the audio tokens.
    pub audio: Option<AudioFeatures>,
    /// The images as patch grids, for the image tokens (Qwen2.5-VL).
    pub patches: Option<PatchImages>,
}

impl From<Pixels> for Media {
    fn from(pixels: Pixels) -> Media {
        Media { pixels: Some(pixels), ..Media::default() }
    }
}

impl From<AudioFeatures> for Media {
    fn from(audio: AudioFeatures) -> Media {
        Media { audio: Some(audio), ..Media::default() }
    }
}

impl From<PatchImages> for Media {
    fn from(patches: PatchImages) -> Media {
        Media { patches: Some(patches), ..Media::default() }
    }
}

impl Media {
    /// `Some(self)`, or `None` when it holds nothing.
    pub fn or_none(self) -> Option<Media> {
        if self == Media::default() { None } else { Some(self) }
    }
}

/// A model's encoders of media: its vision side and its audio tower, each shared.
#[derive(Clone, Debug, Default)]
pub struct Encoders {
    /// The vision side, for images.
    pub vision: Option<Arc<Vision>>,
    /// The audio tower, for audio clips.
    pub audio: Option<Arc<AudioTower>>,
    /// Qwen2.5-VL's vision side, for patch images.
    pub qwen: Option<Arc<QwenVision>>,
}

impl Encoders {
    /// The position of the first image or audio token in `ids`.
    pub fn first_media(&self, ids: &[u32]) -> Option<usize> {
        let tokens: Vec<u32> = self
            .vision
            .iter()
            .map(|v| v.image_token_id)
            .chain(self.audio.iter().map(|a| a.audio_token_id))
            .chain(self.qwen.iter().map(|q| q.image_token_id))
            .collect();
        ids.iter().position(|t| tokens.contains(t))
    }
}

/// Images ready for the encoder: `[images, channels, height, width]` f32, normalised, all of
/// one square size whose side is a multiple of the patch (the processor's tiles).
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    /// The values.
    pub data: Vec<f32>,
    /// Images (tiles).
    pub images: usize,
    /// Side in pixels.
    pub side: usize,
}

impl Vision {
    /// Record the encoder and connector over `pixels`: `[images * tokens, text hidden]`.
    pub fn embed(&self, rec: &mut Recorder, pixels: &Pixels) -> Result<Tensor> {
        let c = &self.tower.cfg;
        let want = pixels
            .images
            .checked_mul(c.channels)
            .and_then(|n| n.checked_mul(pixels.side))
            .and_then(|n| n.checked_mul(pixels.side));
        if want != Some(pixels.data.len()) || pixels.images == 0 {
            return Err(RuntimeError::Request(format!(
                "{} pixel values for {} images of {}x{}x{}",
                pixels.data.len(),
                pixels.images,
                c.channels,
                pixels.side,
                pixels.side
            )));
        }
        // A NaN or infinity would reach every logit, before the image too (0 x NaN in attention).
        if let Some(i) = pixels.data.iter().position(|v| !v.is_finite()) {
            let per_image = pixels.data.len() / pixels.images;
            return Err(RuntimeError::Request(format!(
                "pixel value {i} (image {}) is {}: pixel values must be finite",
                i / per_image,
                pixels.data[i]
            )));
        }
        let dev = rec.device().clone();
        let t = dev.upload_f32(
            "pixel values",
            &pixels.data,
            &[pixels.images, c.channels, pixels.side, pixels.side],
            DType::F32,
        )?;
        let h = self.tower.encode(rec, &t, pixels.images, pixels.side, pixels.side)?;
        self.tower.connect(rec, &h, pixels.images, pixels.side / c.patch)
    }

    /// Image tokens `pixels` become.
    pub fn tokens_for(&self, pixels: &Pixels) -> usize {
        let side = pixels.side / self.tower.cfg.patch.max(1) / self.tower.cfg.scale_factor.max(1);
        side.checked_mul(side).and_then(|t| t.checked_mul(pixels.images)).unwrap_or(usize::MAX)
    }
}

/// Record `ids` (their image and audio tokens taking `media`) through `decoder` into `seq`'s
/// cache: the prompt's embeddings ([`embed_prompt`]), then every layer, each image's tokens
/// attending to their whole image where the vision side is [bidirectional](Vision::bidirectional).
/// Returns the final-normed hidden states `[ids.len(), hidden]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_prompt(
    decoder: &Decoder,
    encoders: &Encoders,
    rec: &mut Recorder,
    pool: &mut KvPool,
    seq: SeqId,
    ids: &[u32],
    media: Option<&Media>,
) -> Result<Tensor> {
    let x = embed_prompt(decoder, encoders, rec, ids, media)?;
    let vision = encoders.vision.as_deref();
    // M-RoPE: a prompt with patch images takes 3D positions from the sequence's next rotary
    // position; the text after it goes on from where its positions end.
    let mrope = match (&encoders.qwen, media.and_then(|m| m.patches.as_ref())) {
        (Some(q), Some(p)) if decoder.cfg.mrope.is_some() && ids.contains(&q.image_token_id) => {
            let start = pool.len(seq)? as i64 + pool.rope_offset(seq)?;
            let start = u32::try_from(start)
                .map_err(|_| RuntimeError::Request(format!("rotary position {start} is outside u32")))?;
            Some(q.positions(ids, &p.grids, start)?)
        }
        _ => None,
    };
    let h = decoder.forward_blocks(
        rec,
        pool,
        seq,
        &x,
        ids.len(),
        &image_blocks(vision, ids),
        mrope.as_ref().map(|m| m.0.as_slice()),
    )?;
    if let Some((_, next)) = mrope {
        pool.set_rope_offset(seq, i64::from(next) - pool.len(seq)? as i64)?;
    }
    Ok(h)
}

/// The runs of image tokens in `ids` that attend to themselves both ways (for a vision side
/// whose images are [bidirectional](Vision::bidirectional)); none otherwise. As in
/// transformers, a run is consecutive image tokens: the processor's markup puts the begin and
/// end tokens between two images.
fn image_blocks(vision: Option<&Vision>, ids: &[u32]) -> Vec<std::ops::Range<usize>> {
    match vision.filter(|v| v.bidirectional) {
        Some(v) => token_runs(ids, v.image_token_id),
        None => Vec::new(),
    }
}

/// The runs of consecutive `token`s in `ids` (image or audio tokens).
fn token_runs(ids: &[u32], token: u32) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != token {
            i += 1;
            continue;
        }
        let start = i;
        while i < ids.len() && ids[i] == token {
            i += 1;
        }
        runs.push(start..i);
    }
    runs
}

/// Record the embeddings of a prompt: token embeddings, with the rows of image tokens replaced,
/// in order, by what the vision tower makes of the media's pixels, and those of audio tokens by
/// what the audio tower makes of its clips. Returns `[ids.len(), hidden]`.
pub fn embed_prompt(
    decoder: &Decoder,
    encoders: &Encoders,
    rec: &mut Recorder,
    ids: &[u32],
    media: Option<&Media>,
) -> Result<Tensor> {
    let dev = decoder.device();
    let ids_t = dev.upload_u32("token ids", ids, &[ids.len()])?;
    let x = decoder.embed(rec, &ids_t, ids.len())?;
    let row = decoder.cfg.hidden;
    let pixels = media.and_then(|m| m.pixels.as_ref());
    if let Some((vision, pixels)) = image_inputs(encoders.vision.as_deref(), ids, pixels)? {
        let embeds = vision.embed(rec, pixels)?;
        // The tiles' tokens are packed in order.
        let sources = [(&embeds, vision.tokens_for(pixels))];
        splice(rec, &x, row, ids, vision.image_token_id, &sources)?;
    }
    let patches = media.and_then(|m| m.patches.as_ref());
    if let Some((qwen, patches)) = patch_inputs(encoders.qwen.as_deref(), ids, patches)? {
        let (embeds, _) = qwen.tower.encode(rec, patches)?;
        let n = patches.grids.iter().map(|&g| qwen.tower.tokens_for(g)).sum();
        splice(rec, &x, row, ids, qwen.image_token_id, &[(&embeds, n)])?;
    }
    let clips = media.and_then(|m| m.audio.as_ref());
    if let Some((audio, clips)) = audio_inputs(encoders.audio.as_deref(), ids, clips)? {
        let embeds = audio.embed(rec, clips)?;
        let sources: Vec<(&Tensor, usize)> = embeds.iter().zip(clips.tokens()).collect();
        splice(rec, &x, row, ids, audio.audio_token_id, &sources)?;
    }
    Ok(x)
}

/// Whether `media` fits `ids`' image and audio tokens on a model with `encoders`: the refusal
/// [`embed_prompt`] would give, for a host to answer before any work.
pub(crate) fn check_media(
    encoders: &Encoders,
    ids: &[u32],
    media: Option<&Media>,
) -> std::result::Result<(), RequestError> {
    image_inputs(encoders.vision.as_deref(), ids, media.and_then(|m| m.pixels.as_ref()))?;
    audio_inputs(encoders.audio.as_deref(), ids, media.and_then(|m| m.audio.as_ref()))?;
    patch_inputs(encoders.qwen.as_deref(), ids, media.and_then(|m| m.patches.as_ref()))?;
    Ok(())
}

/// How one kind of media is named in refusals.
struct Kind {
    /// Wraps a refusal's message.
    refuse: fn(String) -> RequestError,
    /// "images given to a model without a vision tower".
    unexpected: &'static str,
    /// "image" (of "image tokens").
    token: &'static str,
    /// "no images were given".
    missing: &'static str,
}

/// The encoder and the media for `ids`' tokens of this kind (`token` of the encoder), when
/// there are any; refusals when media and tokens do not match. `made` gives the tokens the
/// media make and how to name the media ("the 2 image tiles"), or the media's own refusal.
fn matched<'a, E, M>(
    kind: &Kind,
    encoder: Option<&'a E>,
    token: impl Fn(&E) -> u32,
    ids: &[u32],
    media: Option<&'a M>,
    made: impl Fn(&E, &M) -> std::result::Result<(usize, String), RequestError>,
) -> std::result::Result<Option<(&'a E, &'a M)>, RequestError> {
    let slots = encoder.map_or(0, |e| {
        let t = token(e);
        ids.iter().filter(|&&i| i == t).count()
    });
    match (encoder, media) {
        (_, None) if slots == 0 => Ok(None),
        (None, Some(_)) => Err((kind.refuse)(kind.unexpected.into())),
        (Some(_), None) => {
            Err((kind.refuse)(format!("the prompt has {slots} {} tokens but {}", kind.token, kind.missing)))
        }
        (Some(e), Some(m)) => {
            let (want, what) = made(e, m)?;
            if want != slots {
                return Err((kind.refuse)(format!(
                    "the prompt has {slots} {} tokens but {what} make {want}",
                    kind.token
                )));
            }
            Ok(Some((e, m)))
        }
        (None, None) => Ok(None),
    }
}

/// Qwen2.5-VL's vision side and the patch images for `ids`' image tokens (see [`matched`]).
fn patch_inputs<'a>(
    qwen: Option<&'a QwenVision>,
    ids: &[u32],
    patches: Option<&'a PatchImages>,
) -> std::result::Result<Option<(&'a QwenVision, &'a PatchImages)>, RequestError> {
    let kind = Kind {
        refuse: RequestError::Images,
        unexpected: "patch images given to a model without their vision tower",
        token: "image",
        missing: "no images were given",
    };
    matched(
        &kind,
        qwen,
        |q| q.image_token_id,
        ids,
        patches,
        |q, p| {
            let want = p.grids.iter().map(|&g| q.tower.tokens_for(g)).sum();
            Ok((want, format!("the {} images", p.grids.len())))
        },
    )
}

/// The vision side and the pixels for `ids`' image tokens (see [`matched`]).
fn image_inputs<'a>(
    vision: Option<&'a Vision>,
    ids: &[u32],
    pixels: Option<&'a Pixels>,
) -> std::result::Result<Option<(&'a Vision, &'a Pixels)>, RequestError> {
    let kind = Kind {
        refuse: RequestError::Images,
        unexpected: "images given to a model without a vision tower",
        token: "image",
        missing: "no images were given",
    };
    matched(
        &kind,
        vision,
        |v| v.image_token_id,
        ids,
        pixels,
        |v, p| Ok((v.tokens_for(p), format!("the {} image tiles", p.images))),
    )
}

/// The audio tower and the clips for `ids`' audio tokens (see [`matched`]); the features are
/// checked against the tower first.
fn audio_inputs<'a>(
    audio: Option<&'a AudioTower>,
    ids: &[u32],
    clips: Option<&'a AudioFeatures>,
) -> std::result::Result<Option<(&'a AudioTower, &'a AudioFeatures)>, RequestError> {
    let kind = Kind {
        refuse: RequestError::Audio,
        unexpected: "audio given to a model without an audio tower",
        token: "audio",
        missing: "no audio was given",
    };
    matched(
        &kind,
        audio,
        |a| a.audio_token_id,
        ids,
        clips,
        |a, c| {
            c.validate(a.mels())?;
            Ok((c.tokens().iter().sum(), format!("the {} clips", c.clips())))
        },
    )
}

/// Copy embedding rows into the rows of `x` whose token is `token`, in order: the sources are
/// `(tensor, rows)`, the first `rows` rows of each tensor taken one after another (their total
/// is the number of such tokens, checked by the caller). Each copy is a maximal run that is
/// contiguous on both sides.
fn splice(
    rec: &mut Recorder,
    x: &Tensor,
    row: usize,
    ids: &[u32],
    token: u32,
    sources: &[(&Tensor, usize)],
) -> Result<()> {
    let mut src = sources.iter().map(|&(t, n)| (t, 0, n)).filter(|s| s.2 > 0);
    let mut cur = src.next();
    for run in token_runs(ids, token) {
        let (mut at, mut left) = (run.start, run.len());
        while left > 0 {
            let Some((embeds, first, avail)) = cur else {
                return Err(RuntimeError::Request(format!("more {token} tokens than embeddings")));
            };
            let n = left.min(avail);
            let s = embeds.view((first * row * 4) as u64, &[n, row], DType::F32)?;
            let d = x.view((at * row * 4) as u64, &[n, row], DType::F32)?;
            rec.copy(&s, &d)?;
            (at, left) = (at + n, left - n);
            cur = if n == avail { src.next() } else { Some((embeds, first + n, avail - n)) };
        }
    }
    Ok(())
}
