//! The decoder graph shared by Llama and Gemma 3: embeddings, then per layer RMSNorm, Q/K/V,
//! (QK-norm), RoPE, K/V into the paged cache, attention, output projection, (post-norm),
//! residual, RMSNorm, gated MLP, (post-norm), residual; final norm and the output head. One call
//! records a forward over some new tokens of one sequence into a recorder; the caller submits.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, paged::KvPool, paged::SeqId};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::norm::{NormKind, NormParams};
use flint_ref::rope::RopeParams;

use super::config::{Arch, DecoderConfig};
use super::weights::{Embedding, Linear, linear, vector};
use crate::gguf::Gguf;
use crate::{Result, RuntimeError};

/// One decoder layer's weights.
#[derive(Debug)]
pub struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    /// Gemma 3: RMSNorm over each head of Q and K.
    qk_norm: Option<(Tensor, Tensor)>,
    /// Gemma 3: RMSNorm after attention and after the MLP.
    post_norms: Option<(Tensor, Tensor)>,
}

/// A decoder on the GPU.
#[derive(Debug)]
pub struct Decoder {
    /// Hyperparameters.
    pub cfg: DecoderConfig,
    dev: Device,
    embed: Embedding,
    layers: Vec<Layer>,
    out_norm: Tensor,
    head: Linear,
    /// Element type of the KV cache.
    pub kv_dtype: DType,
}

/// Tokens of one sequence going through the decoder, and where their K/V lands.
struct Step {
    t: usize,
    pos0: usize,
    positions: Tensor,
    table: attention::PageTable,
    dest: Vec<(usize, usize)>,
}

