//! Qwen2 and Qwen2.5 text models (Hugging Face directories, `model_type` qwen2;
//! Qwen2ForCausalLM): Llama's graph with biases on the Q, K and V projections, RoPE rotating
//! halves, usually a tied head. Sliding-window attention (`use_sliding_window`), off in every
//! published checkpoint, is refused.

use flint_gpu::{DType, Device};

use super::llama::{hf_name, llama_like};
use super::{HfFamily, Loaded};
use crate::Result;
use crate::hf::{Config, HfDir};
use crate::model::config::DecoderConfig;
use crate::model::decoder::Decoder;
use crate::model::weights::HfWeights;

/// Qwen2 directories (`model_type` qwen2).
pub(crate) const HF: HfFamily = HfFamily { model_types: &["qwen2"], load };

fn load(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded> {
    let cfg = hf_config(top, false)?;
    let weights = HfWeights { dir, prefix: "model.", names: hf_name, norm_shift: 0.0 };
    Ok(Loaded::text(Decoder::load(dev, cfg, &weights, kv_dtype)?))
}

/// Read a Qwen2 text config (the top of a Qwen2ForCausalLM config.json, or Qwen2.5-VL's text
/// part); `tie_default` is the enclosing config's `tie_word_embeddings`.
pub(crate) fn hf_config(c: &Config<'_>, tie_default: bool) -> Result<DecoderConfig> {
    if c.bool_or("use_sliding_window", false)? {
        return Err(c.error("use_sliding_window", "is true; flint runs Qwen2 with full attention in every layer"));
    }
    let cfg = llama_like(c, tie_default)?;
    Ok(DecoderConfig { family: "qwen2", qkv_bias: true, ..cfg })
}
