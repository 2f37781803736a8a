//! The decoder graph every family shares (Llama, Gemma 3, ...; what differs is data in its
//! [`DecoderConfig`], see [`super::arch`]): embeddings, then per layer RMSNorm, Q/K/V,
//! (QK-norm), RoPE, K/V into the paged cache, attention, output projection, (post-norm),
//! residual, RMSNorm, gated MLP, (post-norm), residual; final norm and the output head. One call
//! records a forward over some new tokens of one sequence into a recorder; the caller submits.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, AttnConfig, KvCache};
use flint_kernels::quant::{MATVEC_MAX_ROWS, Matvec, QkvDest, QuantWeight};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::EltOp;
use flint_ref::matmul::MatmulParams;
use flint_ref::quant::{FusedQuantParams, QuantEpilogue, QuantMatmulParams};
use flint_ref::rope::{RopeParams, RopeQkvParams};

use super::config::{DecoderConfig, Glu};
use super::weights::{Embedding, Linear, Stacked, WeightSource};
use crate::gguf::Gguf;
use crate::kvpool::{KvPool, SeqId};
use crate::{Result, RuntimeError};

/// One decoder layer's weights.
#[derive(Debug)]
pub struct Layer {
    attn_norm: Tensor,
    /// Q, K and V stacked: one output row is `[q heads | k heads | v heads]`.
    wqkv: Stacked,
    /// Biases of Q, K and V `[q_dim + 2 kv_dim]` (Qwen2).
    qkv_bias: Option<Tensor>,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate and up projections.
    w_gate_up: GateUp,
    w_down: Linear,
    /// Gemma 3: RMSNorm over each head of Q and K.
    qk_norm: Option<(Tensor, Tensor)>,
    /// Gemma 3: RMSNorm after attention and after the MLP.
    post_norms: Option<(Tensor, Tensor)>,
}

/// A layer's gate and up projections.
#[derive(Debug)]
enum GateUp {
    /// Stacked: one output row is `[gate | up]`.
    Stacked(Stacked),
    /// One quantized matrix with gate and up rows interleaved (one output row is `[g0, u0, g1,
    /// u1, ...]`), which a decode step's matvec turns into `act(gate) * up` as it writes.
    Pairs(QuantWeight),
}

impl GateUp {
    fn bytes(&self) -> usize {
        match self {
            GateUp::Stacked(s) => s.bytes(),
            GateUp::Pairs(q) => q.bytes(),
        }
    }
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
    /// Decode steps fold the norms, residual adds and gated unit into the matvecs (every
    /// matrix quantized, no QK-norm or post-norms): 6 dispatches a layer instead of 9.
    fused: bool,
}

/// Tokens going through the decoder, where their K/V lands, and how they attend: tensors the
/// recorded dispatches read (uploaded for a prefill; views of a plan's per-step block for decode).
struct Step {
    t: usize,
    positions: Tensor,
    table: attention::PageTable,
    /// u32 `[t, 2]`: table row and position of each token's K/V.
    dest: Tensor,
    plan: AttnPlan,
    /// Additive masks of a prefill whose image tokens attend to their whole image (global
    /// layers, then local ones), with the sequence's spec; None for plain causal attention.
    masked: Option<(Vec<SeqSpec>, Tensor, Tensor)>,
    /// M-RoPE angles `[t, head_dim / 2]` of a prefill with images, and the scratch its layers
    /// rotate Q and K into (a copy of the QKV rows); `positions` are then zeros, so the fused
    /// RoPE leaves Q and K as they are.
    angles: Option<(Tensor, Tensor)>,
}

/// A rotary position: the cache position `pos` plus the sequence's `offset` (M-RoPE after
/// images), within u32.
fn rope_position(pos: usize, offset: i64) -> u32 {
    (pos as i64 + offset).clamp(0, u32::MAX as i64) as u32
}

/// Scratch the layers of one recording share (see `layers_over`).
struct Scratch {
    qkv: Tensor,
    /// Where a layer with Q/K/V biases adds them (made when any layer has them).
    biased: Option<Tensor>,
    out: Tensor,
    gate_up: Tensor,
    act: Tensor,
}

/// How the attention of a step runs.
enum AttnPlan {
    /// One sequence: `t` tokens from position `pos0` (a prefill).
    Single { info: Tensor, cfg: AttnConfig },
    /// One token for each of several sequences (rows of the step table): one batched call
    /// (`info`, `cfg`), or, when `runs` is not empty, runs of rows of which those that share a
    /// prefix go through cascade attention (sliding-window layers still take the batched call).
    Batch { info: Tensor, cfg: AttnConfig, runs: Vec<Run> },
}

/// Consecutive batch rows attended in one call.
struct Run {
    rows: std::ops::Range<usize>,
    kind: RunKind,
}

/// How a run attends.
enum RunKind {
    /// Batched attention over the run's rows of the page table, with their lengths.
    Plain { table: attention::PageTable, info: Tensor, cfg: AttnConfig },
    /// Cascade attention over the pages the rows share (`prefix`, one row), then each row's own
    /// (`suffixes`).
    Cascade {
        prefix: attention::PageTable,
        prefix_info: Tensor,
        suffixes: attention::PageTable,
        suffix_info: Tensor,
        cfgs: (AttnConfig, AttnConfig),
    },
}

/// What the dispatches of a decode step depend on beyond the weights: the batch, the page-table
/// width, how attention is split and whether every row picks greedily. Steps with equal layouts
/// replay one plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DecodeLayout {
    /// Rows (sequences) in the step.
    pub rows: usize,
    /// Pages per row of the step's page tables.
    pub width: usize,
    /// Key splits of the batched attention call.
    pub splits: u32,
    /// Runs of rows for cascade attention (empty: one batched call).
    pub runs: Vec<RunLayout>,
    /// The head writes argmax tiles instead of the logits ([`HeadOut::Tiles`]): false from
    /// [`Decoder::prepare_decode`], set by the caller that knows the rows pick greedily, where
    /// [`Decoder::can_tile_head`] allows.
    pub tiles: bool,
}

