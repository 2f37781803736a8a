//! Decoder families as data. What differs between decoders (embedding scale, gated unit,
//! QK-norm, sandwich norms, RoPE pairing and bases per layer, sliding-window pattern, tied head)
//! is a field of [`DecoderConfig`], and each family's file fills those fields from its GGUF
//! metadata or its Hugging Face config and owns its tensor-name table; the decoder reads the
//! fields and has no per-family branches. Adding a family is one file here and one line in
//! [`GGUF_FAMILIES`] or `HF_FAMILIES`, and a `pub mod` line.

pub mod gemma3;
pub mod idefics3;
pub mod llama;
pub mod qwen2;
pub mod qwen2_5_vl;
pub mod qwen2_audio;

use flint_gpu::{DType, Device};

use super::audio::AudioTower;
use super::config::DecoderConfig;
use super::decoder::Decoder;
use super::qwen_vision::QwenVision;
use crate::Result;
use crate::gguf::{Gguf, GgufError};
use crate::hf::{Config, HfDir};
use crate::multimodal::Vision;

/// A family stored in GGUF files: its `general.architecture`, and what it sets on the config
/// read from the keys every family shares (`{arch}.block_count`, ...; see
/// [`DecoderConfig::from_gguf`]).
pub struct GgufFamily {
    /// The `general.architecture` value.
    pub arch: &'static str,
    /// Set the family's fields of `cfg` from `g` (the shared keys are read already).
    pub configure: fn(g: &Gguf, cfg: &mut DecoderConfig) -> Result<(), GgufError>,
}

/// A family stored as a Hugging Face directory: the config.json `model_type`s it reads, and its
/// loader.
pub(crate) struct HfFamily {
    /// `model_type` values.
    pub(crate) model_types: &'static [&'static str],
    /// Load the decoder (and the vision or audio side of a multimodal family) from `dir`, whose
    /// config.json is `top`, with a KV cache of `kv_dtype`.
    pub(crate) load: HfLoader,
}

/// A Hugging Face family's loader: the decoder, and the vision or audio side of a multimodal family.
pub(crate) type HfLoader = fn(dev: &Device, dir: &HfDir, top: &Config<'_>, kv_dtype: DType) -> Result<Loaded>;

/// What a loader makes: the decoder, and the vision or audio side of a multimodal family.
pub(crate) struct Loaded {
    pub(crate) decoder: Decoder,
    pub(crate) vision: Option<Vision>,
    pub(crate) audio: Option<AudioTower>,
    pub(crate) qwen_vision: Option<QwenVision>,
}

impl Loaded {
    /// A text-only model.
    pub(crate) fn text(decoder: Decoder) -> Loaded {
        Loaded { decoder, vision: None, audio: None, qwen_vision: None }
    }

    /// A vision-language model.
    pub(crate) fn vision(decoder: Decoder, vision: Vision) -> Loaded {
        Loaded { decoder, vision: Some(vision), audio: None, qwen_vision: None }
    }
}

/// The families flint reads from GGUF.
pub const GGUF_FAMILIES: &[GgufFamily] = &[llama::GGUF, gemma3::GGUF];

/// The families flint reads from Hugging Face directories.
pub(crate) const HF_FAMILIES: &[HfFamily] =
    &[llama::HF, idefics3::HF, gemma3::HF, gemma3::HF_VISION, qwen2::HF, qwen2_audio::HF, qwen2_5_vl::HF];

/// The GGUF family whose `general.architecture` is `arch`.
pub fn gguf_family(arch: &str) -> Option<&'static GgufFamily> {
    GGUF_FAMILIES.iter().find(|f| f.arch == arch)
}

/// The Hugging Face family that reads `model_type`.
pub(crate) fn hf_family(model_type: &str) -> Option<&'static HfFamily> {
    HF_FAMILIES.iter().find(|f| f.model_types.contains(&model_type))
}

/// One set of RoPE parameters of a Hugging Face config (`rope_parameters`, one of its
/// per-layer-type entries, or `rope_scaling`): the base (`rope_theta`, else `base`) and the
/// position scale (1, or 1 / `factor` for linear scaling), the kind read from `rope_type`, or
/// from `type` in older configs.
pub(crate) fn rope_set(r: &Config<'_>, base: f64) -> Result<(f32, f32)> {
    let key = if r.value.get("rope_type").is_some() { "rope_type" } else { "type" };
    let scale = match r.str_or(key, "default")? {
        "default" => 1.0,
        "linear" => 1.0 / r.f64("factor")?,
        other => return Err(r.error(key, &format!("is {other:?}; flint has default and linear RoPE"))),
    };
    Ok((r.f64_or("rope_theta", base)? as f32, scale as f32))
}

/// The first of `candidates` under which `dir` holds `tensor` (`{prefix}{tensor}`): checkpoints
/// name a part differently (transformers 5.x in memory, the published checkpoints). When none
/// holds it, an error names the directory, the part (`what`) and the names looked for.
pub(crate) fn prefix_of<'a>(
    dir: &HfDir,
    candidates: &[&'a str],
    tensor: &str,
    what: &str,
    names: &str,
) -> Result<&'a str> {
    candidates
        .iter()
        .copied()
        .find(|p| dir.has(&format!("{p}{tensor}")))
        .ok_or_else(|| crate::RuntimeError::Model(format!("{}: no {what} tensors ({names})", dir.dir.display())))
}

/// The names a message lists: every `general.architecture`, or every `model_type`.
pub fn known(hf: bool) -> String {
    let names: Vec<&str> = if hf {
        HF_FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
    } else {
        GGUF_FAMILIES.iter().map(|f| f.arch).collect()
    };
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}
