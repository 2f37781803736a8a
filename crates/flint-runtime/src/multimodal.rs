//! The multimodal side of a model: the vision tower with its processor settings ([`Vision`]),
//! images ready for it ([`Pixels`]), and the embedding of a prompt whose image tokens take the
//! tower's output ([`embed_prompt`]). Generation ([`crate::generate`]) and the engine
//! ([`crate::engine`]) use these without depending on [`crate::model::Model`].

use flint_gpu::{DType, Recorder, Tensor};

use crate::image::{FixedSizeProcessor, ImageProcessor, Rgb};
use crate::kvpool::{KvPool, SeqId};
use crate::model::decoder::Decoder;
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

/// Record `ids` (their image tokens taking `pixels`) through `decoder` into `seq`'s cache:
/// the prompt's embeddings ([`embed_prompt`]), then every layer, each image's tokens attending
/// to their whole image where the vision side is [bidirectional](Vision::bidirectional).
/// Returns the final-normed hidden states `[ids.len(), hidden]`.
pub(crate) fn forward_prompt(
    decoder: &Decoder,
    vision: Option<&Vision>,
    rec: &mut Recorder,
    pool: &mut KvPool,
    seq: SeqId,
    ids: &[u32],
    pixels: Option<&Pixels>,
) -> Result<Tensor> {
    let x = embed_prompt(decoder, vision, rec, ids, pixels)?;
    decoder.forward_blocks(rec, pool, seq, &x, ids.len(), &image_blocks(vision, ids))
}

/// The runs of image tokens in `ids` that attend to themselves both ways (for a vision side
/// whose images are [bidirectional](Vision::bidirectional)); none otherwise. As in
/// transformers, a run is consecutive image tokens: the processor's markup puts the begin and
/// end tokens between two images.
fn image_blocks(vision: Option<&Vision>, ids: &[u32]) -> Vec<std::ops::Range<usize>> {
    match vision.filter(|v| v.bidirectional) {
        Some(v) => image_runs(ids, v.image_token_id),
        None => Vec::new(),
    }
}

/// The runs of consecutive `token`s in `ids`.
fn image_runs(ids: &[u32], token: u32) -> Vec<std::ops::Range<usize>> {
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
/// in order, by what the vision tower makes of `pixels`. Returns `[ids.len(), hidden]`.
pub fn embed_prompt(
    decoder: &Decoder,
    vision: Option<&Vision>,
    rec: &mut Recorder,
    ids: &[u32],
    pixels: Option<&Pixels>,
) -> Result<Tensor> {
    let dev = decoder.device();
    let ids_t = dev.upload_u32("token ids", ids, &[ids.len()])?;
    let x = decoder.embed(rec, &ids_t, ids.len())?;
    let image_token = vision.map(|v| v.image_token_id);
    let slots = image_token.map_or(0, |t| ids.iter().filter(|&&i| i == t).count());
    let (vision, pixels) = match (vision, pixels) {
        (_, None) if slots == 0 => return Ok(x),
        (None, Some(_)) => {
            return Err(RequestError::Images("images given to a model without a vision tower".into()).into());
        }
        (Some(_), None) => {
            return Err(
                RequestError::Images(format!("the prompt has {slots} image tokens but no images were given")).into()
            );
        }
        (Some(v), Some(p)) => (v, p),
        (None, None) => return Ok(x),
    };
    let want = vision.tokens_for(pixels);
    if want != slots {
        return Err(RequestError::Images(format!(
            "the prompt has {slots} image tokens but the {} image tiles make {want}",
            pixels.images
        ))
        .into());
    }
    let embeds = vision.embed(rec, pixels)?;
    let row = decoder.cfg.hidden;
    let mut used = 0;
    for run in image_runs(ids, vision.image_token_id) {
        let (start, n) = (run.start, run.len());
        let src = embeds.view((used * row * 4) as u64, &[n, row], DType::F32)?;
        let dst = x.view((start * row * 4) as u64, &[n, row], DType::F32)?;
        rec.copy(&src, &dst)?;
        used += n;
    }
    Ok(x)
}
