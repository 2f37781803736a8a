//! Decoder hyperparameters, read from GGUF metadata (or a Hugging Face config.json) with every
//! field checked.

use crate::Result;
use crate::gguf::{Gguf, GgufError};

/// The gated unit of a decoder's MLP: `act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Glu {
    /// SiLU (SwiGLU; Llama).
    Silu,
    /// GELU, tanh approximation (GeGLU; Gemma).
    GeluTanh,
}

/// How Q and K pair up for RoPE in the stored weights.
pub use flint_ref::rope::RopeLayout;

/// Hyperparameters of a decoder, and what its family does differently (see
/// [`super::arch`]): the decoder reads these fields and nothing else about the family.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// The family's name (for messages).
    pub family: &'static str,
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
    /// Positions of global layers are multiplied by this (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    /// The same for sliding-window layers (Gemma 3 scales only its global layers).
    pub rope_freq_scale_local: f32,
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
    /// Token embeddings are multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: f32,
    /// The MLP's gated unit.
    pub glu: Glu,
    /// RMSNorm of each head's queries and keys before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// Sandwich norms: RMSNorm of the attention and MLP outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Biases on the Q, K and V projections (`attn_q.bias`, ...; Qwen2).
    pub qkv_bias: bool,
    /// M-RoPE (Qwen2-VL, Qwen2.5-VL): the rotated pairs' frequencies in three sections that
    /// take a token's temporal, row and column positions (`mrope_section`; they sum to
    /// `head_dim / 2`). Text tokens have all three equal, which is plain RoPE.
    pub mrope: Option<[usize; 3]>,
}

/// The most layers a decoder may have (the largest open models have about 130).
pub const MAX_LAYERS: usize = 1024;
/// The widest hidden or MLP size, and the most query heads times head size.
pub const MAX_WIDTH: usize = 1 << 18;
/// The most attention heads.
pub const MAX_HEADS: usize = 1024;
/// The largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 24;
/// The longest context.
pub const MAX_CONTEXT: usize = 1 << 24;

impl DecoderConfig {
    /// Whether layer `l` uses the sliding window.
    pub fn is_local(&self, l: usize) -> bool {
        self.sliding_window.is_some() && !(l + 1).is_multiple_of(self.global_every)
    }

