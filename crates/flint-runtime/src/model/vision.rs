//! The vision side of Idefics3 (SmolVLM): a SigLIP encoder (patch embedding as patch extraction
//! plus one matmul, learned position embeddings looked up by transformers' bucketed position
//! ids so other image sizes work, pre-LN blocks of biased bidirectional multi-head attention and
//! a `gelu_pytorch_tanh` MLP, a final layer norm) and the connector (pixel shuffle by the scale
//! factor, then a bias-free projection into the text model's width). Tensor names are those
//! transformers saves for Idefics3ForConditionalGeneration (`model.vision_model.*`,
//! `model.connector.*`). Gemma 3's tower is the same SigLIP encoder with another connector: the
//! average pool of each image's token grid, an RMSNorm (`1 + w`) and a bias-free projection
//! (`multi_modal_projector.*`).

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, KvCache, PageTable};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::norm::{NormKind, NormParams};
use flint_ref::vision::{PatchParams, ShuffleParams};

use crate::hf::{Config, HfDir};
use crate::{Result, RuntimeError};

/// How the encoder's tokens become text-width embeddings; either way each `scale x scale`
/// square of an image's token grid becomes one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connector {
    /// Idefics3: the square's tokens concatenated (pixel shuffle), then projected.
    PixelShuffle,
    /// Gemma 3: the square's tokens averaged, RMS-normed (`1 + w`), then projected.
    AvgPool,
}

/// Hyperparameters of the vision encoder and connector.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// Encoder width.
    pub hidden: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// Side of the square images the encoder was trained on (a tile).
    pub image_size: usize,
    /// Patch side.
    pub patch: usize,
    /// Layer-norm epsilon.
    pub eps: f32,
    /// Tokens per side of the square the connector merges into one (Idefics3's pixel-shuffle
    /// factor; Gemma 3's pool kernel).
    pub scale_factor: usize,
    /// The connector.
    pub connector: Connector,
    /// Width of the text model the connector projects into.
    pub text_hidden: usize,
}

/// The largest `image_size` (pixels per side of the encoder's input) a vision config may have.
pub const MAX_IMAGE_SIDE: usize = 8192;

impl VisionConfig {
    /// Read `vision_config` (and the enclosing `scale_factor`) of an Idefics3 config.
    pub fn from_hf(top: &Config<'_>, text_hidden: usize) -> Result<VisionConfig> {
        let cfg = VisionConfig::read(top, text_hidden)?;
        cfg.validate().map_err(|m| RuntimeError::Model(format!("{}: vision_config: {m}", top.path.display())))?;
        Ok(cfg)
    }

    /// `vision_config` (and `scale_factor`), not yet validated.
    fn read(top: &Config<'_>, text_hidden: usize) -> Result<VisionConfig> {
        let c = top.object("vision_config")?;
        let act = c.str_or("hidden_act", "gelu_pytorch_tanh")?;
        if act != "gelu_pytorch_tanh" {
            return Err(c.error("hidden_act", &format!("is {act:?}; flint's SigLIP MLP is gelu_pytorch_tanh")));
        }
        let cfg = VisionConfig {
            hidden: c.usize("hidden_size")?,
            intermediate: c.usize("intermediate_size")?,
            layers: c.usize("num_hidden_layers")?,
            heads: c.usize("num_attention_heads")?,
            channels: c.usize_or("num_channels", 3)?,
            image_size: c.usize("image_size")?,
            patch: c.usize("patch_size")?,
            eps: c.f64_or("layer_norm_eps", 1e-6)? as f32,
            scale_factor: top.usize_or("scale_factor", 2)?,
            connector: Connector::PixelShuffle,
            text_hidden,
        };
        Ok(cfg)
    }

