//! Gemma 3 (GGUF, as llama.cpp writes it): embeddings scaled by sqrt(hidden), a tanh-GELU gated
//! MLP, QK-norm, sandwich norms (after attention and after the MLP too), and sliding-window
//! layers with their own RoPE base, every sixth layer global.

use super::GgufFamily;
use crate::gguf::{Gguf, GgufError};
use crate::model::config::{DecoderConfig, Glu, RopeLayout};

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
    Ok(())
}