/// What the output head of a decode step leaves for the sampler.
#[derive(Clone, Debug)]
pub enum HeadOut {
    /// The logits, f32 `[rows, vocab]`.
    Logits(Tensor),
    /// Argmax tiles, f32 `[rows, count, 4]` (see `flint_kernels::quant::quant_head_tiles`): the
    /// greedy pick and its log-probability without the logits.
    Tiles {
        /// The tiles.
        tiles: Tensor,
        /// Tiles per row.
        count: usize,
    },
}

/// One run of rows in a [`DecodeLayout`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunLayout {
    /// The rows.
    pub rows: std::ops::Range<usize>,
    /// Key splits: `(plain, 0)` for a plain run, `(prefix, suffix)` for a cascade run.
    pub splits: (u32, u32),
    /// Whether the run goes through cascade attention.
    pub cascade: bool,
}

/// The host side of one decode step: its layout and every per-step value the dispatches read
/// (positions, destinations, page tables, lengths), as u32 words in the order of
/// [`DecodeStep::regions`]. Made by [`Decoder::prepare_decode`], which also grows the sequences.
#[derive(Clone, Debug)]
pub struct DecodeStep {
    /// The layout.
    pub layout: DecodeLayout,
    /// Each region's words, in order: positions `[rows]`, destinations `[rows, 2]`, page table
    /// `[rows, width]`, lengths `[rows, 2]`, then per run: a plain run's table and lengths, or a
    /// cascade run's prefix table `[1, width]`, prefix length `[1, 2]`, suffix table and lengths.
    pub regions: Vec<Vec<u32>>,
}

/// Word offsets of a step's regions in a block whose regions each start at a multiple of
/// `align` words.
fn region_offsets(regions: &[Vec<u32>], align: usize) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(regions.len());
    let mut at = 0;
    for r in regions {
        offsets.push(at);
        at += r.len().max(1).div_ceil(align) * align;
    }
    (offsets, at)
}

impl DecodeStep {
    /// Words per region alignment on `dev` (its storage offset alignment).
    pub fn align_words(dev: &Device) -> usize {
        (dev.caps().storage_offset_alignment.max(4) / 4) as usize
    }

    /// Words of the whole block on `dev`.
    pub fn block_words(&self, dev: &Device) -> usize {
        self.offsets(dev).1
    }

    /// Each region's word offset in the block on `dev`, and the block's length in words.
    pub fn offsets(&self, dev: &Device) -> (Vec<usize>, usize) {
        region_offsets(&self.regions, Self::align_words(dev))
    }

    /// The block: every region at its aligned offset, zeros between.
    pub fn write_block(&self, dev: &Device, block: &mut Vec<u32>) {
        let (offsets, total) = region_offsets(&self.regions, Self::align_words(dev));
        block.clear();
        block.resize(total, 0);
        for (r, &o) in self.regions.iter().zip(&offsets) {
            block[o..o + r.len()].copy_from_slice(r);
        }
    }
}

impl Decoder {
    /// Load a GGUF decoder (llama or gemma3) onto `dev`.
    pub fn from_gguf(dev: &Device, g: &Gguf) -> Result<Decoder> {
        let cfg = DecoderConfig::from_gguf(g)?;
        cfg.check_blocks(g)?;
        let kv_dtype = if dev.caps().f16 { DType::F16 } else { DType::F32 };
        Decoder::load(dev, cfg, g, kv_dtype)
    }

