//! The decoder graph shared by Llama and Gemma 3: embeddings, then per layer RMSNorm, Q/K/V,
//! (QK-norm), RoPE, K/V into the paged cache, attention, output projection, (post-norm),
//! residual, RMSNorm, gated MLP, (post-norm), residual; final norm and the output head. One call
//! records a forward over some new tokens of one sequence into a recorder; the caller submits.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, paged::KvPool, paged::SeqId};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::EltOp;
use flint_ref::rope::RopeQkvParams;

use super::config::{Arch, DecoderConfig};
use super::weights::{Embedding, Linear, Stacked, WeightSource};
use crate::gguf::Gguf;
use crate::{Result, RuntimeError};

/// One decoder layer's weights.
#[derive(Debug)]
pub struct Layer {
    attn_norm: Tensor,
    /// Q, K and V stacked: one output row is `[q heads | k heads | v heads]`.
    wqkv: Stacked,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate and up stacked: one output row is `[gate | up]`.
    w_gate_up: Stacked,
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

/// Tokens going through the decoder, where their K/V lands, and how they attend.
struct Step {
    t: usize,
    positions: Tensor,
    table: attention::PageTable,
    dest: Vec<(usize, usize)>,
    plan: AttnPlan,
}

/// How the attention of a step runs.
enum AttnPlan {
    /// One sequence: `t` tokens from position `pos0` (a prefill, or one sequence's decode step).
    Single { pos0: usize },
    /// One token for each of several sequences (rows of the step table).
    Batch {
        /// Each row's keys and query position.
        specs: Vec<SeqSpec>,
        /// Runs of rows that together cover every row, when some rows share a prefix: those go
        /// through cascade attention. Empty when no rows share pages (one batched call).
        runs: Vec<Run>,
    },
}

/// Consecutive batch rows attended in one call.
struct Run {
    rows: std::ops::Range<usize>,
    kind: RunKind,
}

/// How a run attends.
enum RunKind {
    /// Batched attention over the run's rows of the page table, with their specs.
    Plain { table: attention::PageTable, specs: Vec<SeqSpec> },
    /// Cascade attention over the pages the rows share, then each row's own.
    Cascade(SharedPrefix),
}

/// Full pages that every row of a run shares, and what each row has after them.
struct SharedPrefix {
    prefix: attention::PageTable,
    prefix_len: usize,
    suffixes: attention::PageTable,
    suffix_lens: Vec<usize>,
}

impl Decoder {
    /// Load a GGUF decoder (llama or gemma3) onto `dev`.
    pub fn from_gguf(dev: &Device, g: &Gguf) -> Result<Decoder> {
        let cfg = DecoderConfig::from_gguf(g)?;
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
            let gemma = cfg.arch == Arch::Gemma3;
            let (q, k, v) = (name("attn_q.weight"), name("attn_k.weight"), name("attn_v.weight"));
            let (gate, up) = (name("ffn_gate.weight"), name("ffn_up.weight"));
            layers.push(Layer {
                attn_norm: w.vector(dev, &name("attn_norm.weight"), h)?,
                wqkv: w.stacked(dev, &[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)], h)?,
                wo: w.linear(dev, &name("attn_output.weight"), h, q_dim)?,
                ffn_norm: w.vector(dev, &name("ffn_norm.weight"), h)?,
                w_gate_up: w.stacked(dev, &[(&gate, cfg.ffn), (&up, cfg.ffn)], h)?,
                w_down: w.linear(dev, &name("ffn_down.weight"), h, cfg.ffn)?,
                qk_norm: if gemma {
                    Some((
                        w.vector(dev, &name("attn_q_norm.weight"), d)?,
                        w.vector(dev, &name("attn_k_norm.weight"), d)?,
                    ))
                } else {
                    None
                },
                post_norms: if gemma {
                    Some((
                        w.vector(dev, &name("post_attention_norm.weight"), h)?,
                        w.vector(dev, &name("post_ffw_norm.weight"), h)?,
                    ))
                } else {
                    None
                },
            });
        }
        Ok(Decoder {
            out_norm: w.vector(dev, "output_norm.weight", h)?,
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
        let layers: usize =
            self.layers.iter().map(|l| l.wqkv.bytes() + l.w_gate_up.bytes() + l.wo.bytes() + l.w_down.bytes()).sum();
        layers + self.head.bytes()
    }

    /// Record the embedding of `ids` (u32 `[t]`) into `[t, hidden]` hidden states.
    pub fn embed(&self, rec: &mut Recorder, ids: &Tensor, t: usize) -> Result<Tensor> {
        let x = self.dev.empty("hidden", &[t, self.cfg.hidden], DType::F32)?;
        let scale = if self.cfg.arch == Arch::Gemma3 { (self.cfg.hidden as f32).sqrt() } else { 1.0 };
        self.embed.forward(&self.dev, rec, ids, t, scale, &x)?;
        Ok(x)
    }

    /// Record the layers over `t` new tokens of `seq` whose inputs are `x` `[t, hidden]` (updated
    /// in place as the residual stream); their K/V join the sequence's cache. Returns the
    /// final-normed hidden states `[t, hidden]`.
    /// On error the pool is as it was (drop `rec`: it may hold page copies for nothing).
    pub fn forward(&self, rec: &mut Recorder, pool: &mut KvPool, seq: SeqId, x: &Tensor, t: usize) -> Result<Tensor> {
        pool.atomically(|pool| self.forward_inner(rec, pool, seq, x, t))
    }

    fn forward_inner(&self, rec: &mut Recorder, pool: &mut KvPool, seq: SeqId, x: &Tensor, t: usize) -> Result<Tensor> {
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
            positions: self.dev.upload_u32("positions", &pos, &[t])?,
            table: pool.page_table(&self.dev, &[seq])?,
            dest: positions.map(|p| (0, p)).collect(),
            plan: AttnPlan::Single { pos0 },
        };
        self.layers_over(rec, pool, x, &step)
    }

