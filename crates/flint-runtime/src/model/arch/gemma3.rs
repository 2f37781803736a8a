//! Gemma 3, from GGUF (as llama.cpp writes it) and from Hugging Face directories: embeddings
//! scaled by sqrt(hidden), a tanh-GELU gated MLP, QK-norm, sandwich norms (after attention and
//! after the MLP too), RMSNorm scaling by `1 + w`, and sliding-window layers with their own RoPE
//! base (and no RoPE scaling), every sixth layer (by default) global.

use flint_gpu::{DType, Device};

use super::{GgufFamily, HfFamily, Loaded, rope_set};
use crate::Result;
use crate::gguf::{Gguf, GgufError};
use crate::hf::{Config, HfDir};
use crate::model::config::{DecoderConfig, Glu, RopeLayout};
use crate::model::decoder::Decoder;
use crate::model::vision::{TowerNames, VisionConfig, VisionTower};
use crate::model::weights::HfWeights;
use crate::multimodal::{Processor, Vision};

/// Gemma 3 in GGUF files (`general.architecture` gemma3).
pub const GGUF: GgufFamily = GgufFamily { arch: "gemma3", configure };

fn configure(g: &Gguf, cfg: &mut DecoderConfig) -> Result<(), GgufError> {
    cfg.embed_scale = (cfg.hidden as f32).sqrt();
    cfg.glu = Glu::GeluTanh;
    cfg.qk_norm = true;
    cfg.post_norms = true;
    // llama.cpp stores Gemma 3's Q/K unpermuted (NEOX pairing); its local layers use base
    // 10000 and every sixth layer is global; the file records only the window.
    cfg.rope_layout = RopeLayout::RotateHalf;
    cfg.sliding_window = Some(g.get_usize("gemma3.attention.sliding_window")?);
    cfg.global_every = 6;
    cfg.rope_theta_local = 10000.0;
    cfg.rope_freq_scale_local = 1.0;
    Ok(())
}

/// Gemma 3 text directories (`model_type` gemma3_text; Gemma3ForCausalLM).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["gemma3_text"], load };

/// Gemma 3 vision-language directories (`model_type` gemma3; Gemma3ForConditionalGeneration):
/// the text decoder, a SigLIP tower with the average-pool projector, Gemma3Processor's prompt
/// markup, and each image's tokens attending to each other both ways.
pub(crate) const HF_VISION: HfFamily = HfFamily { model_types: &["gemma3"], load: load_vision };

fn load_vision(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let text = hf_config(&top.object("text_config")?, top.bool_or("tie_word_embeddings", true)?)?;
    let hidden = text.hidden;
    // transformers 5.x in memory, and the published checkpoints' (and 5.x's saved) names.
    let lm = super::prefix_of(
        dir,
        &["model.language_model.", "language_model.model."],
        "embed_tokens.weight",
        "language model",
        "model.language_model.* or language_model.model.*",
    )?;
    let weights = HfWeights { dir, prefix: lm, names: hf_name, norm_shift: 1.0 };
    let decoder = Decoder::load(dev, text, &weights, kv_dtype)?;
    let vcfg = VisionConfig::from_gemma3(top, hidden)?;
    let encoder = super::prefix_of(
        dir,
        &["model.vision_tower.vision_model", "vision_tower.vision_model", "model.vision_tower", "vision_tower"],
        ".embeddings.patch_embedding.weight",
        "vision tower",
        "vision_tower.vision_model.* or vision_tower.*",
    )?;
    let connector = super::prefix_of(
        dir,
        &["model.multi_modal_projector", "multi_modal_projector"],
        ".mm_input_projection_weight",
        "projector",
        "multi_modal_projector.*",
    )?;
    let image = crate::image::FixedSizeProcessor::from_files(&dir.files, vcfg.image_size)?;
    if (image.width, image.height) != (vcfg.image_size, vcfg.image_size) {
        return Err(crate::RuntimeError::Model(format!(
            "{}: the processor resizes to {}x{} but the vision tower takes {}x{} images",
            dir.dir.display(),
            image.width,
            image.height,
            vcfg.image_size,
            vcfg.image_size
        )));
    }
    let image_token_id = match top.value.get("image_token_index") {
        Some(_) => top.usize("image_token_index")?,
        None => top.usize("image_token_id")?,
    };
    if image_token_id >= decoder.cfg.vocab {
        return Err(top.error(
            "image_token_index",
            &format!("is {image_token_id}, outside the vocabulary of {}", decoder.cfg.vocab),
        ));
    }
    let tokens = vcfg.tokens_per_tile();
    let tower = VisionTower::from_hf(dev, dir, vcfg, TowerNames { encoder, connector })?;
    let processor = Processor::Gemma3 {
        image,
        boi: "<start_of_image>".into(),
        image_token: "<image_soft_token>".into(),
        eoi: "<end_of_image>".into(),
        tokens,
    };
    Ok(Loaded::vision(decoder, Vision { tower, processor, image_token_id: image_token_id as u32, bidirectional: true }))
}

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let cfg = hf_config(top, true)?;
    let weights = HfWeights { dir, prefix: "model.", names: hf_name, norm_shift: 1.0 };
    Ok(Loaded::text(Decoder::load(dev, cfg, &weights, kv_dtype)?))
}