    /// Read `vision_config` of a Gemma 3 (Gemma3ForConditionalGeneration) config, the pool from
    /// `mm_tokens_per_image` (a square number whose side divides the patch grid's).
    pub fn from_gemma3(top: &Config<'_>, text_hidden: usize) -> Result<VisionConfig> {
        let mut cfg = VisionConfig::read(top, text_hidden)?;
        cfg.connector = Connector::AvgPool;
        let tokens = top.usize_or("mm_tokens_per_image", 256)?;
        let per_side = (tokens as f64).sqrt().round() as usize;
        let side = cfg.image_size.checked_div(cfg.patch).unwrap_or(0);
        if per_side == 0 || per_side.checked_mul(per_side) != Some(tokens) || !side.is_multiple_of(per_side) {
            return Err(top.error(
                "mm_tokens_per_image",
                &format!("is {tokens}; it must be the square of a divisor of the {side} patches per side"),
            ));
        }
        cfg.scale_factor = side / per_side;
        cfg.validate().map_err(|m| RuntimeError::Model(format!("{}: vision_config: {m}", top.path.display())))?;
        Ok(cfg)
    }

    /// Check that the numbers fit together and fit the kernels.
    pub fn validate(&self) -> Result<(), String> {
        if [self.hidden, self.intermediate, self.layers, self.heads, self.channels, self.image_size, self.patch]
            .contains(&0)
            || self.scale_factor == 0
        {
            return Err(format!("empty dimension in {self:?}"));
        }
        use crate::model::config::{MAX_HEADS, MAX_LAYERS, MAX_WIDTH};
        for (name, v, max) in [
            ("hidden_size", self.hidden, MAX_WIDTH),
            ("intermediate_size", self.intermediate, MAX_WIDTH),
            ("num_hidden_layers", self.layers, MAX_LAYERS),
            ("num_attention_heads", self.heads, MAX_HEADS),
            ("num_channels", self.channels, 4),
            ("image_size", self.image_size, MAX_IMAGE_SIDE),
            ("scale_factor", self.scale_factor, 16),
        ] {
            if v > max {
                return Err(format!("{name} {v} is over flint's limit of {max}"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps < 1.0) {
            return Err(format!("layer_norm_eps {} is not a finite value in (0, 1)", self.eps));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(format!("{} heads do not divide hidden_size {}", self.heads, self.hidden));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(4) || hd > flint_kernels::attention::MAX_HEAD_DIM {
            return Err(format!(
                "head size {hd} is not a multiple of 4 up to {}",
                flint_kernels::attention::MAX_HEAD_DIM
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return Err(format!("image_size {} is not a multiple of patch_size {}", self.image_size, self.patch));
        }
        if !self.side().is_multiple_of(self.scale_factor) {
            return Err(format!(
                "{} patches per side do not divide by scale_factor {}",
                self.side(),
                self.scale_factor
            ));
        }
        Ok(())
    }

    /// Elements per head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Patches per side of a full tile.
    pub fn side(&self) -> usize {
        self.image_size / self.patch.max(1)
    }

    /// Text tokens one full tile becomes: `(side / scale)^2`.
    pub fn tokens_per_tile(&self) -> usize {
        (self.side() / self.scale_factor.max(1)).pow(2)
    }

    /// FLOPs of encoding one full tile (matmuls and attention).
    pub fn tile_flops(&self) -> f64 {
        let (n, d, f) = (self.side().pow(2) as f64, self.hidden as f64, self.intermediate as f64);
        let patch = 2.0 * n * d * (self.channels * self.patch * self.patch) as f64;
        let layer = 2.0 * n * d * d * 4.0 + 2.0 * n * d * f * 2.0 + 4.0 * n * n * d;
        patch + self.layers as f64 * layer
    }
}

/// The position id of each patch of an image `rows x cols` patches, as transformers computes
/// them: fractional coordinates `i / rows` bucketed against the boundaries `k / side` of the
/// trained grid (so a smaller image samples the trained table, and a full one reads it in order).
pub fn position_ids(side: usize, rows: usize, cols: usize) -> Vec<u32> {
    // torch computes the boundaries with arange in double precision, then rounds to f32, and the
    // coordinates in f32; bucketize(right=True) counts the boundaries <= x.
    let boundaries: Vec<f32> = (1..side).map(|k| (k as f64 / side as f64) as f32).collect();
    let bucket = |i: usize, n: usize| -> u32 {
        let x = (i as f32 * (1.0f32 / n as f32)).min(1.0 - 1e-6);
        boundaries.iter().take_while(|&&b| b <= x).count() as u32
    };
    let mut ids = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            ids.push(bucket(r, rows) * side as u32 + bucket(c, cols));
        }
    }
    ids
}

/// A weight matrix `[n, k]` with its bias `[n]` (the vision tower's and Whisper's projections).
#[derive(Debug)]
pub(crate) struct Affine {
    pub(crate) w: Tensor,
    pub(crate) b: Option<Tensor>,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

impl Affine {
    /// Record `out = x W^T (+ b)` over `m` rows.
    pub(crate) fn forward(&self, dev: &Device, rec: &mut Recorder, x: &Tensor, m: usize, out: &Tensor) -> Result<()> {
        let p = MatmulParams { bias: self.b.is_some(), ..MatmulParams::new(m, self.n, self.k) };
        Ok(flint_kernels::matmul::matmul(dev, rec, &p, x, &self.w, self.b.as_ref(), out)?)
    }
}

/// A LayerNorm's weight and bias.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

/// A pre-LN encoder block with biased projections and a GELU MLP (SigLIP's and Whisper's).
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) ln1: LayerNorm,
    pub(crate) q: Affine,
    pub(crate) k: Affine,
    pub(crate) v: Affine,
    pub(crate) o: Affine,
    pub(crate) ln2: LayerNorm,
    pub(crate) fc1: Affine,
    pub(crate) fc2: Affine,
}

/// What an encoder's blocks share: widths, heads, the norms' epsilon, the GELU form.
pub(crate) struct EncoderShape {
    pub(crate) dim: usize,
    pub(crate) ffn: usize,
    pub(crate) heads: usize,
    pub(crate) eps: f32,
    pub(crate) gelu: EltOp,
}

/// Record `blocks` over `x` `[seqs * len, dim]`, updated in place: `x += o(attn(ln1(x)))`, then
/// `x += fc2(gelu(fc1(ln2(x))))`, each of the `seqs` sequences of `len` tokens attending to all
/// of its own tokens.
pub(crate) fn encoder_blocks(
    dev: &Device,
    rec: &mut Recorder,
    blocks: &[Block],
    s: &EncoderShape,
    x: &Tensor,
    seqs: usize,
    len: usize,
) -> Result<()> {
    encoder_blocks_masked(dev, rec, blocks, s, x, len, &vec![len; seqs])
}

/// [`encoder_blocks`] over `keys.len()` sequences of `len` tokens, each of whose tokens attend
/// to the sequence's first `keys[i]` tokens only (the rest being padding).
pub(crate) fn encoder_blocks_masked(
    dev: &Device,
    rec: &mut Recorder,
    blocks: &[Block],
    s: &EncoderShape,
    x: &Tensor,
    len: usize,
    keys: &[usize],
) -> Result<()> {
    let seqs = keys.len();
    let (d, m) = (s.dim, seqs * len);
    let hd = d / s.heads;
    let attn = AttnParams {
        seqs,
        q_len: len,
        n_heads: s.heads,
        n_kv_heads: s.heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        mask: Mask::None,
        additive_mask: false,
        mask_stride: 0,
    };
    let specs: Vec<SeqSpec> = keys.iter().map(|&k| SeqSpec { kv_len: k.clamp(1, len), q_pos0: 0 }).collect();
    // Each sequence's keys are one page of its length.
    let table = PageTable::contiguous(dev, seqs)?;
    let norm = |rec: &mut Recorder, n: &LayerNorm, out: &Tensor| -> Result<()> {
        let p = NormParams { kind: NormKind::Layer, rows: m, dim: d, eps: s.eps };
        Ok(flint_kernels::norm::norm(dev, rec, &p, x, &n.w, Some(&n.b), out)?)
    };
    let normed = dev.empty("encoder normed", &[m, d], DType::F32)?;
    let residual = EltParams { op: EltOp::ResidualAdd, n: m * d, b_len: m * d, scale: 1.0 };
    // The scratch is made once and reused by every block (the dispatches run in order): made
    // per block, all of it would stay alive until the recording is submitted, depth times
    // over (about 8 GB for Gemma 3's tower at 896x896).
    let q = dev.empty("encoder q", &[m, d], DType::F32)?;
    let cache = KvCache {
        k: dev.empty("encoder k", &[seqs, len, d], DType::F32)?,
        v: dev.empty("encoder v", &[seqs, len, d], DType::F32)?,
        page_size: len,
        num_pages: seqs,
    };
    let o = dev.empty("encoder attention", &[m, d], DType::F32)?;
    let y = dev.empty("encoder block out", &[m, d], DType::F32)?;
    let h = dev.empty("encoder mlp", &[m, s.ffn], DType::F32)?;
    let g = dev.empty("encoder mlp act", &[m, s.ffn], DType::F32)?;
    for b in blocks {
        norm(rec, &b.ln1, &normed)?;
        b.q.forward(dev, rec, &normed, m, &q)?;
        b.k.forward(dev, rec, &normed, m, &cache.k)?;
        b.v.forward(dev, rec, &normed, m, &cache.v)?;
        attention::attention(dev, rec, &attn, &specs, &q, &cache, &table, None, &o)?;
        b.o.forward(dev, rec, &o, m, &y)?;
        flint_kernels::elementwise::residual_add(dev, rec, &residual, x, &y)?;
        norm(rec, &b.ln2, &normed)?;
        b.fc1.forward(dev, rec, &normed, m, &h)?;
        let gelu = EltParams::unary(s.gelu, m * s.ffn);
        flint_kernels::elementwise::elementwise(dev, rec, &gelu, &h, None, &g)?;
        b.fc2.forward(dev, rec, &g, m, &y)?;
        flint_kernels::elementwise::residual_add(dev, rec, &residual, x, &y)?;
    }
    Ok(())
}

/// Where the vision weights come from.
pub(crate) trait Source {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

impl Source for HfDir {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.f32(name, shape)
    }
}

/// Seeded uniform weights (benchmarks at real shapes without a checkpoint); norms near 1.
/// Seeded random weights (for benchmarks): norm weights near 1, the rest within
/// `1 / sqrt(fan_in)`.
pub(crate) struct Random(pub(crate) std::cell::Cell<u64>);

impl Source for Random {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        let (centre, spread) =
            if name.contains("norm") && name.ends_with("weight") { (1.0, 0.1) } else { (0.0, 1.0 / fan_in.sqrt()) };
        let mut s = self.0.get();
        let v = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                centre + spread * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            })
            .collect();
        self.0.set(s);
        Ok(v)
    }
}