    /// Record one decode step of several sequences: row `i` of `x` `[seqs.len(), hidden]` is the
    /// next token of `seqs[i]` (updated in place as the residual stream); each token's K/V joins
    /// its sequence's cache. Sequences that share full pages (forks of one prompt) attend to
    /// those pages in one cascade pass when they sit in consecutive rows. Returns the
    /// final-normed hidden states `[seqs.len(), hidden]`. On error the pool is as it was (no
    /// sequence has grown; drop `rec`).
    pub fn decode(&self, rec: &mut Recorder, pool: &mut KvPool, seqs: &[SeqId], x: &Tensor) -> Result<Tensor> {
        pool.atomically(|pool| self.decode_inner(rec, pool, seqs, x))
    }

    fn decode_inner(&self, rec: &mut Recorder, pool: &mut KvPool, seqs: &[SeqId], x: &Tensor) -> Result<Tensor> {
        let b = seqs.len();
        if b == 0 {
            return Err(RuntimeError::Request("no sequences to decode".into()));
        }
        let mut lens = Vec::with_capacity(b);
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
        }
        for &s in seqs {
            pool.append(rec, s, 1)?;
        }
        let pos: Vec<u32> = lens.iter().map(|&p| p as u32).collect();
        let specs: Vec<SeqSpec> = lens.iter().map(|&p| SeqSpec { kv_len: p + 1, q_pos0: p }).collect();
        let runs = self.cascade_runs(pool, seqs, &specs)?;
        let step = Step {
            t: b,
            positions: self.dev.upload_u32("positions", &pos, &[b])?,
            table: pool.page_table(&self.dev, seqs)?,
            dest: lens.iter().enumerate().map(|(i, &p)| (i, p)).collect(),
            plan: AttnPlan::Batch { specs, runs },
        };
        self.layers_over(rec, pool, x, &step)
    }

    /// Split a batch into runs for cascade attention: maximal runs of consecutive rows whose
    /// page lists start with the same full pages (at least one). Empty when there is no such
    /// run, or when a run would start at a row whose Q cannot be bound on its own (binding
    /// offset alignment).
    fn cascade_runs(&self, pool: &KvPool, seqs: &[SeqId], specs: &[SeqSpec]) -> Result<Vec<Run>> {
        let ps = pool.page_size();
        let pages: Vec<&[u32]> = seqs.iter().map(|&s| pool.pages(s)).collect::<std::result::Result<_, _>>()?;
        // Rows [i, j) share their first `shared` pages; a page is only shared when full, as a
        // row that writes into a shared page copies it first.
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        let mut i = 0;
        while i < seqs.len() {
            let mut j = i + 1;
            let mut shared = pages[i].len();
            while j < seqs.len() {
                let common = pages[i].iter().zip(pages[j]).take_while(|(a, b)| a == b).count();
                let common = common.min(shared);
                if common == 0 {
                    break;
                }
                shared = common;
                j += 1;
            }
            let shared =
                (j > i + 1).then(|| shared.min(specs[i..j].iter().map(|s| (s.kv_len - 1) / ps).min().unwrap_or(0)));
            spans.push((i, j, shared.unwrap_or(0)));
            i = j;
        }
        if spans.iter().all(|&(_, _, shared)| shared == 0) {
            return Ok(Vec::new());
        }
        let row_bytes = (self.cfg.heads * self.cfg.head_dim * 4) as u64;
        let align = u64::from(self.dev.caps().storage_offset_alignment.max(1));
        if spans.iter().any(|&(i, _, _)| !(i as u64 * row_bytes).is_multiple_of(align)) {
            return Ok(Vec::new());
        }
        let num_pages = pool.num_pages();
        spans
            .into_iter()
            .map(|(i, j, shared)| {
                let kind = if shared > 0 {
                    let suffixes: Vec<Vec<u32>> = pages[i..j].iter().map(|p| p[shared..].to_vec()).collect();
                    RunKind::Cascade(SharedPrefix {
                        prefix: attention::PageTable::new(&self.dev, &[pages[i][..shared].to_vec()], num_pages)?,
                        prefix_len: shared * ps,
                        suffixes: attention::PageTable::new(&self.dev, &suffixes, num_pages)?,
                        suffix_lens: specs[i..j].iter().map(|s| s.kv_len - shared * ps).collect(),
                    })
                } else {
                    let rows: Vec<Vec<u32>> = pages[i..j].iter().map(|p| p.to_vec()).collect();
                    RunKind::Plain {
                        table: attention::PageTable::new(&self.dev, &rows, num_pages)?,
                        specs: specs[i..j].to_vec(),
                    }
                };
                Ok(Run { rows: i..j, kind })
            })
            .collect()
    }

    /// Record every layer and the final norm over a prepared step.
    fn layers_over(&self, rec: &mut Recorder, pool: &KvPool, x: &Tensor, step: &Step) -> Result<Tensor> {
        let (cfg, t) = (&self.cfg, step.t);
        // `normed` always holds the input of the next block: rmsnorm(x) with that block's weight.
        let normed = self.dev.empty("normed", &[t, cfg.hidden], DType::F32)?;
        self.add_norm(rec, x, None, None, &self.layers[0].attn_norm, &normed, t)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let next_norm = self.layers.get(l + 1).map_or(&self.out_norm, |n| &n.attn_norm);
            self.layer(rec, pool, l, layer, x, &normed, next_norm, step)?;
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
    ) -> Result<()> {
        let (cfg, dev, t) = (&self.cfg, &self.dev, s.t);
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let q_dim = cfg.heads * d;
        let qkv = dev.empty("qkv", &[t, layer.wqkv.n], DType::F32)?;
        layer.wqkv.forward(dev, rec, normed, t, &qkv)?;
        let local = cfg.is_local(l);
        let rp = RopeQkvParams {
            tokens: t,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: d,
            theta: if local { cfg.rope_theta_local } else { cfg.rope_theta },
            freq_scale: cfg.rope_freq_scale,
            layout: cfg.rope_layout,
            qk_norm_eps: layer.qk_norm.as_ref().map(|_| cfg.eps),
        };
        let cache = pool.cache(l)?;
        let q = dev.empty("q", &[t, q_dim], DType::F32)?;
        let norms = layer.qk_norm.as_ref().map(|(a, b)| (a, b));
        flint_kernels::rope::rope_qkv(dev, rec, &rp, &qkv, &s.positions, &s.dest, &cache, &s.table, norms, &q)?;
        let mask = match (local, cfg.sliding_window) {
            (true, Some(w)) => Mask::SlidingWindow(w),
            _ => Mask::Causal,
        };
        let p = |seqs, q_len, mask| AttnParams {
            seqs,
            q_len,
            n_heads: cfg.heads,
            n_kv_heads: cfg.kv_heads,
            head_dim: d,
            scale: cfg.attn_scale,
            mask,
            additive_mask: false,
            mask_stride: 0,
        };
        let o = dev.empty("attention out", &[t, q_dim], DType::F32)?;
        match &s.plan {
            AttnPlan::Single { pos0 } => {
                let seqs = [SeqSpec { kv_len: pos0 + t, q_pos0: *pos0 }];
                attention::attention(dev, rec, &p(1, t, mask), &seqs, &q, &cache, &s.table, None, &o)?;
            }
            // Sliding-window layers see only recent keys: no shared prefix to exploit.
            AttnPlan::Batch { specs, runs } if runs.is_empty() || mask != Mask::Causal => {
                attention::attention(dev, rec, &p(t, 1, mask), specs, &q, &cache, &s.table, None, &o)?;
            }
            AttnPlan::Batch { runs, .. } => {
                for run in runs {
                    let n = run.rows.len();
                    let at = (run.rows.start * q_dim * 4) as u64;
                    let (qv, ov) = (q.view(at, &[n, q_dim], DType::F32)?, o.view(at, &[n, q_dim], DType::F32)?);
                    match &run.kind {
                        // The query is each row's newest token: every key precedes it.
                        RunKind::Cascade(c) => attention::cascade(
                            dev,
                            rec,
                            &p(n, 1, Mask::None),
                            &qv,
                            &cache,
                            &c.prefix,
                            c.prefix_len,
                            &c.suffixes,
                            &c.suffix_lens,
                            &ov,
                        )?,
                        RunKind::Plain { table, specs } => {
                            attention::attention(dev, rec, &p(n, 1, mask), specs, &qv, &cache, table, None, &ov)?
                        }
                    }
                }
            }
        }
        let y = dev.empty("attention proj", &[t, h], DType::F32)?;
        layer.wo.forward(dev, rec, &o, t, &y)?;
        let (post_attn, post_ffn) = match &layer.post_norms {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        self.add_norm(rec, x, Some(&y), post_attn, &layer.ffn_norm, normed, t)?;

        let gate_up = dev.empty("gate|up", &[t, 2 * cfg.ffn], DType::F32)?;
        layer.w_gate_up.forward(dev, rec, normed, t, &gate_up)?;
        let act = dev.empty("mlp act", &[t, cfg.ffn], DType::F32)?;
        let op = if cfg.arch == Arch::Gemma3 { EltOp::GeGlu } else { EltOp::SwiGlu };
        flint_kernels::elementwise::glu_pair(dev, rec, op, t, cfg.ffn, &gate_up, &act)?;
        let down = dev.empty("mlp out", &[t, h], DType::F32)?;
        layer.w_down.forward(dev, rec, &act, t, &down)?;
        self.add_norm(rec, x, Some(&down), post_ffn, next_norm, normed, t)
    }
}