    /// Load a decoder of `cfg` from `w` onto `dev`, with a KV cache of `kv_dtype`.
    pub fn load(dev: &Device, cfg: DecoderConfig, w: &dyn WeightSource, kv_dtype: DType) -> Result<Decoder> {
        cfg.validate().map_err(RuntimeError::Model)?;
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.heads * d, cfg.kv_heads * d);
        let embed = Embedding { table: w.linear(dev, "token_embd.weight", cfg.vocab, h)? };
        let head = if w.has("output.weight") && !cfg.tied_head {
            w.linear(dev, "output.weight", cfg.vocab, h)?
        } else {
            embed.table.clone()
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let (q, k, v) = (name("attn_q.weight"), name("attn_k.weight"), name("attn_v.weight"));
            let (gate, up) = (name("ffn_gate.weight"), name("ffn_up.weight"));
            layers.push(Layer {
                attn_norm: w.vector(dev, &name("attn_norm.weight"), h)?,
                wqkv: w.stacked(dev, &[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)], h)?,
                qkv_bias: if cfg.qkv_bias {
                    let mut b = w.values(&name("attn_q.bias"), q_dim)?;
                    b.extend(w.values(&name("attn_k.bias"), kv_dim)?);
                    b.extend(w.values(&name("attn_v.bias"), kv_dim)?);
                    Some(dev.upload_f32(&name("attn_qkv.bias"), &b, &[q_dim + 2 * kv_dim], DType::F32)?)
                } else {
                    None
                },
                wo: w.linear(dev, &name("attn_output.weight"), h, q_dim)?,
                ffn_norm: w.vector(dev, &name("ffn_norm.weight"), h)?,
                w_gate_up: match w.glu_pairs(dev, &gate, &up, cfg.ffn, h)? {
                    Some(q) => GateUp::Pairs(q),
                    None => GateUp::Stacked(w.stacked(dev, &[(&gate, cfg.ffn), (&up, cfg.ffn)], h)?),
                },
                w_down: w.linear(dev, &name("ffn_down.weight"), h, cfg.ffn)?,
                qk_norm: if cfg.qk_norm {
                    Some((
                        w.vector(dev, &name("attn_q_norm.weight"), d)?,
                        w.vector(dev, &name("attn_k_norm.weight"), d)?,
                    ))
                } else {
                    None
                },
                post_norms: if cfg.post_norms {
                    Some((
                        w.vector(dev, &name("post_attention_norm.weight"), h)?,
                        w.vector(dev, &name("post_ffw_norm.weight"), h)?,
                    ))
                } else {
                    None
                },
            });
        }
        let quant = |l: &Linear| matches!(l, Linear::Quant(_));
        let fused = layers.iter().all(|l| {
            l.qk_norm.is_none()
                && l.post_norms.is_none()
                && l.qkv_bias.is_none()
                && matches!(l.wqkv.runs.as_slice(), [(w, 0)] if quant(w))
                && quant(&l.wo)
                && quant(&l.w_down)
                && matches!(l.w_gate_up, GateUp::Pairs(_))
        }) && quant(&head);
        Ok(Decoder {
            out_norm: w.vector(dev, "output_norm.weight", h)?,
            cfg,
            dev: dev.clone(),
            embed,
            layers,
            head,
            kv_dtype,
            fused,
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
        let layers: usize =
            self.layers.iter().map(|l| l.wqkv.bytes() + l.w_gate_up.bytes() + l.wo.bytes() + l.w_down.bytes()).sum();
        layers + self.head.bytes()
    }

    /// Record the embedding of `ids` (u32 `[t]`) into `[t, hidden]` hidden states.
    pub fn embed(&self, rec: &mut Recorder, ids: &Tensor, t: usize) -> Result<Tensor> {
        let x = self.dev.empty("hidden", &[t, self.cfg.hidden], DType::F32)?;
        self.embed.forward(&self.dev, rec, ids, t, self.cfg.embed_scale, &x)?;
        Ok(x)
    }

    /// Record the embedding of `t` tokens whose ids sit at `tokens[slots[i]]` (u32), where a
    /// sampler left them: a decode step reads its ids without a trip through the host.
    pub fn embed_slots(&self, rec: &mut Recorder, tokens: &Tensor, slots: &Tensor, t: usize) -> Result<Tensor> {
        let x = self.dev.empty("hidden", &[t, self.cfg.hidden], DType::F32)?;
        self.embed.forward_slots(&self.dev, rec, tokens, slots, t, self.cfg.embed_scale, &x)?;
        Ok(x)
    }

    /// Record a prepared decode step ([`Decoder::prepare_decode`]) over the embeddings `x`
    /// `[rows, hidden]` through every layer and the output head, reading the step's per-step
    /// values from `block` (u32; see [`DecodeStep::write_block`]), written before each replay
    /// when the recording is a plan. Returns the logits `[rows, vocab]`, or with
    /// `step.layout.tiles` the head's argmax tiles (the vocabulary's logits are never written;
    /// only for a greedy step). Where the model allows
    /// and the rows fit one matvec, the norms, residual adds and gated unit are folded into the
    /// matvecs; more rows go through the quantized matmul.
    pub fn record_decode(
        &self,
        rec: &mut Recorder,
        pool: &KvPool,
        step: &DecodeStep,
        block: &Tensor,
        x: &Tensor,
    ) -> Result<HeadOut> {
        let tensors = self.step_tensors(step, block, pool)?;
        let t = tensors.t;
        let tiles_head = match &self.head {
            Linear::Quant(w) if step.layout.tiles && self.can_tile_head(t) => Some(w),
            _ if step.layout.tiles => {
                return Err(RuntimeError::Model(format!(
                    "argmax tiles asked of a head that cannot write them over {t} rows"
                )));
            }
            _ => None,
        };
        if !self.fused || t > MATVEC_MAX_ROWS {
            let h = self.layers_over(rec, pool, x, &tensors)?;
            return match tiles_head {
                Some(w) => self.head_tiles(rec, w, &h, t, None),
                None => self.logits(rec, &h, 0..t).map(HeadOut::Logits),
            };
        }
        for (l, layer) in self.layers.iter().enumerate() {
            self.layer_fused(rec, pool, l, layer, x, &tensors)?;
        }
        if let Some(w) = tiles_head {
            return self.head_tiles(rec, w, x, t, Some(&self.out_norm));
        }
        let Linear::Quant(head) = &self.head else {
            return Err(RuntimeError::Model("a fused decode step over a dense head".into()));
        };
        let logits = self.dev.empty("logits", &[t, self.cfg.vocab], DType::F32)?;
        self.fused(rec, head, x, t, Some(&self.out_norm), QuantEpilogue::Store, &logits)?;
        Ok(HeadOut::Logits(logits))
    }

    /// Whether the head can write argmax tiles for a greedy step of `rows` rows: a quantized
    /// head, through a matvec.
    pub fn can_tile_head(&self, rows: usize) -> bool {
        matches!(self.head, Linear::Quant(_)) && (1..=MATVEC_MAX_ROWS).contains(&rows)
    }

    /// The quantized head `w` over `t` rows of `x` (RMSNorm with `norm` on the way in, when
    /// given) as argmax tiles.
    fn head_tiles(
        &self,
        rec: &mut Recorder,
        w: &QuantWeight,
        x: &Tensor,
        t: usize,
        norm: Option<&Tensor>,
    ) -> Result<HeadOut> {
        let count = flint_kernels::quant::head_tiles(&self.dev, w, Matvec::Auto);
        let tiles = self.dev.empty("head tiles", &[t, count, 4], DType::F32)?;
        let p = QuantMatmulParams { mm: MatmulParams::new(t, w.n, w.k), format: w.format };
        let eps = norm.map(|_| self.cfg.eps);
        let x = x.view(0, &[t, w.k], DType::F32)?;
        flint_kernels::quant::quant_head_tiles(&self.dev, rec, &p, eps, &x, w, norm, &tiles, Matvec::Auto)?;
        Ok(HeadOut::Tiles { tiles, count })
    }

    /// Record the layers over `t` new tokens of `seq` whose inputs are `x` `[t, hidden]` (updated
    /// in place as the residual stream); their K/V join the sequence's cache. Returns the
    /// final-normed hidden states `[t, hidden]`.
    /// On error the pool is as it was (drop `rec`: it may hold page copies for nothing).
    pub fn forward(&self, rec: &mut Recorder, pool: &mut KvPool, seq: SeqId, x: &Tensor, t: usize) -> Result<Tensor> {
        self.forward_blocks(rec, pool, seq, x, t, &[], None)
    }

    /// [`Decoder::forward`] where the tokens of each of `blocks` (ranges of this call's `t`
    /// tokens: one image's tokens each) attend to every token of their block, before or after
    /// them, as well as causally (Gemma 3's images; transformers' `token_type_ids`). Local
    /// layers keep their window. With `mrope` (a model with M-RoPE), each token's temporal, row
    /// and column positions; otherwise a token's rotary position is its cache position plus
    /// the sequence's [`KvPool::rope_offset`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_blocks(
        &self,
        rec: &mut Recorder,
        pool: &mut KvPool,
        seq: SeqId,
        x: &Tensor,
        t: usize,
        blocks: &[std::ops::Range<usize>],
        mrope: Option<&[[u32; 3]]>,
    ) -> Result<Tensor> {
        pool.atomically(|pool| self.forward_inner(rec, pool, seq, x, t, blocks, mrope))
    }

    /// M-RoPE's angles of `positions` (temporal, row, column per token): pair `i` of a head
    /// rotates by the position of its section times theta^(-2i / head_dim), computed in f32 as
    /// transformers does.
    fn mrope_angles(&self, positions: &[[u32; 3]]) -> Result<Tensor> {
        let cfg = &self.cfg;
        let Some(sections) = cfg.mrope else {
            return Err(RuntimeError::Request(format!("{} has no M-RoPE to take 3D positions", cfg.family)));
        };
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / f64::from(cfg.rope_theta).powf(2.0 * i as f64 / cfg.head_dim as f64)) as f32)
            .collect();
        let section: Vec<usize> = (0..half)
            .map(|i| {
                if i < sections[0] {
                    0
                } else if i < sections[0] + sections[1] {
                    1
                } else {
                    2
                }
            })
            .collect();
        let mut angles = Vec::with_capacity(positions.len() * half);
        for p in positions {
            angles.extend((0..half).map(|i| p[section[i]] as f32 * cfg.rope_freq_scale * inv[i]));
        }
        Ok(self.dev.upload_f32("mrope angles", &angles, &[positions.len(), half], DType::F32)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_inner(
        &self,
        rec: &mut Recorder,
        pool: &mut KvPool,
        seq: SeqId,
        x: &Tensor,
        t: usize,
        blocks: &[std::ops::Range<usize>],
        mrope: Option<&[[u32; 3]]>,
    ) -> Result<Tensor> {
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
        if mrope.is_some_and(|m| m.len() != t) {
            return Err(RuntimeError::Request(format!(
                "M-RoPE positions for {} of {t} tokens",
                mrope.map_or(0, <[_]>::len)
            )));
        }
        let angles = match mrope {
            Some(m) => {
                let row = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim;
                Some((self.mrope_angles(m)?, self.dev.empty("qkv rotated", &[t, row], DType::F32)?))
            }
            None => None,
        };
        let offset = pool.rope_offset(seq)?;
        let positions = pool.append(rec, seq, t)?;
        let pos: Vec<u32> =
            positions.clone().map(|p| if angles.is_some() { 0 } else { rope_position(p, offset) }).collect();
        let dest: Vec<u32> = positions.flat_map(|p| [0, p as u32]).collect();
        let seqs = [SeqSpec { kv_len: pos0 + t, q_pos0: pos0 }];
        let masked = if blocks.iter().any(|b| b.len() > 1) {
            let (global, local) = self.block_masks(pos0, t, blocks)?;
            Some((seqs.to_vec(), global, local))
        } else {
            None
        };
        let step = Step {
            t,
            positions: self.dev.upload_u32("positions", &pos, &[t])?,
            table: pool.page_table(&self.dev, &[seq])?,
            dest: self.dev.upload_u32("destinations", &dest, &[t, 2])?,
            plan: AttnPlan::Single {
                info: attention::seq_info(&self.dev, &seqs)?,
                cfg: attention::plan(self.dev.caps(), &self.attn_params(1, t, Mask::Causal), &seqs, None),
            },
            masked,
            angles,
        };
        self.layers_over(rec, pool, x, &step)
    }

    /// The additive masks `[t, pos0 + t]` (0 where a query sees a key, -inf elsewhere) of `t`
    /// tokens from `pos0` whose `blocks` (of those `t`) see themselves both ways: for global
    /// layers, causal or in one block; for local ones, that and within the window, as
    /// transformers 5.x composes them (earlier versions ORed the block into the sliding causal
    /// mask; the two agree whenever an image has no more tokens than the window, as in every
    /// published checkpoint: 256 against 1024).
    ///
    /// The masks are `t x (pos0 + t)` floats each, so their size is checked against the
    /// adapter's binding limit before anything is allocated (a prompt with images is prefilled
    /// whole): past it the prefill is refused, saying so.
    fn block_masks(&self, pos0: usize, t: usize, blocks: &[std::ops::Range<usize>]) -> Result<(Tensor, Tensor)> {
        let kv = pos0 + t;
        let limit = self.dev.caps().max_storage_binding;
        if t.checked_mul(kv).and_then(|n| n.checked_mul(4)).is_none_or(|b| b as u64 > limit) {
            return Err(RuntimeError::Request(format!(
                "a prefill of {t} tokens with images after {pos0} cached ones needs an image attention mask of \
                 {t} x {kv} floats, over the adapter's {limit}-byte binding limit; use a shorter prompt"
            )));
        }
        let mut block_of = vec![usize::MAX; t];
        for (b, r) in blocks.iter().enumerate() {
            for i in r.clone().filter(|&i| i < t) {
                block_of[i] = b;
            }
        }
        // Without a window every layer is global: one mask serves both.
        let window = self.cfg.sliding_window;
        let mut global = vec![f32::NEG_INFINITY; t * kv];
        let mut local = if window.is_some() { global.clone() } else { Vec::new() };
        for i in 0..t {
            let q = pos0 + i;
            for k in 0..kv {
                let same = k >= pos0 && block_of[i] != usize::MAX && block_of[k - pos0] == block_of[i];
                if k <= q || same {
                    global[i * kv + k] = 0.0;
                    if window.is_some_and(|w| k + w > q) {
                        local[i * kv + k] = 0.0;
                    }
                }
            }
        }
        let global = self.dev.upload_f32("image block mask", &global, &[t, kv], DType::F32)?;
        let local = match window {
            Some(_) => self.dev.upload_f32("image block mask (local)", &local, &[t, kv], DType::F32)?,
            None => global.clone(),
        };
        Ok((global, local))
    }

    /// Record one decode step of several sequences: row `i` of `x` `[seqs.len(), hidden]` is the
    /// next token of `seqs[i]` (updated in place as the residual stream); each token's K/V joins
    /// its sequence's cache. Sequences that share full pages (forks of one prompt) attend to
    /// those pages in one cascade pass when they sit in consecutive rows. Returns the
    /// final-normed hidden states `[seqs.len(), hidden]`. On error the pool is as it was (no
    /// sequence has grown; drop `rec`).
    pub fn decode(&self, rec: &mut Recorder, pool: &mut KvPool, seqs: &[SeqId], x: &Tensor) -> Result<Tensor> {
        pool.atomically(|pool| {
            let step = self.prepare_decode(rec, pool, seqs, None)?;
            let mut block = Vec::new();
            step.write_block(&self.dev, &mut block);
            let block = self.dev.upload_u32("decode step block", &block, &[block.len()])?;
            let tensors = self.step_tensors(&step, &block, pool)?;
            self.layers_over(rec, pool, x, &tensors)
        })
    }

    /// The host side of a decode step over `seqs` (one new token each): check them, grow each by
    /// one position (recording into `copies` the page copies a shared partial page needs), and
    /// compute the step's layout and per-step values. Page tables are `width` pages wide (a
    /// plan's fixed width; `None`: the longest row). On error the pool is as it was.
    pub fn prepare_decode(
        &self,
        copies: &mut Recorder,
        pool: &mut KvPool,
        seqs: &[SeqId],
        width: Option<usize>,
    ) -> Result<DecodeStep> {
        pool.atomically(|pool| self.prepare_decode_inner(copies, pool, seqs, width))
    }

    fn prepare_decode_inner(
        &self,
        copies: &mut Recorder,
        pool: &mut KvPool,
        seqs: &[SeqId],
        width: Option<usize>,
    ) -> Result<DecodeStep> {
        let b = seqs.len();
        if b == 0 {
            return Err(RuntimeError::Request("no sequences to decode".into()));
        }
        let mut lens = Vec::with_capacity(b);
        let mut offsets = Vec::with_capacity(b);
        for (i, &s) in seqs.iter().enumerate() {
            if seqs[..i].contains(&s) {
                return Err(RuntimeError::Request(format!("sequence {s:?} appears twice in one decode step")));
            }
            let len = pool.len(s)?;
            if len + 1 > self.cfg.context {
                return Err(RuntimeError::Request(format!(
                    "sequence {s:?} is full: {} tokens would exceed the model's context of {}",
                    len + 1,
                    self.cfg.context
                )));
            }
            lens.push(len);
            offsets.push(pool.rope_offset(s)?);
        }
        for &s in seqs {
            pool.append(copies, s, 1)?;
        }
        let pages: Vec<&[u32]> = seqs.iter().map(|&s| pool.pages(s)).collect::<std::result::Result<_, _>>()?;
        let longest = pages.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
        let width = width.unwrap_or(longest);
        if longest > width {
            return Err(RuntimeError::Request(format!("a sequence holds {longest} pages, the step's tables {width}")));
        }
        let row = |p: &[u32]| -> Vec<u32> {
            let mut r = p.to_vec();
            r.resize(width, 0);
            r
        };
        let specs: Vec<SeqSpec> = lens.iter().map(|&p| SeqSpec { kv_len: p + 1, q_pos0: p }).collect();
        let info =
            |specs: &[SeqSpec]| -> Vec<u32> { specs.iter().flat_map(|s| [s.kv_len as u32, s.q_pos0 as u32]).collect() };
        let mut regions = vec![
            // Rotary positions: the cache's, plus each sequence's offset (M-RoPE after images).
            lens.iter().zip(&offsets).map(|(&p, &o)| rope_position(p, o)).collect(),
            lens.iter().enumerate().flat_map(|(i, &p)| [i as u32, p as u32]).collect(),
            pages.iter().flat_map(|p| row(p)).collect(),
            info(&specs),
        ];
        // Splits of DECODE_SPLIT keys, as many as the longest row of a call needs.
        let splits_for = |kv: usize| kv.max(1).div_ceil(attention::DECODE_SPLIT) as u32;
        let splits = splits_for(specs.iter().map(|s| s.kv_len).max().unwrap_or(1));
        let mut runs = Vec::new();
        for (rows, shared) in self.cascade_runs(pool, seqs, &specs)? {
            let run_specs = &specs[rows.clone()];
            if shared > 0 {
                let ps = pool.page_size();
                let suffix_lens: Vec<usize> = run_specs.iter().map(|s| s.kv_len - shared * ps).collect();
                regions.push(row(&pages[rows.start][..shared]));
                regions.push(vec![(shared * ps) as u32, 0]);
                regions.push(pages[rows.clone()].iter().flat_map(|p| row(&p[shared..])).collect());
                regions.push(suffix_lens.iter().flat_map(|&l| [l as u32, 0]).collect());
                let suffix = suffix_lens.iter().copied().max().unwrap_or(1);
                runs.push(RunLayout { rows, splits: (splits_for(shared * ps), splits_for(suffix)), cascade: true });
            } else {
                let longest = run_specs.iter().map(|s| s.kv_len).max().unwrap_or(1);
                regions.push(pages[rows.clone()].iter().flat_map(|p| row(p)).collect());
                regions.push(info(run_specs));
                runs.push(RunLayout { rows, splits: (splits_for(longest), 0), cascade: false });
            }
        }
        Ok(DecodeStep { layout: DecodeLayout { rows: b, width, splits, runs, tiles: false }, regions })
    }

    /// The tensors a step's dispatches read: views of `block`, which holds (or will hold, for a
    /// plan) the regions of a step of `step`'s layout at their aligned offsets.
    fn step_tensors(&self, step: &DecodeStep, block: &Tensor, pool: &KvPool) -> Result<Step> {
        let (offsets, _) = region_offsets(&step.regions, DecodeStep::align_words(&self.dev));
        let l = &step.layout;
        let (b, width, np) = (l.rows, l.width, pool.num_pages());
        let view = |i: usize, shape: &[usize]| block.view(offsets[i] as u64 * 4, shape, DType::U32);
        let table = |i: usize, rows: usize| -> Result<attention::PageTable> {
            Ok(attention::PageTable::over(view(i, &[rows, width])?, rows, width, np)?)
        };
        let caps = self.dev.caps();
        // The configs the splits were counted for (decode_plan of as many keys as they cover).
        let cfg_of = |rows: usize, splits: u32, mask: Mask, whole_rows: bool| {
            let kv = splits as usize * attention::DECODE_SPLIT;
            attention::decode_plan(caps, &self.attn_params(rows, 1, mask), kv, whole_rows)
        };
        let mut runs = Vec::new();
        let mut r = 4;
        for run in &l.runs {
            let n = run.rows.len();
            let kind = if run.cascade {
                // The prefix pass takes the run's rows as one sequence's queries.
                let pre = AttnParams { seqs: 1, q_len: n, ..self.attn_params(n, 1, Mask::None) };
                let pre_cfg = attention::decode_plan(caps, &pre, run.splits.0 as usize * attention::DECODE_SPLIT, true);
                let kind = RunKind::Cascade {
                    prefix: table(r, 1)?,
                    prefix_info: view(r + 1, &[1, 2])?,
                    suffixes: table(r + 2, n)?,
                    suffix_info: view(r + 3, &[n, 2])?,
                    cfgs: (pre_cfg, cfg_of(n, run.splits.1, Mask::None, false)),
                };
                r += 4;
                kind
            } else {
                let kind = RunKind::Plain {
                    table: table(r, n)?,
                    info: view(r + 1, &[n, 2])?,
                    cfg: cfg_of(n, run.splits.0, Mask::Causal, false),
                };
                r += 2;
                kind
            };
            runs.push(Run { rows: run.rows.clone(), kind });
        }
        Ok(Step {
            t: b,
            positions: view(0, &[b])?,
            dest: view(1, &[b, 2])?,
            table: table(2, b)?,
            plan: AttnPlan::Batch { info: view(3, &[b, 2])?, cfg: cfg_of(b, l.splits, Mask::Causal, false), runs },
            masked: None,
            angles: None,
        })
    }

    /// Attention params of this decoder for `seqs` sequences of `q_len` queries.
    fn attn_params(&self, seqs: usize, q_len: usize, mask: Mask) -> AttnParams {
        let cfg = &self.cfg;
        AttnParams {
            seqs,
            q_len,
            n_heads: cfg.heads,
            n_kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            scale: cfg.attn_scale,
            mask,
            additive_mask: false,
            mask_stride: 0,
        }
    }

    /// Split a batch into runs for cascade attention: each row's shared prefix is its leading
    /// full pages that other sequences hold too (branches forked from one prompt share the
    /// prompt's), and consecutive rows with the same shared prefix form a cascade run, a lone
    /// row included; the other rows form plain runs. Returns each run with its shared page count
    /// (0 for a plain run); empty when no row shares a prefix, or when a run would start at a
    /// row whose Q cannot be bound on its own (binding offset alignment). A row's run depends on
    /// its own pages only, not on the rows it is decoded with.
    fn cascade_runs(
        &self,
        pool: &KvPool,
        seqs: &[SeqId],
        specs: &[SeqSpec],
    ) -> Result<Vec<(std::ops::Range<usize>, usize)>> {
        let ps = pool.page_size();
        let prefixes: Vec<&[u32]> = seqs
            .iter()
            .zip(specs)
            .map(|(&s, spec)| {
                let pages = pool.pages(s)?;
                let full = ((spec.kv_len - 1) / ps).min(pages.len());
                let shared = pages[..full].iter().take_while(|&&p| pool.page_refs(p) > 1).count();
                Ok(&pages[..shared])
            })
            .collect::<Result<_>>()?;
        if prefixes.iter().all(|p| p.is_empty()) {
            return Ok(Vec::new());
        }
        let mut runs: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
        for (i, p) in prefixes.iter().enumerate() {
            match runs.last_mut() {
                Some((rows, _)) if prefixes[rows.start] == *p => rows.end = i + 1,
                _ => runs.push((i..i + 1, p.len())),
            }
        }
        let row_bytes = (self.cfg.heads * self.cfg.head_dim * 4) as u64;
        let align = u64::from(self.dev.caps().storage_offset_alignment.max(1));
        if runs.iter().any(|(rows, _)| !(rows.start as u64 * row_bytes).is_multiple_of(align)) {
            return Ok(Vec::new());
        }
        Ok(runs)
    }

    /// Record every layer and the final norm over a prepared step.
    fn layers_over(&self, rec: &mut Recorder, pool: &KvPool, x: &Tensor, step: &Step) -> Result<Tensor> {
        let (cfg, t) = (&self.cfg, step.t);
        // `normed` always holds the input of the next block: rmsnorm(x) with that block's weight.
        let normed = self.dev.empty("normed", &[t, cfg.hidden], DType::F32)?;
        self.add_norm(rec, x, None, None, &self.layers[0].attn_norm, &normed, t)?;
        // The layers' largest scratch is made once and reused by each (the dispatches run in
        // order): made per layer, every layer's would stay alive until the recording is
        // submitted, a prefill chunk's activations times the depth.
        let qkv_n = self.layers.iter().map(|l| l.wqkv.n).max().unwrap_or(0);
        let scratch = Scratch {
            qkv: self.dev.empty("qkv", &[t, qkv_n], DType::F32)?,
            biased: if self.layers.iter().any(|l| l.qkv_bias.is_some()) {
                Some(self.dev.empty("qkv biased", &[t, qkv_n], DType::F32)?)
            } else {
                None
            },
            out: self.dev.empty("layer out", &[t, cfg.hidden], DType::F32)?,
            gate_up: self.dev.empty("gate|up", &[t, 2 * cfg.ffn], DType::F32)?,
            act: self.dev.empty("mlp act", &[t, cfg.ffn], DType::F32)?,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(l + 1).map_or(&self.out_norm, |n| &n.attn_norm);
            self.layer(rec, pool, l, layer, x, &normed, next_norm, step, &scratch)?;
        }
        Ok(normed)
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

    /// `x += y` (or `x += rmsnorm(y, post)`) then `out = rmsnorm(x, w)`; with no `y` just the norm.
    #[allow(clippy::too_many_arguments)]
    fn add_norm(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        y: Option<&Tensor>,
        post: Option<&Tensor>,
        w: &Tensor,
        out: &Tensor,
        t: usize,
    ) -> Result<()> {
        let p = flint_ref::norm::AddNormParams {
            rows: t,
            dim: self.cfg.hidden,
            eps: self.cfg.eps,
            post_norm: post.is_some(),
            add: y.is_some(),
        };
        Ok(flint_kernels::norm::add_norm(&self.dev, rec, &p, x, y, post, w, out)?)
    }

    /// RoPE of layer `l` over `t` tokens.
    fn rope_params(&self, l: usize, layer: &Layer, t: usize) -> RopeQkvParams {
        let cfg = &self.cfg;
        RopeQkvParams {
            tokens: t,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            theta: if cfg.is_local(l) { cfg.rope_theta_local } else { cfg.rope_theta },
            freq_scale: if cfg.is_local(l) { cfg.rope_freq_scale_local } else { cfg.rope_freq_scale },
            layout: cfg.rope_layout,
            qk_norm_eps: layer.qk_norm.as_ref().map(|_| cfg.eps),
        }
    }

    /// RoPE (and QK-norm), K/V into the cache and attention for layer `l` over its QKV
    /// projection `qkv` `[t, q | k | v]`. Returns the attention output `[t, heads * head_dim]`.
    fn attend(
        &self,
        rec: &mut Recorder,
        pool: &KvPool,
        l: usize,
        layer: &Layer,
        qkv: &Tensor,
        s: &Step,
    ) -> Result<Tensor> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        let rp = self.rope_params(l, layer, t);
        let cache = pool.cache(l)?;
        let q = dev.empty("q", &[t, cfg.heads * cfg.head_dim], DType::F32)?;
        let norms = layer.qk_norm.as_ref().map(|(a, b)| (a, b));
        let qkv = match &s.angles {
            // M-RoPE: Q and K (the first heads of each row) rotated by the angle table into a
            // copy of the rows; the fused kernel then rotates by position 0, which is nothing.
            Some((angles, rotated)) => {
                let row = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim;
                rec.copy(qkv, rotated)?;
                let p = RopeParams {
                    tokens: t,
                    heads: cfg.heads + cfg.kv_heads,
                    head_dim: cfg.head_dim,
                    rot_dim: cfg.head_dim,
                    theta: cfg.rope_theta,
                    freq_scale: 1.0,
                    layout: cfg.rope_layout,
                };
                flint_kernels::rope::rope_angles_rows(dev, rec, &p, row, qkv, angles, rotated)?;
                rotated
            }
            None => qkv,
        };
        flint_kernels::rope::rope_qkv_planned(dev, rec, &rp, qkv, &s.positions, &s.dest, &cache, &s.table, norms, &q)?;
        self.attend_rotated(rec, &cache, l, &q, s)
    }

    /// Attention of layer `l` for the rotated queries `q` `[t, heads * head_dim]` over `cache`,
    /// which already holds this step's K/V. Returns the output `[t, heads * head_dim]`.
    fn attend_rotated(&self, rec: &mut Recorder, cache: &KvCache, l: usize, q: &Tensor, s: &Step) -> Result<Tensor> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        let q_dim = cfg.heads * cfg.head_dim;
        let local = cfg.is_local(l);
        let mask = match (local, cfg.sliding_window) {
            (true, Some(w)) => Mask::SlidingWindow(w),
            _ => Mask::Causal,
        };
        let o = dev.empty("attention out", &[t, q_dim], DType::F32)?;
        if let Some((specs, global_mask, local_mask)) = &s.masked {
            let p =
                AttnParams { additive_mask: true, mask_stride: specs[0].kv_len, ..self.attn_params(1, t, Mask::None) };
            let m = if local { local_mask } else { global_mask };
            attention::attention(dev, rec, &p, specs, q, cache, &s.table, Some(m), &o)?;
            return Ok(o);
        }
        match &s.plan {
            AttnPlan::Single { info, cfg } => {
                let p = self.attn_params(1, t, mask);
                attention::attention_planned(dev, rec, &p, cfg, q, cache, &s.table, info, None, &o)?;
            }
            // Sliding-window layers see only recent keys: no shared prefix to exploit.
            AttnPlan::Batch { info, cfg, runs } if runs.is_empty() || mask != Mask::Causal => {
                let p = self.attn_params(t, 1, mask);
                attention::attention_planned(dev, rec, &p, cfg, q, cache, &s.table, info, None, &o)?;
            }
            AttnPlan::Batch { runs, .. } => {
                for run in runs {
                    let n = run.rows.len();
                    let at = (run.rows.start * q_dim * 4) as u64;
                    let (qv, ov) = (q.view(at, &[n, q_dim], DType::F32)?, o.view(at, &[n, q_dim], DType::F32)?);
                    match &run.kind {
                        // The query is each row's newest token: every key precedes it.
                        RunKind::Cascade { prefix, prefix_info, suffixes, suffix_info, cfgs } => {
                            attention::cascade_planned(
                                dev,
                                rec,
                                &self.attn_params(n, 1, Mask::None),
                                *cfgs,
                                &qv,
                                cache,
                                (prefix, prefix_info),
                                (suffixes, suffix_info),
                                &ov,
                            )?
                        }
                        RunKind::Plain { table, info, cfg } => {
                            let p = self.attn_params(n, 1, mask);
                            attention::attention_planned(dev, rec, &p, cfg, &qv, cache, table, info, None, &ov)?
                        }
                    }
                }
            }
        }
        Ok(o)
    }

    /// The elementwise op of the config's gated unit.
    fn glu_op(&self) -> EltOp {
        match self.cfg.glu {
            Glu::Silu => EltOp::SwiGlu,
            Glu::GeluTanh => EltOp::GeGlu,
        }
    }

    /// Record a decode step's matvec over quantized `w` with its fusions.
    #[allow(clippy::too_many_arguments)]
    fn fused(
        &self,
        rec: &mut Recorder,
        w: &QuantWeight,
        x: &Tensor,
        t: usize,
        norm: Option<&Tensor>,
        epilogue: QuantEpilogue,
        out: &Tensor,
    ) -> Result<()> {
        let p = FusedQuantParams {
            q: QuantMatmulParams { mm: MatmulParams::new(t, w.n, w.k), format: w.format },
            norm_eps: norm.map(|_| self.cfg.eps),
            epilogue,
        };
        Ok(flint_kernels::quant::quant_matvec_fused(&self.dev, rec, &p, x, w, norm, out, Matvec::Auto)?)
    }

    /// One block of a decode step with the norms, residual adds and gated unit folded into the
    /// matvecs: QKV (RMSNorm in), RoPE and K/V, attention, output projection (added to `x`),
    /// gate/up (RMSNorm in, gated unit out), down projection (added to `x`). `x` is the residual
    /// stream, un-normalised.
    fn layer_fused(
        &self,
        rec: &mut Recorder,
        pool: &KvPool,
        l: usize,
        layer: &Layer,
        x: &Tensor,
        s: &Step,
    ) -> Result<()> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        fn quant(l: &Linear) -> Result<&QuantWeight> {
            match l {
                Linear::Quant(q) => Ok(q),
                Linear::Dense { .. } => Err(RuntimeError::Model("a fused decode step over dense weights".into())),
            }
        }
        let (wqkv, wo, down) = (quant(&layer.wqkv.runs[0].0)?, quant(&layer.wo)?, quant(&layer.w_down)?);
        let GateUp::Pairs(gate_up) = &layer.w_gate_up else {
            return Err(RuntimeError::Model("a fused decode step without gate/up pairs".into()));
        };
        let rp = self.rope_params(l, layer, t);
        let o = if flint_kernels::quant::qkv_rope_fits(dev, &rp, self.kv_dtype) {
            // RoPE and the K/V append in the QKV matvec's epilogue.
            let cache = pool.cache(l)?;
            let q = dev.empty("q", &[t, cfg.heads * cfg.head_dim], DType::F32)?;
            let kv = QkvDest { positions: &s.positions, dest: &s.dest, cache: &cache, table: &s.table };
            let norm = Some(&layer.attn_norm);
            flint_kernels::quant::quant_matvec_qkv_rope(
                dev,
                rec,
                &rp,
                Some(cfg.eps),
                x,
                wqkv,
                norm,
                kv,
                &q,
                Matvec::Auto,
            )?;
            self.attend_rotated(rec, &cache, l, &q, s)?
        } else {
            let qkv = dev.empty("qkv", &[t, layer.wqkv.n], DType::F32)?;
            self.fused(rec, wqkv, x, t, Some(&layer.attn_norm), QuantEpilogue::Store, &qkv)?;
            self.attend(rec, pool, l, layer, &qkv, s)?
        };
        self.fused(rec, wo, &o, t, None, QuantEpilogue::Residual, x)?;
        let act = dev.empty("mlp act", &[t, cfg.ffn], DType::F32)?;
        self.fused(rec, gate_up, x, t, Some(&layer.ffn_norm), QuantEpilogue::Glu(self.glu_op()), &act)?;
        self.fused(rec, down, &act, t, None, QuantEpilogue::Residual, x)
    }

    /// One block: attention then MLP, each ending in the residual step that also normalises `x`
    /// for what follows (`next_norm`).
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        rec: &mut Recorder,
        pool: &KvPool,
        l: usize,
        layer: &Layer,
        x: &Tensor,
        normed: &Tensor,
        next_norm: &Tensor,
        s: &Step,
        scratch: &Scratch,
    ) -> Result<()> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        let n = layer.wqkv.n;
        let mut qkv = scratch.qkv.view(0, &[t, n], DType::F32)?;
        layer.wqkv.forward(dev, rec, normed, t, &qkv)?;
        if let (Some(b), Some(biased)) = (&layer.qkv_bias, &scratch.biased) {
            let biased = biased.view(0, &[t, n], DType::F32)?;
            let add = flint_ref::elementwise::EltParams::binary(EltOp::Add, t * n, n);
            flint_kernels::elementwise::elementwise(dev, rec, &add, &qkv, Some(b), &biased)?;
            qkv = biased;
        }
        let o = self.attend(rec, pool, l, layer, &qkv, s)?;
        let y = &scratch.out;
        layer.wo.forward(dev, rec, &o, t, y)?;
        let (post_attn, post_ffn) = match &layer.post_norms {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        self.add_norm(rec, x, Some(y), post_attn, &layer.ffn_norm, normed, t)?;

        let (gate_up, act) = (&scratch.gate_up, &scratch.act);
        match &layer.w_gate_up {
            GateUp::Stacked(w) => {
                w.forward(dev, rec, normed, t, gate_up)?;
                flint_kernels::elementwise::glu_pair(dev, rec, self.glu_op(), t, cfg.ffn, gate_up, act)?;
            }
            GateUp::Pairs(w) => {
                let p = QuantMatmulParams { mm: MatmulParams::new(t, w.n, w.k), format: w.format };
                flint_kernels::quant::quant_matmul(dev, rec, &p, normed, w, gate_up)?;
                flint_kernels::elementwise::glu_interleaved(dev, rec, self.glu_op(), t, cfg.ffn, gate_up, act)?;
            }
        }
        // The attention projection's output has been added; its buffer takes the MLP's.
        layer.w_down.forward(dev, rec, act, t, y)?;
        self.add_norm(rec, x, Some(y), post_ffn, next_norm, normed, t)
    }
}
