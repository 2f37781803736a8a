//! Decoder hyperparameters, read from GGUF metadata (or a Hugging Face config.json) with every
//! field checked.

use crate::Result;
use crate::gguf::{Gguf, GgufError};
use crate::hf::Config;

/// Which decoder family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama (SmolLM2, the text model of SmolVLM): RMSNorm, SwiGLU, RoPE, GQA, tied or untied head.
    Llama,
    /// Gemma 3: embeddings scaled by sqrt(hidden), GeGLU (tanh GELU), QK-norm, sandwich norms,
    /// sliding-window layers with their own RoPE base, every `global_every`-th layer global.
    Gemma3,
}

/// How Q and K pair up for RoPE in the stored weights.
pub use flint_ref::rope::RopeLayout;

/// Hyperparameters of a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Family.
    pub arch: Arch,
    /// Layers.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest context the model was trained for.
    pub context: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base of global layers.
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers (Gemma 3).
    pub rope_theta_local: f32,
    /// Positions are multiplied by this (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    /// Pairing of the stored Q/K weights.
    pub rope_layout: RopeLayout,
    /// Sliding window of local layers (Gemma 3), if any.
    pub sliding_window: Option<usize>,
    /// Every n-th layer (1-based) is global when there is a sliding window.
    pub global_every: usize,
    /// Query scale (usually 1/sqrt(head_dim)).
    pub attn_scale: f32,
    /// Whether the output head is the embedding table even when the file holds a head too.
    pub tied_head: bool,
}

