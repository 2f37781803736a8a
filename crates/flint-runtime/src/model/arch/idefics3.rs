//! Idefics3 / SmolVLM (Hugging Face directories): a SigLIP vision tower and pixel-shuffle
//! connector in front of a Llama text model (`model.text_model.*`), image tokens marked by
//! `image_token_id`.

use flint_gpu::{DType, Device};

use super::llama::{hf_config, hf_name};
use super::{HfFamily, Loaded};
use crate::Result;
use crate::hf::{Config, HfDir};
use crate::image::ImageProcessor;
use crate::model::decoder::Decoder;
use crate::model::vision::{TowerNames, VisionConfig, VisionTower};
use crate::model::weights::HfWeights;
use crate::multimodal::{Processor, Vision};

/// Idefics3 and SmolVLM directories (`model_type` idefics3 or smolvlm).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["idefics3", "smolvlm"], load };

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let tie = top.bool_or("tie_word_embeddings", false)?;
    let text = hf_config(&top.object("text_config")?, tie)?;
    let hidden = text.hidden;
    let weights = HfWeights { dir, prefix: "model.text_model.", names: hf_name, norm_shift: 0.0 };
    let decoder = Decoder::load(dev, text, &weights, kv_dtype)?;
    let vcfg = VisionConfig::from_hf(top, hidden)?;
    let processor = ImageProcessor::from_files(&dir.files, vcfg.image_size, vcfg.tokens_per_tile())?;
    let image_token_id = top.usize("image_token_id")?;
    if image_token_id >= decoder.cfg.vocab {
        return Err(top.error(
            "image_token_id",
            &format!("is {image_token_id}, outside the vocabulary of {}", decoder.cfg.vocab),
        ));
    }
    let tower = VisionTower::from_hf(dev, dir, vcfg, TowerNames::IDEFICS3)?;
    let processor = Processor::Idefics3(processor);
    Ok(Loaded::vision(
        decoder,
        Vision { tower, processor, image_token_id: image_token_id as u32, bidirectional: false },
    ))
}
