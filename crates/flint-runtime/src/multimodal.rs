//! The multimodal side of a model: the vision tower with its processor settings ([`Vision`]),
//! images ready for it ([`Pixels`]), and the embedding of a prompt whose image tokens take the
//! tower's output ([`embed_prompt`]). Generation ([`crate::generate`]) and the engine
//! ([`crate::engine`]) use these without depending on [`crate::model::Model`].

use flint_gpu::{DType, Recorder, Tensor};

use crate::image::ImageProcessor;
use crate::model::decoder::Decoder;
use crate::model::vision::VisionTower;
use crate::{RequestError, Result, RuntimeError};

/// The image side of a multimodal model: the vision tower, the processor settings and the
/// token the prompt marks image positions with.
#[derive(Debug)]
pub struct Vision {
    /// Encoder and connector.
    pub tower: VisionTower,
    /// Preprocessing.
    pub processor: ImageProcessor,
    /// The `<image>` token id.
    pub image_token_id: u32,
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
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != vision.image_token_id {
            i += 1;
            continue;
        }
        let start = i;
        while i < ids.len() && ids[i] == vision.image_token_id {
            i += 1;
        }
        let n = i - start;
        let src = embeds.view((used * row * 4) as u64, &[n, row], DType::F32)?;
        let dst = x.view((start * row * 4) as u64, &[n, row], DType::F32)?;
        rec.copy(&src, &dst)?;
        used += n;
    }
    Ok(x)
}