/// The transformers name of a Gemma 3 decoder tensor's GGUF name under `prefix`: Llama's
/// names, with the QK-norms and the four norms of a sandwich layer.
pub fn hf_name(prefix: &str, gguf: &str) -> String {
    let part = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(layer, rest)| {
        let part = match rest {
            "attn_q_norm.weight" => "self_attn.q_norm.weight",
            "attn_k_norm.weight" => "self_attn.k_norm.weight",
            "post_attention_norm.weight" => "post_attention_layernorm.weight",
            "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
            "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
            _ => return None,
        };
        Some(format!("{prefix}layers.{layer}.{part}"))
    });
    part.unwrap_or_else(|| super::llama::hf_name(prefix, gguf))
}

/// Read a Gemma 3 text config from a Hugging Face config (the top of a Gemma3ForCausalLM
/// config.json; Gemma3ForConditionalGeneration keeps one as `text_config`), in transformers 4.5x's
/// keys (`rope_theta`, `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`) or 5.x's
/// (`rope_parameters` per layer type, `layer_types`). `tie_default` is the enclosing config's
/// `tie_word_embeddings`.
pub(crate) fn hf_config(c: &Config<'_>, tie_default: bool) -> Result<DecoderConfig> {
    if c.bool_or("attention_bias", false)? {
        return Err(c.error("attention_bias", "is true; flint's Gemma 3 graph has no projection biases"));
    }
    if c.bool_or("use_bidirectional_attention", false)? {
        return Err(c.error("use_bidirectional_attention", "is true; flint's Gemma 3 text decoder is causal"));
    }
    let act_key =
        if c.value.get("hidden_activation").is_some_and(|v| !v.is_null()) { "hidden_activation" } else { "hidden_act" };
    let act = c.str_or(act_key, "gelu_pytorch_tanh")?;
    if act != "gelu_pytorch_tanh" {
        return Err(c.error(act_key, &format!("is {act:?}; Gemma 3's MLP is gelu_pytorch_tanh-gated")));
    }
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if c.value.get(key).is_some_and(|v| !v.is_null()) {
            return Err(c.error(key, "is set; flint has no logit soft-capping (Gemma 3 checkpoints have none)"));
        }
    }
    // The published checkpoints' `text_config` leaves out what Gemma3TextConfig defaults
    // (gemma-3-4b-it gives only widths, layers, rope_scaling and sliding_window): the same
    // defaults here.
    let hidden = c.usize_or("hidden_size", 2304)?;
    let heads = c.usize_or("num_attention_heads", 8)?;
    let head_dim = c.usize_or("head_dim", 256)?;
    let layers = c.usize_or("num_hidden_layers", 26)?;
    let global_every = match c.value.get("layer_types").filter(|v| !v.is_null()) {
        Some(types) => {
            let types = types.as_array().ok_or_else(|| c.error("layer_types", "is not a list"))?;
            let full: Vec<bool> = types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(true),
                    Some("sliding_attention") => Ok(false),
                    _ => Err(
                        c.error("layer_types", &format!("holds {t}; flint knows full_attention and sliding_attention"))
                    ),
                })
                .collect::<Result<_>>()?;
            if full.len() != layers {
                return Err(c.error("layer_types", &format!("has {} entries for {layers} layers", full.len())));
            }
            // Every n-th layer global, n the first global layer's number (none global: all local).
            let n = full.iter().position(|&f| f).map_or(usize::MAX, |i| i + 1);
            if full.iter().enumerate().any(|(l, &f)| f != (l + 1).is_multiple_of(n)) {
                return Err(c.error("layer_types", "is not every n-th layer global, the one pattern flint runs"));
            }
            n
        }
        None => c.usize_or("sliding_window_pattern", 6)?,
    };
    let (rope_theta, freq_scale, rope_theta_local, freq_scale_local) = rope(c)?;
    let cfg = DecoderConfig {
        family: "gemma3",
        layers,
        hidden,
        ffn: c.usize_or("intermediate_size", 9216)?,
        heads,
        kv_heads: c.usize_or("num_key_value_heads", 4)?,
        head_dim,
        vocab: c.usize_or("vocab_size", 262208)?,
        context: c.usize_or("max_position_embeddings", 131072)?,
        eps: c.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta,
        rope_theta_local,
        rope_freq_scale: freq_scale,
        rope_freq_scale_local: freq_scale_local,
        rope_layout: RopeLayout::RotateHalf,
        sliding_window: Some(c.usize_or("sliding_window", 4096)?),
        global_every,
        // transformers' default is 256 whatever head_dim is.
        attn_scale: 1.0 / (c.f64_or("query_pre_attn_scalar", 256.0)? as f32).sqrt(),
        tied_head: c.bool_or("tie_word_embeddings", tie_default)?,
        embed_scale: (hidden as f32).sqrt(),
        glu: Glu::GeluTanh,
        qk_norm: true,
        post_norms: true,
        qkv_bias: false,
        mrope: None,
    };
    cfg.validate().map_err(|m| crate::RuntimeError::Model(format!("{}: {m}", c.path.display())))?;
    Ok(cfg)
}