impl Decoder {
    /// Load a GGUF decoder (llama or gemma3) onto `dev`.
    pub fn from_gguf(dev: &Device, g: &Gguf) -> Result<Decoder> {
        let cfg = DecoderConfig::from_gguf(g)?;
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * d, cfg.kv_heads * d);
        let embed_info = g.require("token_embd.weight")?;
        let embed = Embedding { table: Linear::from_gguf(dev, g, embed_info, cfg.vocab, h)? };
        let head = match g.tensor("output.weight") {
            Some(info) => Linear::from_gguf(dev, g, info, cfg.vocab, h)?,
            None => embed.table.clone(),
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let gemma = cfg.arch == Arch::Gemma3;
            layers.push(Layer {
                attn_norm: vector(dev, g, &name("attn_norm.weight"), h)?,
                wq: linear(dev, g, &name("attn_q.weight"), q_dim, h)?,
                wk: linear(dev, g, &name("attn_k.weight"), kv_dim, h)?,
                wv: linear(dev, g, &name("attn_v.weight"), kv_dim, h)?,
                wo: linear(dev, g, &name("attn_output.weight"), h, q_dim)?,
                ffn_norm: vector(dev, g, &name("ffn_norm.weight"), h)?,
                w_gate: linear(dev, g, &name("ffn_gate.weight"), cfg.ffn, h)?,
                w_up: linear(dev, g, &name("ffn_up.weight"), cfg.ffn, h)?,
                w_down: linear(dev, g, &name("ffn_down.weight"), h, cfg.ffn)?,
                qk_norm: if gemma {
                    Some((
                        vector(dev, g, &name("attn_q_norm.weight"), d)?,
                        vector(dev, g, &name("attn_k_norm.weight"), d)?,
                    ))
                } else {
                    None
                },
                post_norms: if gemma {
                    Some((
                        vector(dev, g, &name("post_attention_norm.weight"), h)?,
                        vector(dev, g, &name("post_ffw_norm.weight"), h)?,
                    ))
                } else {
                    None
                },
            });
        }
        let kv_dtype = if dev.caps().f16 { DType::F16 } else { DType::F32 };
        Ok(Decoder {
            out_norm: vector(dev, g, "output_norm.weight", h)?,
            cfg,
            dev: dev.clone(),
            embed,
            layers,
            head,
            kv_dtype,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// A KV pool with room for `tokens` tokens in total, in pages of `page_size`.
    pub fn kv_pool(&self, tokens: usize, page_size: usize) -> Result<KvPool> {
        let pages = tokens.div_ceil(page_size).max(1);
        Ok(KvPool::new(
            &self.dev,
            self.cfg.layers,
            pages,
            page_size,
            self.cfg.kv_heads,
            self.cfg.head_dim,
            self.kv_dtype,
        )?)
    }

    /// Bytes of weights one decode step reads (every layer's matrices and the head).
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|w| w.bytes()).sum::<usize>()
            })
            .sum();
        layers + self.head.bytes()
    }

    /// Record the embedding of `ids` (u32 `[t]`) into `[t, hidden]` hidden states.
    pub fn embed(&self, rec: &mut Recorder, ids: &Tensor, t: usize) -> Result<Tensor> {
        let x = self.dev.empty("hidden", &[t, self.cfg.hidden], DType::F32)?;
        let scale = if self.cfg.arch == Arch::Gemma3 { (self.cfg.hidden as f32).sqrt() } else { 1.0 };
        self.embed.forward(&self.dev, rec, ids, t, scale, &x)?;
        Ok(x)
    }

    /// Record the layers over `t` new tokens of `seq` whose inputs are `x` `[t, hidden]`; their
    /// K/V join the sequence's cache. Returns the final-normed hidden states `[t, hidden]`.
    pub fn forward(&self, rec: &mut Recorder, pool: &mut KvPool, seq: SeqId, x: &Tensor, t: usize) -> Result<Tensor> {
        let cfg = &self.cfg;
        if t == 0 {
            return Err(RuntimeError::Request("no tokens to run".into()));
        }
        let pos0 = pool.len(seq)?;
        if pos0 + t > cfg.context {
            return Err(RuntimeError::Request(format!(
                "{} tokens would exceed the model's context of {}",
                pos0 + t,
                cfg.context
            )));
        }
        let positions = pool.append(rec, seq, t)?;
        let pos: Vec<u32> = positions.clone().map(|p| p as u32).collect();
        let step = Step {
            t,
            pos0,
            positions: self.dev.upload_u32("positions", &pos, &[t])?,
            table: pool.page_table(&self.dev, &[seq])?,
            dest: positions.map(|p| (0, p)).collect(),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            self.layer(rec, pool, l, layer, x, &step)?;
        }
        let out = self.dev.empty("final hidden", &[t, cfg.hidden], DType::F32)?;
        self.rmsnorm(rec, x, &self.out_norm, t, cfg.hidden, &out)?;
        Ok(out)
    }

    /// Record the output head over rows `rows` of final hidden states `h` into f32 logits
    /// `[rows.len(), vocab]`.
    pub fn logits(&self, rec: &mut Recorder, h: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let m = rows.len();
        let hd = self.cfg.hidden;
        let x = h.view((rows.start * hd * 4) as u64, &[m, hd], DType::F32)?;
        let out = self.dev.empty("logits", &[m, self.cfg.vocab], DType::F32)?;
        self.head.forward(&self.dev, rec, &x, m, &out)?;
        Ok(out)
    }

    fn rmsnorm(&self, rec: &mut Recorder, x: &Tensor, w: &Tensor, rows: usize, dim: usize, out: &Tensor) -> Result<()> {
        let p = NormParams { kind: NormKind::Rms, rows, dim, eps: self.cfg.eps };
        Ok(flint_kernels::norm::norm(&self.dev, rec, &p, x, w, None, out)?)
    }

    fn layer(&self, rec: &mut Recorder, pool: &KvPool, l: usize, layer: &Layer, x: &Tensor, s: &Step) -> Result<()> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * d, cfg.kv_heads * d);
        let normed = dev.empty("normed", &[t, h], DType::F32)?;
        self.rmsnorm(rec, x, &layer.attn_norm, t, h, &normed)?;
        let q = dev.empty("q", &[t, q_dim], DType::F32)?;
        let k = dev.empty("k", &[t, kv_dim], DType::F32)?;
        let v = dev.empty("v", &[t, kv_dim], DType::F32)?;
        layer.wq.forward(dev, rec, &normed, t, &q)?;
        layer.wk.forward(dev, rec, &normed, t, &k)?;
        layer.wv.forward(dev, rec, &normed, t, &v)?;
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => {
                let (q2, k2) =
                    (dev.empty("q normed", &[t, q_dim], DType::F32)?, dev.empty("k normed", &[t, kv_dim], DType::F32)?);
                self.rmsnorm(rec, &q, qn, t * cfg.heads, d, &q2)?;
                self.rmsnorm(rec, &k, kn, t * cfg.kv_heads, d, &k2)?;
                (q2, k2)
            }
            None => (q, k),
        };
        let local = cfg.is_local(l);
        let theta = if local { cfg.rope_theta_local } else { cfg.rope_theta };
        let rope = |heads| RopeParams {
            tokens: t,
            heads,
            head_dim: d,
            rot_dim: d,
            theta,
            freq_scale: cfg.rope_freq_scale,
            layout: cfg.rope_layout,
        };
        let (qr, kr) = (dev.empty("q rope", &[t, q_dim], DType::F32)?, dev.empty("k rope", &[t, kv_dim], DType::F32)?);
        flint_kernels::rope::rope(dev, rec, &rope(cfg.heads), &q, &s.positions, &qr)?;
        flint_kernels::rope::rope(dev, rec, &rope(cfg.kv_heads), &k, &s.positions, &kr)?;
        let cache = pool.cache(l)?;
        attention::append_kv(dev, rec, cfg.kv_heads, d, &kr, &v, &s.dest, &cache, &s.table)?;
        let mask = match (local, cfg.sliding_window) {
            (true, Some(w)) => Mask::SlidingWindow(w),
            _ => Mask::Causal,
        };
        let p = AttnParams {
            seqs: 1,
            q_len: t,
            n_heads: cfg.heads,
            n_kv_heads: cfg.kv_heads,
            head_dim: d,
            scale: cfg.attn_scale,
            mask,
            additive_mask: false,
            mask_stride: 0,
        };
        let o = dev.empty("attention out", &[t, q_dim], DType::F32)?;
        let seqs = [SeqSpec { kv_len: s.pos0 + t, q_pos0: s.pos0 }];
        attention::attention(dev, rec, &p, &seqs, &qr, &cache, &s.table, None, &o)?;
        let y = dev.empty("attention proj", &[t, h], DType::F32)?;
        layer.wo.forward(dev, rec, &o, t, &y)?;
        self.add_residual(rec, x, &y, layer.post_norms.as_ref().map(|p| &p.0), t)?;

        self.rmsnorm(rec, x, &layer.ffn_norm, t, h, &normed)?;
        let gate = dev.empty("gate", &[t, cfg.ffn], DType::F32)?;
        let up = dev.empty("up", &[t, cfg.ffn], DType::F32)?;
        layer.w_gate.forward(dev, rec, &normed, t, &gate)?;
        layer.w_up.forward(dev, rec, &normed, t, &up)?;
        let act = dev.empty("mlp act", &[t, cfg.ffn], DType::F32)?;
        let op = if cfg.arch == Arch::Gemma3 { EltOp::GeGlu } else { EltOp::SwiGlu };
        let n = t * cfg.ffn;
        flint_kernels::elementwise::elementwise(dev, rec, &EltParams::binary(op, n, n), &gate, Some(&up), &act)?;
        let down = dev.empty("mlp out", &[t, h], DType::F32)?;
        layer.w_down.forward(dev, rec, &act, t, &down)?;
        self.add_residual(rec, x, &down, layer.post_norms.as_ref().map(|p| &p.1), t)
    }

    /// `x += norm(y)` (or `x += y` without a post-norm).
    fn add_residual(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        y: &Tensor,
        post_norm: Option<&Tensor>,
        t: usize,
    ) -> Result<()> {
        let h = self.cfg.hidden;
        let y = match post_norm {
            Some(w) => {
                let n = self.dev.empty("post norm", &[t, h], DType::F32)?;
                self.rmsnorm(rec, y, w, t, h, &n)?;
                n
            }
            None => y.clone(),
        };
        let p = EltParams { op: EltOp::ResidualAdd, n: t * h, b_len: t * h, scale: 1.0 };
        Ok(flint_kernels::elementwise::residual_add(&self.dev, rec, &p, x, &y)?)
    }
}