impl DecoderConfig {
    /// Whether layer `l` uses the sliding window.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding_window.is_some() && !(l + 1).is_multiple_of(self.global_every)
    }

    /// Check the numbers are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.layers == 0
            || self.hidden == 0
            || self.heads == 0
            || self.kv_heads == 0
            || self.vocab == 0
            || self.ffn == 0
        {
            return Err(format!("empty dimension in {self:?}"));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!("{} heads do not divide into {} KV heads", self.heads, self.kv_heads));
        }
        if !self.head_dim.is_multiple_of(4) || self.head_dim > flint_kernels::attention::MAX_HEAD_DIM {
            return Err(format!(
                "head_dim {} is not a multiple of 4 up to {}",
                self.head_dim,
                flint_kernels::attention::MAX_HEAD_DIM
            ));
        }
        if !(self.eps > 0.0 && self.rope_theta > 1.0) {
            return Err(format!("eps {} / rope theta {} out of range", self.eps, self.rope_theta));
        }
        Ok(())
    }

    /// Read from GGUF metadata (`general.architecture` llama or gemma3).
    pub fn from_gguf(g: &Gguf) -> Result<DecoderConfig, GgufError> {
        let arch_name = g.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            other => {
                return Err(g.error(format!(
                    "general.architecture {other:?} is not supported (flint runs \"llama\" and \"gemma3\")"
                )));
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden = g.get_usize(&key("embedding_length"))?;
        let heads = g.get_usize(&key("attention.head_count"))?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Ok(_) => g.get_usize(&key("attention.head_count_kv"))?,
            Err(_) => heads,
        };
        let head_dim = match g.get(&key("attention.key_length")) {
            Ok(_) => g.get_usize(&key("attention.key_length"))?,
            Err(_) if heads > 0 => hidden / heads,
            Err(e) => return Err(e),
        };
        let vocab = match g.get(&key("vocab_size")) {
            Ok(_) => g.get_usize(&key("vocab_size"))?,
            Err(_) => g.get("tokenizer.ggml.tokens")?.as_array().map_or(0, <[_]>::len),
        };
        let rope_theta = g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32;
        let freq_scale = match g.get(&key("rope.scaling.type")).ok().and_then(|v| v.as_str()) {
            Some("linear") => 1.0 / g.get_f64(&key("rope.scaling.factor"))? as f32,
            Some("none") | None => 1.0,
            Some(other) => return Err(g.error(format!("{} {other:?} is not supported", key("rope.scaling.type")))),
        };
        let (sliding_window, global_every, rope_theta_local, rope_layout) = match arch {
            Arch::Llama => (None, 1, rope_theta, RopeLayout::Interleaved),
            // llama.cpp stores Gemma 3's Q/K unpermuted (NEOX pairing), its local layers use
            // base 10000 and every sixth layer is global; the file records only the window.
            Arch::Gemma3 => (Some(g.get_usize(&key("attention.sliding_window"))?), 6, 10000.0, RopeLayout::RotateHalf),
        };
        let cfg = DecoderConfig {
            arch,
            layers: g.get_usize(&key("block_count"))?,
            hidden,
            ffn: g.get_usize(&key("feed_forward_length"))?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context: g.get_usize(&key("context_length"))?,
            eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta,
            rope_theta_local,
            rope_freq_scale: freq_scale,
            rope_layout,
            sliding_window,
            global_every,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            tied_head: false,
        };
        cfg.validate().map_err(|m| g.error(m))?;
        Ok(cfg)
    }

    /// Read a Llama text config from a Hugging Face config (`text_config` of Idefics3, or the
    /// top of a LlamaForCausalLM config.json). `tie_default` is the enclosing config's
    /// `tie_word_embeddings`, used when the text config does not say.
    pub fn from_hf(c: &Config<'_>, tie_default: bool) -> Result<DecoderConfig> {
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
        let act = c.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(c.error("hidden_act", &format!("is {act:?}; a Llama MLP is silu-gated")));
        }
        let hidden = c.usize("hidden_size")?;
        let heads = c.usize("num_attention_heads")?;
        let kv_heads = c.usize_or("num_key_value_heads", heads)?;
        if heads == 0 || !hidden.is_multiple_of(heads.max(1)) && c.value.get("head_dim").is_none() {
            return Err(
                c.error("num_attention_heads", &format!("is {heads}, which does not divide hidden_size {hidden}"))
            );
        }
        let head_dim = c.usize_or("head_dim", hidden / heads.max(1))?;
        // transformers 5 keeps RoPE settings in rope_parameters; earlier versions at the top.
        let (rope_theta, freq_scale) = match c.value.get("rope_parameters").filter(|v| v.is_object()) {
            Some(_) => {
                let r = c.object("rope_parameters")?;
                let kind = r.str_or("rope_type", "default")?;
                let scale = match kind {
                    "default" => 1.0,
                    "linear" => 1.0 / r.f64("factor")?,
                    other => {
                        return Err(r.error("rope_type", &format!("is {other:?}; flint has default and linear RoPE")));
                    }
                };
                (r.f64_or("rope_theta", 10000.0)?, scale)
            }
            None => {
                let scale = match c.value.get("rope_scaling").filter(|v| !v.is_null()) {
                    None => 1.0,
                    Some(_) => {
                        let r = c.object("rope_scaling")?;
                        match r.str_or("rope_type", r.str_or("type", "default")?)? {
                            "default" => 1.0,
                            "linear" => 1.0 / r.f64("factor")?,
                            other => {
                                return Err(
                                    r.error("rope_type", &format!("is {other:?}; flint has default and linear RoPE"))
                                );
                            }
                        }
                    }
                };
                (c.f64_or("rope_theta", 10000.0)?, scale)
            }
        };
        let cfg = DecoderConfig {
            arch: Arch::Llama,
            layers: c.usize("num_hidden_layers")?,
            hidden,
            ffn: c.usize("intermediate_size")?,
            heads,
            kv_heads,
            head_dim,
            vocab: c.usize("vocab_size")?,
            context: c.usize_or("max_position_embeddings", 2048)?,
            eps: c.f64_or("rms_norm_eps", 1e-6)? as f32,
            rope_theta: rope_theta as f32,
            rope_theta_local: rope_theta as f32,
            rope_freq_scale: freq_scale as f32,
            // transformers keeps Q/K in their original order and rotates halves.
            rope_layout: RopeLayout::RotateHalf,
            sliding_window: None,
            global_every: 1,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            tied_head: c.bool_or("tie_word_embeddings", tie_default)?,
        };
        cfg.validate().map_err(|m| crate::RuntimeError::Model(format!("{}: {m}", c.path.display())))?;
        Ok(cfg)
    }
}
