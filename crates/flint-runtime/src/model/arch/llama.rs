//! Llama (SmolLM2, the text model of SmolVLM): RMSNorm before attention and MLP, a SiLU-gated
//! MLP, RoPE, grouped-query attention, a tied or untied head. The defaults every family starts
//! from; in GGUF its Q/K are stored permuted for interleaved RoPE, in Hugging Face directories
//! they rotate halves.

use flint_gpu::{DType, Device};

use super::{GgufFamily, HfFamily, Loaded};
use crate::Result;
use crate::hf::{Config, HfDir};
use crate::model::config::{DecoderConfig, Glu, RopeLayout};
use crate::model::decoder::Decoder;
use crate::model::weights::HfWeights;

/// Llama in GGUF files (`general.architecture` llama): the shared keys say it all.
pub const GGUF: GgufFamily = GgufFamily { arch: "llama", configure: |_, _| Ok(()) };

/// Llama directories (`model_type` llama; LlamaForCausalLM).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["llama"], load };

/// The fields every family starts from: Llama's (the sizes are zero, to be filled).
pub const LLAMA: DecoderConfig = DecoderConfig {
    family: "llama",
    layers: 0,
    hidden: 0,
    ffn: 0,
    heads: 0,
    kv_heads: 0,
    head_dim: 0,
    vocab: 0,
    context: 0,
    eps: 1e-6,
    rope_theta: 10000.0,
    rope_theta_local: 10000.0,
    rope_freq_scale: 1.0,
    rope_freq_scale_local: 1.0,
    rope_layout: RopeLayout::Interleaved,
    sliding_window: None,
    global_every: 1,
    attn_scale: 1.0,
    tied_head: false,
    embed_scale: 1.0,
    glu: Glu::Silu,
    qk_norm: false,
    post_norms: false,
    qkv_bias: false,
    mrope: None,
};

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let cfg = hf_config(top, false)?;
    let weights = HfWeights { dir, prefix: "model.", names: hf_name, norm_shift: 0.0 };
    Ok(Loaded::text(Decoder::load(dev, cfg, &weights, kv_dtype)?))
}

/// The transformers name of a decoder tensor's GGUF name (`blk.3.attn_q.weight`), its
/// decoder's tensors under `prefix` (`model.`, or `model.text_model.` in Idefics3), the head
/// at `lm_head.weight`.
pub fn hf_name(prefix: &str, gguf: &str) -> String {
    let p = prefix;
    match gguf {
        "token_embd.weight" => return format!("{p}embed_tokens.weight"),
        "output.weight" => return "lm_head.weight".into(),
        "output_norm.weight" => return format!("{p}norm.weight"),
        _ => {}
    }
    let Some((layer, rest)) = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
        return gguf.to_string();
    };
    let part = match rest {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("{p}layers.{layer}.{part}")
}

/// Read a Llama text config from a Hugging Face config (`text_config` of Idefics3, or the
/// top of a LlamaForCausalLM config.json). `tie_default` is the enclosing config's
/// `tie_word_embeddings`, used when the text config does not say.
pub(crate) fn hf_config(c: &Config<'_>, tie_default: bool) -> Result<DecoderConfig> {
    let model_type = c.str_or("model_type", "llama")?;
    if model_type != "llama" {
        return Err(
            c.error("model_type", &format!("is {model_type:?}; flint reads llama text models from safetensors"))
        );
    }
    for key in ["attention_bias", "mlp_bias"] {
        if c.bool_or(key, false)? {
            return Err(c.error(key, "is true; flint's Llama graph has no projection biases"));
        }
    }
    llama_like(c, tie_default)
}

/// The keys Llama shares with the families built on it (Qwen2): sizes, RoPE, norm epsilon,
/// the SiLU MLP, the tied head.
pub(crate) fn llama_like(c: &Config<'_>, tie_default: bool) -> Result<DecoderConfig> {
    let act = c.str_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(c.error("hidden_act", &format!("is {act:?}; a Llama MLP is silu-gated")));
    }
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let kv_heads = c.usize_or("num_key_value_heads", heads)?;
    if heads == 0 || !hidden.is_multiple_of(heads.max(1)) && c.value.get("head_dim").is_none() {
        return Err(c.error("num_attention_heads", &format!("is {heads}, which does not divide hidden_size {hidden}")));
    }
    let head_dim = c.usize_or("head_dim", hidden / heads.max(1))?;
    // transformers 5 keeps RoPE settings in rope_parameters; earlier versions at the top.
    let (rope_theta, freq_scale) = match c.value.get("rope_parameters").filter(|v| v.is_object()) {
        Some(_) => super::rope_set(&c.object("rope_parameters")?, 10000.0)?,
        None => {
            let scale = match c.value.get("rope_scaling").filter(|v| !v.is_null()) {
                None => 1.0,
                Some(_) => super::rope_set(&c.object("rope_scaling")?, 10000.0)?.1,
            };
            (c.f64_or("rope_theta", 10000.0)? as f32, scale)
        }
    };
    let cfg = DecoderConfig {
        layers: c.usize("num_hidden_layers")?,
        hidden,
        ffn: c.usize("intermediate_size")?,
        heads,
        kv_heads,
        head_dim,
        vocab: c.usize("vocab_size")?,
        context: c.usize_or("max_position_embeddings", 2048)?,
        eps: c.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta,
        rope_theta_local: rope_theta,
        rope_freq_scale: freq_scale,
        rope_freq_scale_local: freq_scale,
        // transformers keeps Q/K in their original order and rotates halves.
        rope_layout: RopeLayout::RotateHalf,
        sliding_window: None,
        global_every: 1,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        tied_head: c.bool_or("tie_word_embeddings", tie_default)?,
        ..LLAMA
    };
    cfg.validate().map_err(|m| crate::RuntimeError::Model(format!("{}: {m}", c.path.display())))?;
    Ok(cfg)
}
