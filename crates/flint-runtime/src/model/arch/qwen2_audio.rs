//! Qwen2-Audio (Hugging Face directories, `model_type` qwen2_audio;
//! Qwen2AudioForConditionalGeneration): a Whisper-style audio encoder whose padded keys are
//! masked, a 2x average pool, a LayerNorm and a linear projector in front of a Qwen2 decoder
//! (`text_config`); each clip's tokens replace the prompt's `<|AUDIO|>` tokens
//! (`audio_token_index`), `<|AUDIO|>` placeholders expanded as Qwen2AudioProcessor does.
//! Tensor names of the published checkpoints (`language_model.model.*`, `audio_tower.*`,
//! `multi_modal_projector.*`) and of transformers 5.x in memory (`model.language_model.*`, ...).

use flint_gpu::{DType, Device};

use super::{HfFamily, Loaded};
use crate::Result;
use crate::hf::{Config, HfDir};
use crate::model::audio::{AUDIO_CTX, AudioProcessor, AudioTower, EncoderDims};
use crate::model::config::DecoderConfig;
use crate::model::decoder::Decoder;
use crate::model::weights::HfWeights;

/// Qwen2-Audio directories (`model_type` qwen2_audio).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["qwen2_audio"], load };

/// The transformers name of a decoder tensor's GGUF name under `prefix`: Qwen2's (Llama's)
/// names, the untied head beside the decoder (`language_model.lm_head` in the published
/// checkpoints, `lm_head` in transformers 5.x).
fn hf_name(prefix: &str, gguf: &str) -> String {
    match (gguf, prefix) {
        ("output.weight", "language_model.model.") => "language_model.lm_head.weight".into(),
        _ => super::llama::hf_name(prefix, gguf),
    }
}

/// Qwen2Config's defaults, which the published checkpoints' sparse `text_config` leaves to
/// transformers (Qwen2-Audio-7B's gives little more than `model_type` and a few sizes).
const TEXT_DEFAULTS: [(&str, f64); 9] = [
    ("hidden_size", 4096.0),
    ("intermediate_size", 22016.0),
    ("num_hidden_layers", 32.0),
    ("num_attention_heads", 32.0),
    ("vocab_size", 151936.0),
    ("rms_norm_eps", 1e-6),
    ("max_position_embeddings", 32768.0),
    ("rope_theta", 10000.0),
    ("hidden_act", f64::NAN),
];