/// The vision encoder and connector on the GPU.
#[derive(Debug)]
pub struct VisionTower {
    /// Hyperparameters.
    pub cfg: VisionConfig,
    dev: Device,
    patch: Affine,
    pos: Tensor,
    blocks: Vec<Block>,
    post: LayerNorm,
    proj: Affine,
    /// The RMSNorm before the projection (the pooling connector).
    proj_norm: Option<Tensor>,
}

/// Where a tower's tensors are: the encoder's prefix (`model.vision_model`) and the connector's
/// (`model.connector.modality_projection.proj` for Idefics3; `multi_modal_projector` for Gemma 3).
#[derive(Clone, Copy, Debug)]
pub struct TowerNames<'a> {
    /// The SigLIP encoder's prefix.
    pub encoder: &'a str,
    /// The connector's prefix.
    pub connector: &'a str,
}

impl TowerNames<'static> {
    /// Idefics3's names.
    pub const IDEFICS3: TowerNames<'static> =
        TowerNames { encoder: "model.vision_model", connector: "model.connector.modality_projection.proj" };
}

impl VisionTower {
    /// Load from a Hugging Face directory, its tensors under `names`.
    pub(crate) fn from_hf(dev: &Device, dir: &HfDir, cfg: VisionConfig, names: TowerNames<'_>) -> Result<VisionTower> {
        VisionTower::load(dev, dir, cfg, names)
    }

