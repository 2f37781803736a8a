//! Qwen2.5-VL (Hugging Face directories, `model_type` qwen2_5_vl;
//! Qwen2_5_VLForConditionalGeneration): the vision tower and merger of
//! [`crate::model::qwen_vision`] in front of a Qwen2 decoder with M-RoPE (`mrope_section`),
//! images smart-resized into patch grids, each `<|image_pad|>` repeated once per merged token.
//! The text config is `text_config` (transformers 5.x) or the top level (the published
//! checkpoints, with `rope_scaling` `{"type": "mrope", "mrope_section": [...]}`); tensors are
//! `model.*` / `visual.*` / `lm_head` as published, or transformers 5.x's
//! `model.language_model.*` / `model.visual.*`.

use flint_gpu::{DType, Device};

use super::{HfFamily, Loaded};
use crate::Result;
use crate::hf::{Config, HfDir};
use crate::model::config::DecoderConfig;
use crate::model::decoder::Decoder;
use crate::model::qwen_vision::{QwenVision, QwenVisionConfig, QwenVisionTower};
use crate::model::weights::HfWeights;

/// Qwen2.5-VL directories (`model_type` qwen2_5_vl).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["qwen2_5_vl"], load };

/// The text config with its M-RoPE sections taken out (read here) and the rope type made
/// plain, so that Qwen2's reader takes it; and the sections.
fn text_config(top: &Config<'_>) -> Result<(serde_json::Value, [usize; 3])> {
    let mut v = match top.value.get("text_config") {
        Some(t) if t.is_object() => t.clone(),
        _ => top.value.clone(),
    };
    let mut sections = None;
    for key in ["rope_parameters", "rope_scaling"] {
        if let Some(r) = v.get_mut(key).and_then(|r| r.as_object_mut()) {
            if let Some(s) = r.remove("mrope_section") {
                let list: Option<Vec<usize>> =
                    s.as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect());
                match list.as_deref() {
                    Some(&[a, b, c]) => sections = Some([a, b, c]),
                    _ => return Err(top.error(key, "has an mrope_section that is not three sizes")),
                }
            }
            for kind in ["rope_type", "type"] {
                if r.get(kind).and_then(|t| t.as_str()) == Some("mrope") {
                    r.insert(kind.into(), "default".into());
                }
            }
        }
    }
    Ok((v, sections.unwrap_or([16, 24, 24])))
}

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let (text_value, sections) = text_config(top)?;
    let text_cfg = Config { path: top.path.clone(), value: &text_value, at: String::new() };
    let text = super::qwen2::hf_config(&text_cfg, top.bool_or("tie_word_embeddings", false)?)?;
    if sections.iter().sum::<usize>() * 2 != text.head_dim {
        return Err(top.error(
            "mrope_section",
            &format!("is {sections:?}; its sizes must add up to head_dim / 2 = {}", text.head_dim / 2),
        ));
    }
    let text = DecoderConfig { family: "qwen2_5_vl", mrope: Some(sections), ..text };
    let hidden = text.hidden;
    let names = "model.* or model.language_model.*";
    let lm =
        super::prefix_of(dir, &["model.language_model.", "model."], "embed_tokens.weight", "language model", names)?;
    let weights = HfWeights { dir, prefix: lm, names: super::llama::hf_name, norm_shift: 0.0 };
    let decoder = Decoder::load(dev, text, &weights, kv_dtype)?;
    let visual = crate::model::qwen_vision::visual_prefix(dir)?;
    let vcfg = QwenVisionConfig::from_hf(&top.object("vision_config")?)?;
    if vcfg.out_hidden != hidden {
        return Err(top.error(
            "vision_config",
            &format!("has out_hidden_size {}, but the text model is {hidden} wide", vcfg.out_hidden),
        ));
    }
    let processor = crate::image::PatchProcessor::from_files(&dir.files)?;
    if (processor.patch, processor.merge, processor.temporal) != (vcfg.patch, vcfg.merge, vcfg.temporal) {
        return Err(top.error(
            "vision_config",
            &format!(
                "takes patches of {} merged {} over {} frames, but the processor makes {} merged {} over {}",
                vcfg.patch, vcfg.merge, vcfg.temporal, processor.patch, processor.merge, processor.temporal
            ),
        ));
    }
    let key = if top.value.get("image_token_id").is_some() { "image_token_id" } else { "image_token_index" };
    let image_token = top.usize_or(key, 151655)?;
    if image_token >= decoder.cfg.vocab {
        return Err(top.error(key, &format!("is {image_token}, outside the vocabulary of {}", decoder.cfg.vocab)));
    }
    let tower = QwenVisionTower::from_hf(dev, dir, visual, vcfg)?;
    let markup = ("<|vision_start|>".into(), "<|image_pad|>".into(), "<|vision_end|>".into());
    let qwen = QwenVision { tower, processor, image_token_id: image_token as u32, markup };
    Ok(Loaded { decoder, vision: None, audio: None, qwen_vision: Some(qwen) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Qwen2.5-VL-7B-Instruct config keeps its text keys at the top, with
    /// `rope_scaling` `{"type": "mrope", "mrope_section": [16, 24, 24]}`.
    #[test]
    fn the_published_flat_config_reads() {
        let top = serde_json::json!({
            "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
            "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
            "vocab_size": 152064, "tie_word_embeddings": false,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"hidden_size": 1280}
        });
        let c = Config::new("config.json".into(), &top);
        let (text, sections) = text_config(&c).unwrap();
        assert_eq!(sections, [16, 24, 24]);
        let cfg = super::super::qwen2::hf_config(&Config::new("config.json".into(), &text), false).unwrap();
        assert_eq!((cfg.hidden, cfg.head_dim, cfg.kv_heads, cfg.rope_theta), (3584, 128, 4, 1_000_000.0));
        let bad = serde_json::json!({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24]}});
        assert!(text_config(&Config::new("config.json".into(), &bad)).unwrap_err().to_string().contains("three"));
    }
}