/// `text_config` with Qwen2Config's defaults where it is silent (`num_key_value_heads`
/// defaulting to the attention heads, as Qwen2Config does).
fn text_config(top: &Config<'_>) -> Result<serde_json::Value> {
    let mut v = top.object("text_config")?.value.clone();
    let Some(o) = v.as_object_mut() else { return Ok(v) };
    for (key, default) in TEXT_DEFAULTS {
        if o.get(key).is_none_or(serde_json::Value::is_null) {
            let value = match key {
                "hidden_act" => "silu".into(),
                "rms_norm_eps" | "rope_theta" => default.into(),
                _ => (default as u64).into(),
            };
            o.insert(key.into(), value);
        }
    }
    if o.get("num_key_value_heads").is_none_or(serde_json::Value::is_null) {
        let heads = o["num_attention_heads"].clone();
        o.insert("num_key_value_heads".into(), heads);
    }
    Ok(v)
}

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let text_value = text_config(top)?;
    let text_cfg = Config { path: top.path.clone(), value: &text_value, at: "text_config".into() };
    let text = super::qwen2::hf_config(&text_cfg, top.bool_or("tie_word_embeddings", false)?)?;
    let hidden = text.hidden;
    let lm = super::prefix_of(
        dir,
        &["language_model.model.", "model.language_model."],
        "embed_tokens.weight",
        "language model",
        "language_model.model.* or model.language_model.*",
    )?;
    let weights = HfWeights { dir, prefix: lm, names: hf_name, norm_shift: 0.0 };
    // transformers' Qwen2AudioForConditionalGeneration does not tie its head: a checkpoint's
    // own head is used whatever `tie_word_embeddings` says, the embeddings only without one.
    let text = DecoderConfig { tied_head: !dir.has(&weights.name("output.weight")), ..text };
    let decoder = Decoder::load(dev, text, &weights, kv_dtype)?;
    let encoder = super::prefix_of(
        dir,
        &["audio_tower", "model.audio_tower"],
        ".conv1.weight",
        "audio tower",
        "audio_tower.* or model.audio_tower.*",
    )?;
    let projector = super::prefix_of(
        dir,
        &["multi_modal_projector", "model.multi_modal_projector"],
        ".linear.weight",
        "projector",
        "multi_modal_projector.linear.*",
    )?;

    let a = top.object("audio_config")?;
    let dims = EncoderDims {
        mels: a.usize_or("num_mel_bins", 128)?,
        d: a.usize_or("d_model", 1280)?,
        ffn: a.usize_or("encoder_ffn_dim", 5120)?,
        heads: a.usize_or("encoder_attention_heads", 20)?,
        layers: a.usize_or("encoder_layers", 32)?,
        eps: 1e-5,
    };
    let (d, heads) = (dims.d, dims.heads);
    if !(1..=crate::whisper::MAX_WIDTH).contains(&d) {
        return Err(a.error("d_model", &format!("is {d}; flint takes 1 to {}", crate::whisper::MAX_WIDTH)));
    }
    if !(1..=4 * crate::whisper::MAX_WIDTH).contains(&dims.ffn) {
        return Err(a.error(
            "encoder_ffn_dim",
            &format!("is {}; flint takes 1 to {}", dims.ffn, 4 * crate::whisper::MAX_WIDTH),
        ));
    }
    if d == 0 || heads == 0 || !d.is_multiple_of(heads) || d / heads > 256 || !(d / heads).is_multiple_of(4) {
        return Err(a.error(
            "encoder_attention_heads",
            &format!("is {heads}; it must split d_model {d} into heads of at most 256 (a multiple of 4)"),
        ));
    }
    if !(1..=512).contains(&dims.mels) {
        return Err(a.error("num_mel_bins", &format!("is {}; flint takes 1 to 512", dims.mels)));
    }
    if !(1..=256).contains(&dims.layers) {
        return Err(a.error("encoder_layers", &format!("is {}; flint takes 1 to 256", dims.layers)));
    }
    if a.usize_or("max_source_positions", AUDIO_CTX)? != AUDIO_CTX {
        return Err(a.error("max_source_positions", &format!("is not {AUDIO_CTX} (30-second windows)")));
    }
    if a.str_or("activation_function", "gelu")? != "gelu" {
        return Err(a.error("activation_function", "is not gelu"));
    }
    if a.bool_or("scale_embedding", false)? {
        return Err(a.error("scale_embedding", "is true, which flint does not support"));
    }
    let key = if top.value.get("audio_token_index").is_some() { "audio_token_index" } else { "audio_token_id" };
    let audio_token = top.usize_or(key, 151646)?;
    if audio_token >= decoder.cfg.vocab {
        return Err(top.error(key, &format!("is {audio_token}, outside the vocabulary of {}", decoder.cfg.vocab)));
    }
    let processor = AudioProcessor::new(dev, dir, dims.mels)?;
    let tower = AudioTower::load(dev, dir, (encoder, projector), dims, hidden, processor, audio_token as u32)?;
    Ok(Loaded { decoder, vision: None, audio: Some(tower), qwen_vision: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2-Audio-7B-Instruct's config.json leaves most of `text_config` to Qwen2Config's
    /// defaults; they are filled in, and what it gives is kept.
    #[test]
    fn a_sparse_text_config_takes_qwen2_defaults() {
        let top = serde_json::json!({
            "model_type": "qwen2_audio",
            "text_config": {"model_type": "qwen2", "intermediate_size": 11008, "rope_theta": 10000, "vocab_size": 156032,
                            "torch_dtype": "bfloat16", "max_position_embeddings": 8192}
        });
        let c = Config::new("config.json".into(), &top);
        let t = text_config(&c).unwrap();
        assert_eq!(t["hidden_size"], 4096);
        assert_eq!(t["num_key_value_heads"], 32);
        assert_eq!(t["intermediate_size"], 11008);
        assert_eq!(t["vocab_size"], 156032);
        assert_eq!(t["max_position_embeddings"], 8192);
        let cfg = super::super::qwen2::hf_config(&Config::new("config.json".into(), &t), false).unwrap();
        assert_eq!((cfg.hidden, cfg.layers, cfg.ffn, cfg.vocab, cfg.context), (4096, 32, 11008, 156032, 8192));
        assert!(cfg.qkv_bias && !cfg.tied_head);
    }
}