    /// Seeded random weights of `cfg`'s shapes (for benchmarks).
    pub fn random(dev: &Device, cfg: VisionConfig, seed: u64) -> Result<VisionTower> {
        VisionTower::load(dev, &Random(std::cell::Cell::new(seed | 1)), cfg, TowerNames::IDEFICS3)
    }

    fn load(dev: &Device, src: &dyn Source, cfg: VisionConfig, names: TowerNames<'_>) -> Result<VisionTower> {
        cfg.validate().map_err(RuntimeError::Model)?;
        let up = |name: &str, shape: &[usize], store: &[usize]| -> Result<Tensor> {
            Ok(dev.upload_f32(name, &src.get(name, shape)?, store, DType::F32)?)
        };
        let affine = |prefix: &str, n: usize, k: usize, bias: bool| -> Result<Affine> {
            let w = up(&format!("{prefix}.weight"), &[n, k], &[n, k])?;
            let b = if bias { Some(up(&format!("{prefix}.bias"), &[n], &[n])?) } else { None };
            Ok(Affine { w, b, n, k })
        };
        let norm = |prefix: &str, d: usize| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: up(&format!("{prefix}.weight"), &[d], &[d])?,
                b: up(&format!("{prefix}.bias"), &[d], &[d])?,
            })
        };
        let (d, f, c, p) = (cfg.hidden, cfg.intermediate, cfg.channels, cfg.patch);
        let v = names.encoder;
        let patch = Affine {
            w: up(&format!("{v}.embeddings.patch_embedding.weight"), &[d, c, p, p], &[d, c * p * p])?,
            b: Some(up(&format!("{v}.embeddings.patch_embedding.bias"), &[d], &[d])?),
            n: d,
            k: c * p * p,
        };
        let np = cfg.side() * cfg.side();
        let pos = up(&format!("{v}.embeddings.position_embedding.weight"), &[np, d], &[np, d])?;
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let b = format!("{v}.encoder.layers.{l}");
            blocks.push(Block {
                ln1: norm(&format!("{b}.layer_norm1"), d)?,
                q: affine(&format!("{b}.self_attn.q_proj"), d, d, true)?,
                k: affine(&format!("{b}.self_attn.k_proj"), d, d, true)?,
                v: affine(&format!("{b}.self_attn.v_proj"), d, d, true)?,
                o: affine(&format!("{b}.self_attn.out_proj"), d, d, true)?,
                ln2: norm(&format!("{b}.layer_norm2"), d)?,
                fc1: affine(&format!("{b}.mlp.fc1"), f, d, true)?,
                fc2: affine(&format!("{b}.mlp.fc2"), d, f, true)?,
            });
        }
        let post = norm(&format!("{v}.post_layernorm"), d)?;
        let (proj, proj_norm) = match cfg.connector {
            Connector::PixelShuffle => {
                let s2 = cfg.scale_factor * cfg.scale_factor;
                (affine(names.connector, cfg.text_hidden, d * s2, false)?, None)
            }
            Connector::AvgPool => {
                // Stored `[vision, text]` and used as `x @ W`: transposed here into `[text, vision]`.
                let (c, th) = (names.connector, cfg.text_hidden);
                let name = format!("{c}.mm_input_projection_weight");
                let stored = src.get(&name, &[d, th])?;
                let w: Vec<f32> = (0..th * d).map(|i| stored[(i % d) * th + i / d]).collect();
                let w = dev.upload_f32(&name, &w, &[th, d], DType::F32)?;
                let norm = up(&format!("{c}.mm_soft_emb_norm.weight"), &[d], &[d])?;
                (Affine { w, b: None, n: th, k: d }, Some(norm))
            }
        };
        Ok(VisionTower { dev: dev.clone(), patch, pos, blocks, post, proj, proj_norm, cfg })
    }

    fn layer_norm(&self, rec: &mut Recorder, x: &Tensor, n: &LayerNorm, rows: usize, out: &Tensor) -> Result<()> {
        let p = NormParams { kind: NormKind::Layer, rows, dim: self.cfg.hidden, eps: self.cfg.eps };
        Ok(flint_kernels::norm::norm(&self.dev, rec, &p, x, &n.w, Some(&n.b), out)?)
    }

    /// Record the encoder over `images` images `[images, channels, height, width]` (f32,
    /// normalised), all of one size whose sides are multiples of the patch. Returns the
    /// post-normed hidden states `[images * patches, hidden]`.
    pub fn encode(
        &self,
        rec: &mut Recorder,
        pixels: &Tensor,
        images: usize,
        height: usize,
        width: usize,
    ) -> Result<Tensor> {
        let (cfg, dev) = (&self.cfg, &self.dev);
        let d = cfg.hidden;
        let pp = PatchParams { images, channels: cfg.channels, height, width, patch: cfg.patch };
        pp.validate().map_err(|e| RuntimeError::Request(format!("pixel values: {e}")))?;
        if height > cfg.image_size || width > cfg.image_size {
            return Err(RuntimeError::Request(format!(
                "{height}x{width} images are larger than the encoder's {0}x{0} tiles",
                cfg.image_size
            )));
        }
        let (rows, cols) = (height / cfg.patch, width / cfg.patch);
        let np = rows * cols;
        let m = images * np;
        let patches = dev.empty("patches", &[m, pp.row()], DType::F32)?;
        flint_kernels::vision::patches(dev, rec, &pp, pixels, &patches)?;
        let embeds = dev.empty("patch embeddings", &[m, d], DType::F32)?;
        self.patch.forward(dev, rec, &patches, m, &embeds)?;
        let ids = dev.upload_u32("position ids", &position_ids(cfg.side(), rows, cols), &[np])?;
        let pos = dev.empty("position embeddings", &[np, d], DType::F32)?;
        let ep = EmbedParams { tokens: np, vocab: cfg.side() * cfg.side(), dim: d, scale: 1.0 };
        flint_kernels::embed::embed(dev, rec, &ep, &self.pos, &ids, &pos)?;
        let x = dev.empty("vision hidden", &[m, d], DType::F32)?;
        let add = EltParams::binary(EltOp::Add, m * d, np * d);
        flint_kernels::elementwise::elementwise(dev, rec, &add, &embeds, Some(&pos), &x)?;

        let shape =
            EncoderShape { dim: d, ffn: cfg.intermediate, heads: cfg.heads, eps: cfg.eps, gelu: EltOp::GeluTanh };
        encoder_blocks(dev, rec, &self.blocks, &shape, &x, images, np)?;
        let out = dev.empty("vision out", &[m, d], DType::F32)?;
        self.layer_norm(rec, &x, &self.post, m, &out)?;
        Ok(out)
    }

    /// Record the connector over encoder output `x` `[images * side^2, hidden]` of square
    /// images of `side` patches: pixel shuffle, then the projection. Returns
    /// `[images * (side / scale)^2, text_hidden]`.
    pub fn connect(&self, rec: &mut Recorder, x: &Tensor, images: usize, side: usize) -> Result<Tensor> {
        let (cfg, dev) = (&self.cfg, &self.dev);
        let sp = ShuffleParams { images, side, dim: cfg.hidden, scale: cfg.scale_factor };
        sp.validate().map_err(|e| RuntimeError::Request(format!("connector: {e}")))?;
        let t = images * sp.tokens_out();
        if let Some(w) = &self.proj_norm {
            let pooled = dev.empty("average pool", &[t, cfg.hidden], DType::F32)?;
            flint_kernels::vision::avg_pool(dev, rec, &sp, x, &pooled)?;
            let normed = dev.empty("pooled normed", &[t, cfg.hidden], DType::F32)?;
            let p = NormParams { kind: NormKind::RmsUnitOffset, rows: t, dim: cfg.hidden, eps: cfg.eps };
            flint_kernels::norm::norm(dev, rec, &p, &pooled, w, None, &normed)?;
            let out = dev.empty("image embeddings", &[t, cfg.text_hidden], DType::F32)?;
            self.proj.forward(dev, rec, &normed, t, &out)?;
            return Ok(out);
        }
        let shuffled = dev.empty("pixel shuffle", &[t, self.proj.k], DType::F32)?;
        flint_kernels::vision::pixel_shuffle(dev, rec, &sp, x, &shuffled)?;
        let out = dev.empty("image embeddings", &[t, cfg.text_hidden], DType::F32)?;
        self.proj.forward(dev, rec, &shuffled, t, &out)?;
        Ok(out)
    }

    /// Record encoder and connector over square tiles of the trained size: `[images * tokens per
    /// tile, text_hidden]`, ready to splice into the text embeddings.
    pub fn embed_images(&self, rec: &mut Recorder, pixels: &Tensor, images: usize) -> Result<Tensor> {
        let s = self.cfg.image_size;
        let h = self.encode(rec, pixels, images, s, s)?;
        self.connect(rec, &h, images, self.cfg.side())
    }
}