    /// Check the numbers are usable.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v, keys) in [
            ("layers", self.layers, "block_count / num_hidden_layers"),
            ("hidden size", self.hidden, "embedding_length / hidden_size"),
            ("MLP size", self.ffn, "feed_forward_length / intermediate_size"),
            ("heads", self.heads, "attention.head_count / num_attention_heads"),
            ("KV heads", self.kv_heads, "attention.head_count_kv / num_key_value_heads"),
            ("vocabulary", self.vocab, "vocab_size or the token list / vocab_size"),
            ("head_dim", self.head_dim, "attention.key_length / head_dim"),
        ] {
            if v == 0 {
                return Err(format!("{name} is 0 ({keys})"));
            }
        }
        // Each message ends with the field's names in a GGUF file and in a config.json.
        for (name, v, max, keys) in [
            ("layers", self.layers, MAX_LAYERS, "block_count / num_hidden_layers"),
            ("hidden size", self.hidden, MAX_WIDTH, "embedding_length / hidden_size"),
            ("MLP size", self.ffn, MAX_WIDTH, "feed_forward_length / intermediate_size"),
            ("heads", self.heads, MAX_HEADS, "attention.head_count / num_attention_heads"),
            ("KV heads", self.kv_heads, MAX_HEADS, "attention.head_count_kv / num_key_value_heads"),
            ("vocabulary", self.vocab, MAX_VOCAB, "vocab_size or the token list / vocab_size"),
            ("context", self.context, MAX_CONTEXT, "context_length / max_position_embeddings"),
            (
                "heads x head_dim",
                self.heads.saturating_mul(self.head_dim),
                MAX_WIDTH,
                "attention.key_length / head_dim",
            ),
        ] {
            if v > max {
                return Err(format!("{name} {v} is over flint's limit of {max} ({keys})"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} heads do not divide into {} KV heads (attention.head_count_kv / num_key_value_heads)",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(4) || self.head_dim > flint_kernels::attention::MAX_HEAD_DIM {
            return Err(format!(
                "head_dim {} is not a multiple of 4 up to {} (attention.key_length / head_dim)",
                self.head_dim,
                flint_kernels::attention::MAX_HEAD_DIM
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps < 1.0) {
            return Err(format!(
                "norm epsilon {} is not a finite value in (0, 1) (attention.layer_norm_rms_epsilon / rms_norm_eps)",
                self.eps
            ));
        }
        for (name, theta, keys) in [
            ("RoPE base", self.rope_theta, "rope.freq_base / rope_theta"),
            (
                "local RoPE base",
                self.rope_theta_local,
                "rope_local_base_freq / rope_parameters.sliding_attention.rope_theta",
            ),
        ] {
            if !(theta.is_finite() && theta > 1.0) {
                return Err(format!("{name} {theta} is not a finite value above 1 ({keys})"));
            }
        }
        for (name, scale) in [("", self.rope_freq_scale), ("local ", self.rope_freq_scale_local)] {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!(
                    "{name}RoPE frequency scale {scale} (1 / the linear scaling factor) is not finite and positive \
                     (rope.scaling.factor / rope_scaling.factor or rope_parameters' factor)"
                ));
            }
        }
        if !(self.attn_scale.is_finite() && self.attn_scale > 0.0) {
            return Err(format!(
                "query scale {} is not finite and positive (query_pre_attn_scalar must be positive)",
                self.attn_scale
            ));
        }
        if !(self.embed_scale.is_finite() && self.embed_scale > 0.0) {
            return Err(format!("embedding scale {} is not finite and positive", self.embed_scale));
        }
        if self.sliding_window.is_some_and(|w| w > MAX_CONTEXT) {
            return Err(format!(
                "sliding window {:?} is over flint's limit of {MAX_CONTEXT} (attention.sliding_window / sliding_window)",
                self.sliding_window
            ));
        }
        if self.sliding_window == Some(0) || self.global_every == 0 {
            return Err(format!(
                "sliding window {:?} / global layer period {} must be positive (attention.sliding_window / \
                 sliding_window)",
                self.sliding_window, self.global_every
            ));
        }
        Ok(())
    }

    /// Read from GGUF metadata: the keys every family shares (`{arch}.block_count`, ...),
    /// then what the family of `general.architecture` sets (see [`super::arch`]).
    pub fn from_gguf(g: &Gguf) -> Result<DecoderConfig, GgufError> {
        let arch_name = g.get_str("general.architecture")?;
        let Some(family) = super::arch::gguf_family(arch_name) else {
            return Err(g.error(format!(
                "general.architecture {arch_name:?} is not supported (flint runs {})",
                super::arch::known(false)
            )));
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
            Err(_) => {
                return Err(g.error(format!(
                    "metadata {:?} is 0 (and {:?} is absent, so the head size cannot be derived)",
                    key("attention.head_count"),
                    key("attention.key_length")
                )));
            }
        };
        let vocab = match g.get(&key("vocab_size")) {
            Ok(_) => g.get_usize(&key("vocab_size"))?,
            Err(_) => g.get("tokenizer.ggml.tokens")?.as_array().map_or(0, <[_]>::len),
        };
        // Absent means the Llama default; present, it must be a number.
        let rope_theta = match g.get(&key("rope.freq_base")) {
            Ok(_) => g.get_f64(&key("rope.freq_base"))? as f32,
            Err(_) => 10000.0,
        };
        let freq_scale = match g.get(&key("rope.scaling.type")).ok().and_then(|v| v.as_str()) {
            Some("linear") => 1.0 / g.get_f64(&key("rope.scaling.factor"))? as f32,
            Some("none") | None => 1.0,
            Some(other) => return Err(g.error(format!("{} {other:?} is not supported", key("rope.scaling.type")))),
        };
        let mut cfg = DecoderConfig {
            family: family.arch,
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
            rope_freq_scale: freq_scale,
            rope_freq_scale_local: freq_scale,
            rope_theta_local: rope_theta,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            ..super::arch::llama::LLAMA
        };
        (family.configure)(g, &mut cfg)?;
        cfg.validate().map_err(|m| g.error(m))?;
        Ok(cfg)
    }

    /// Check that `g` holds tensors for exactly the blocks this config counts (`blk.0` to
    /// `blk.{layers - 1}`), before a loader sizes anything by the count.
    pub fn check_blocks(&self, g: &Gguf) -> Result<(), GgufError> {
        let blocks = g
            .tensors
            .iter()
            .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |b| b + 1);
        if blocks != self.layers {
            let arch = g.get_str("general.architecture").unwrap_or("llama");
            return Err(g.error(format!(
                "metadata \"{arch}.block_count\" is {} but the file has tensors for {blocks} blocks",
                self.layers
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum V<'a> {
        U32(u32),
        F32(f32),
        Str(&'a str),
    }

    /// A GGUF image with `kv` metadata and one 4-value f32 tensor per name in `tensors`.
    fn gguf(kv: &[(&str, V<'_>)], tensors: &[String]) -> Gguf {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            s(&mut b, k);
            match v {
                V::U32(x) => b.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::F32(x) => b.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::Str(x) => {
                    b.extend(8u32.to_le_bytes());
                    s(&mut b, x);
                }
            }
        }
        for (i, t) in tensors.iter().enumerate() {
            s(&mut b, t);
            b.extend(1u32.to_le_bytes());
            b.extend(4u64.to_le_bytes());
            b.extend(0u32.to_le_bytes());
            b.extend((i as u64 * 32).to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.resize(b.len() + 32 * tensors.len(), 0);
        Gguf::from_bytes("test.gguf", b).unwrap()
    }

    fn llama(over: &[(&'static str, V<'static>)], blocks: usize) -> Result<DecoderConfig, GgufError> {
        let mut kv = vec![
            ("general.architecture", V::Str("llama")),
            ("llama.embedding_length", V::U32(64)),
            ("llama.attention.head_count", V::U32(4)),
            ("llama.feed_forward_length", V::U32(128)),
            ("llama.context_length", V::U32(256)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.block_count", V::U32(2)),
            ("llama.vocab_size", V::U32(100)),
        ];
        for (k, v) in over.iter() {
            let v = match v {
                V::U32(x) => V::U32(*x),
                V::F32(x) => V::F32(*x),
                V::Str(x) => V::Str(x),
            };
            match kv.iter_mut().find(|(n, _)| n == k) {
                Some(e) => e.1 = v,
                None => kv.push((k, v)),
            }
        }
        let tensors: Vec<String> = (0..blocks).map(|b| format!("blk.{b}.attn_norm.weight")).collect();
        let g = gguf(&kv, &tensors);
        let c = DecoderConfig::from_gguf(&g)?;
        c.check_blocks(&g)?;
        Ok(c)
    }

    #[test]
    fn a_valid_config_reads() {
        let c = llama(&[], 2).unwrap();
        assert_eq!((c.layers, c.hidden, c.head_dim, c.rope_theta), (2, 64, 16, 10000.0));
    }

    /// A family is data: the same shared keys under another architecture name give that
    /// family's fields, and an unknown name is refused with the list of known ones.
    #[test]
    fn each_family_sets_its_fields_from_the_shared_keys() {
        let gemma = |arch: &'static str| {
            let keys: Vec<(&str, V<'static>)> = vec![
                ("general.architecture", V::Str(arch)),
                ("gemma3.embedding_length", V::U32(64)),
                ("gemma3.attention.head_count", V::U32(4)),
                ("gemma3.feed_forward_length", V::U32(128)),
                ("gemma3.context_length", V::U32(256)),
                ("gemma3.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
                ("gemma3.block_count", V::U32(2)),
                ("gemma3.vocab_size", V::U32(100)),
                ("gemma3.attention.sliding_window", V::U32(32)),
                ("gemma3.rope.freq_base", V::F32(1e6)),
            ];
            DecoderConfig::from_gguf(&gguf(&keys, &[]))
        };
        let g = gemma("gemma3").unwrap();
        assert_eq!(
            (g.family, g.embed_scale, g.glu, g.qk_norm, g.post_norms),
            ("gemma3", 8.0, Glu::GeluTanh, true, true)
        );
        assert_eq!((g.sliding_window, g.global_every, g.rope_theta, g.rope_theta_local), (Some(32), 6, 1e6, 1e4));
        assert_eq!(g.rope_layout, RopeLayout::RotateHalf);
        assert!(g.is_local(0) && !g.is_local(5));
        let l = llama(&[], 2).unwrap();
        assert_eq!((l.family, l.embed_scale, l.glu, l.qk_norm, l.post_norms), ("llama", 1.0, Glu::Silu, false, false));
        assert_eq!((l.sliding_window, l.rope_layout), (None, RopeLayout::Interleaved));
        let e = gemma("mamba").unwrap_err().to_string();
        assert!(e.contains("\"mamba\" is not supported (flint runs \"llama\", \"gemma3\")"), "{e}");
    }

    #[test]
    fn hostile_metadata_is_refused_by_name_before_anything_is_sized() {
        type Case = (&'static [(&'static str, V<'static>)], usize, &'static str);
        let cases: Vec<Case> = vec![
            (&[("llama.block_count", V::U32(u32::MAX))], 2, "layers 4294967295 is over flint's limit of 1024"),
            (&[("llama.block_count", V::U32(30))], 2, "\"llama.block_count\" is 30 but the file has tensors for 2"),
            (&[], 3, "\"llama.block_count\" is 2 but the file has tensors for 3"),
            (&[("llama.embedding_length", V::U32(1 << 30))], 2, "hidden size 1073741824 is over"),
            (&[("llama.vocab_size", V::U32(u32::MAX))], 2, "vocabulary 4294967295 is over"),
            (&[("llama.context_length", V::U32(u32::MAX))], 2, "context 4294967295 is over"),
            (
                &[("llama.rope.freq_base", V::Str("1e4"))],
                2,
                "\"llama.rope.freq_base\" is Str(\"1e4\"), expected a number",
            ),
            (&[("llama.rope.freq_base", V::F32(f32::INFINITY))], 2, "RoPE base inf is not a finite value"),
            (&[("llama.rope.freq_base", V::F32(f32::NAN))], 2, "RoPE base NaN is not a finite value"),
            (
                &[("llama.rope.scaling.type", V::Str("linear")), ("llama.rope.scaling.factor", V::F32(0.0))],
                2,
                "RoPE frequency scale inf",
            ),
            (&[("llama.attention.layer_norm_rms_epsilon", V::F32(f32::NAN))], 2, "norm epsilon NaN"),
            (&[("llama.attention.layer_norm_rms_epsilon", V::F32(-1.0))], 2, "norm epsilon -1"),
        ];
        for (over, blocks, want) in cases {
            let e = llama(over, blocks).unwrap_err().to_string();
            assert!(e.starts_with("test.gguf: ") && e.contains(want), "want {want:?}, got {e}");
        }
    }
}