/// RoPE base and position scale of the global layers, then of the local ones: from
/// transformers 5.x's `rope_parameters` (per layer type, or one set for the global layers),
/// falling back to 4.5x's flat keys (`rope_theta`, `rope_local_base_freq`, `rope_scaling`) for
/// what it does not give. transformers runs the local layers unscaled unless their own
/// parameters say otherwise.
fn rope(c: &Config<'_>) -> Result<(f32, f32, f32, f32)> {
    let flat_global = c.f64_or("rope_theta", 1e6)?;
    let flat_local = c.f64_or("rope_local_base_freq", 1e4)?;
    let global_flat = |c: &Config<'_>| -> Result<(f32, f32)> {
        match c.value.get("rope_scaling").filter(|v| !v.is_null()) {
            Some(_) => rope_set(&c.object("rope_scaling")?, flat_global),
            None => Ok((flat_global as f32, 1.0)),
        }
    };
    if c.value.get("rope_parameters").is_some_and(|v| v.is_object()) {
        let r = c.object("rope_parameters")?;
        let per_type = ["full_attention", "sliding_attention"].iter().any(|k| r.value.get(*k).is_some());
        if per_type {
            let (g, gs) = match r.value.get("full_attention") {
                Some(_) => rope_set(&r.object("full_attention")?, flat_global)?,
                None => global_flat(c)?,
            };
            let (l, ls) = match r.value.get("sliding_attention") {
                Some(_) => rope_set(&r.object("sliding_attention")?, flat_local)?,
                None => (flat_local as f32, 1.0),
            };
            return Ok((g, gs, l, ls));
        }
        let (g, gs) = rope_set(&r, flat_global)?;
        return Ok((g, gs, flat_local as f32, 1.0));
    }
    let (g, gs) = global_flat(c)?;
    Ok((g, gs, flat_local as f32, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gemma-3-4b-it's `text_config` as published: only widths, layers, RoPE scaling and the
    /// window; the rest is Gemma3TextConfig's defaults.
    #[test]
    fn a_published_text_config_reads_with_transformers_defaults() {
        let v = serde_json::json!({"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024});
        let c = hf_config(&Config::new("config.json".into(), &v), true).unwrap();
        assert_eq!((c.hidden, c.ffn, c.layers, c.heads, c.kv_heads, c.head_dim), (2560, 10240, 34, 8, 4, 256));
        assert_eq!((c.vocab, c.context, c.sliding_window, c.global_every), (262208, 131072, Some(1024), 6));
        assert_eq!(
            (c.rope_theta, c.rope_freq_scale, c.rope_theta_local, c.rope_freq_scale_local),
            (1e6, 0.125, 1e4, 1.0)
        );
        assert_eq!((c.attn_scale, c.tied_head, c.embed_scale), (1.0 / 16.0, true, 2560f32.sqrt()));
    }
}
