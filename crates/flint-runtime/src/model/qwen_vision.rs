//! Qwen2.5-VL's vision tower and patch merger (`visual.*`): patches of 2 frames x 14 x 14
//! pixels (the processor's rows) through one matmul, then pre-RMSNorm blocks of biased
//! attention with a 2D rotary embedding (a row and a column position per patch, each rotating
//! a quarter of the head's pairs' frequencies) and a SwiGLU MLP with biases, most blocks
//! attending within windows of `window_size` pixels, the `fullatt_block_indexes` blocks across
//! the whole image; then the merger: RMSNorm, each 2x2 group of patches concatenated, a GELU
//! MLP into the text decoder's width.
//!
//! As transformers does, the tower runs in window order: the processor orders patches by 2x2
//! merge unit, and the units are reordered so that each window's are consecutive (the pixels
//! are permuted on the host, with the rotary angles), so that a window is a block of rows. Each
//! image runs its own attention, the window layers with an additive mask that keeps a patch to
//! its window; the merged tokens are put back in image order by a gather at the end.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, KvCache, PageTable};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::embed::EmbedParams;
use flint_ref::norm::{NormKind, NormParams};
use flint_ref::rope::{RopeLayout, RopeParams};

use crate::hf::{Config, HfDir};
use crate::model::vision::{Affine, Random, Source};
use crate::{Result, RuntimeError};

/// The shapes of a Qwen2.5-VL vision tower (`vision_config`).
#[derive(Clone, Debug, PartialEq)]
pub struct QwenVisionConfig {
    /// Blocks.
    pub depth: usize,
    /// Width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub ffn: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Patches per side of a merged token.
    pub merge: usize,
    /// Frames per patch.
    pub temporal: usize,
    /// Window side in pixels.
    pub window: usize,
    /// Width of the merger's output (the text decoder's).
    pub out_hidden: usize,
    /// Blocks that attend across the whole image.
    pub full_attention: Vec<usize>,
    /// Base of the rotary frequencies.
    pub theta: f32,
}

impl QwenVisionConfig {
    /// Read `vision_config` (transformers' Qwen2_5_VLVisionConfig defaults where a key is
    /// missing), checking what flint can run.
    pub(crate) fn from_hf(c: &Config<'_>) -> Result<QwenVisionConfig> {
        let rope = match c.value.get("rope_parameters") {
            Some(v) if v.is_object() => c.object("rope_parameters")?.f64_or("rope_theta", 10000.0)?,
            _ => 10000.0,
        };
        let full = match c.value.get("fullatt_block_indexes") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|v| v as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| c.error("fullatt_block_indexes", "must be a list of block numbers"))?,
            _ => vec![7, 15, 23, 31],
        };
        let cfg = QwenVisionConfig {
            depth: c.usize_or("depth", 32)?,
            hidden: c.usize_or("hidden_size", 1280)?,
            heads: c.usize_or("num_heads", 16)?,
            ffn: c.usize_or("intermediate_size", 3420)?,
            patch: c.usize_or("patch_size", 14)?,
            merge: c.usize_or("spatial_merge_size", 2)?,
            temporal: c.usize_or("temporal_patch_size", 2)?,
            window: c.usize_or("window_size", 112)?,
            out_hidden: c.usize_or("out_hidden_size", 3584)?,
            full_attention: full,
            theta: rope as f32,
        };
        if c.str_or("hidden_act", "silu")? != "silu" {
            return Err(c.error("hidden_act", "is not silu"));
        }
        if c.usize_or("in_channels", 3)? != 3 {
            return Err(c.error("in_channels", "is not 3"));
        }
        let d = cfg.hidden;
        if !(1..=8192).contains(&d) || !d.is_multiple_of(64) {
            return Err(c.error("hidden_size", &format!("is {d}; flint takes multiples of 64 up to 8192")));
        }
        let hd = d / cfg.heads.max(1);
        if cfg.heads == 0 || !d.is_multiple_of(cfg.heads) || !hd.is_multiple_of(4) || hd > 256 {
            return Err(c.error(
                "num_heads",
                &format!("is {}; it must split {d} into heads of a multiple of 4, at most 256", cfg.heads),
            ));
        }
        if !(1..=256).contains(&cfg.depth) || !(1..=4 * 8192).contains(&cfg.ffn) || cfg.out_hidden == 0 {
            return Err(
                c.error("depth", &format!("{} blocks, an MLP of {}: outside what flint takes", cfg.depth, cfg.ffn))
            );
        }
        if cfg.patch == 0 || cfg.merge == 0 || cfg.temporal == 0 {
            return Err(
                c.error("patch_size", "patch_size, spatial_merge_size and temporal_patch_size must be positive")
            );
        }
        let unit = cfg.merge * cfg.patch;
        if cfg.window < unit || !cfg.window.is_multiple_of(unit) {
            return Err(c.error(
                "window_size",
                &format!("is {}; it must be a multiple of spatial_merge_size x patch_size = {unit}", cfg.window),
            ));
        }
        if let Some(&b) = cfg.full_attention.iter().find(|&&b| b >= cfg.depth) {
            return Err(c.error("fullatt_block_indexes", &format!("names block {b} of {}", cfg.depth)));
        }
        Ok(cfg)
    }

    /// Elements of one patch row: `3 * temporal * patch * patch`.
    pub fn patch_row(&self) -> usize {
        3 * self.temporal * self.patch * self.patch
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Qwen2.5-VL-3B's tower (`out_hidden` 2048).
    pub fn qwen2_5_vl_3b() -> QwenVisionConfig {
        QwenVisionConfig {
            depth: 32,
            hidden: 1280,
            heads: 16,
            ffn: 3420,
            patch: 14,
            merge: 2,
            temporal: 2,
            window: 112,
            out_hidden: 2048,
            full_attention: vec![7, 15, 23, 31],
            theta: 10000.0,
        }
    }

    /// FLOPs the model needs for one image of `grid` patches (multiply-adds count two): the
    /// patch matmul, the blocks (window layers attending within their windows) and the merger.
    /// flint runs a window layer as masked attention over the whole image, so it does more.
    pub fn flops(&self, grid: (usize, usize)) -> f64 {
        let (n, d, f) = ((grid.0 * grid.1) as f64, self.hidden as f64, self.ffn as f64);
        let window = ((self.window / self.patch).pow(2) as f64).min(n);
        let dense = 2.0 * n * d * (4.0 * d + 3.0 * f);
        let attn = |keys: f64| 4.0 * n * keys * d;
        let full = self.full_attention.len() as f64;
        let m = (self.merge * self.merge) as f64;
        2.0 * n * d * self.patch_row() as f64
            + self.depth as f64 * dense
            + full * attn(n)
            + (self.depth as f64 - full) * attn(window)
            + 2.0 * (n / m) * (d * m) * (d * m + self.out_hidden as f64)
    }
}

struct Block {
    norm1: Tensor,
    q: Affine,
    k: Affine,
    v: Affine,
    proj: Affine,
    norm2: Tensor,
    gate: Affine,
    up: Affine,
    down: Affine,
}

/// Images for the tower: the processor's patch rows of each image, and its patch grid.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchImages {
    /// `[patches, 3 * temporal * patch * patch]` f32 row-major, the images one after another,
    /// each in the processor's order (by 2x2 merge unit).
    pub pixels: Vec<f32>,
    /// Each image's patch rows and columns (multiples of the merge size).
    pub grids: Vec<(usize, usize)>,
}

impl PatchImages {
    /// Patches of all images.
    pub fn patches(&self) -> usize {
        self.grids.iter().map(|(h, w)| h * w).sum()
    }
}

/// Qwen2.5-VL's vision tower and merger on one device.
pub struct QwenVisionTower {
    /// Shapes.
    pub cfg: QwenVisionConfig,
    dev: Device,
    patch_embed: Affine,
    blocks: Vec<Block>,
    ln_q: Tensor,
    mlp0: Affine,
    mlp2: Affine,
}

impl std::fmt::Debug for QwenVisionTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenVisionTower").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// How one forward pass lays the images out: the window order of the patch rows, each image's
/// rows and window masks, the rotary angles, and the merged tokens' way back.
struct Layout {
    /// For each row in window order, its row in the processor's order.
    order: Vec<usize>,
    /// Each image's first row and rows (in window order; an image's rows stay together).
    images: Vec<(usize, usize)>,
    /// Each image's additive window mask `[rows, rows]`.
    masks: Vec<Vec<f32>>,
    /// `[rows, head_dim / 2]` angles in window order.
    angles: Vec<f32>,
    /// For each merged token in image order, its row among the merged tokens in window order.
    back: Vec<u32>,
}

impl QwenVisionTower {
    /// Load the tower of the Qwen2.5-VL model directory `dir` (its config.json's
    /// `vision_config`; tensors under `visual.*`, or transformers 5.x's `model.visual.*`).
    pub fn load(dev: &Device, dir: &std::path::Path) -> Result<QwenVisionTower> {
        let hf = HfDir::open(dir)?;
        let top = Config::new(dir.join("config.json"), &hf.config);
        let cfg = QwenVisionConfig::from_hf(&top.object("vision_config")?)?;
        QwenVisionTower::from_hf(dev, &hf, visual_prefix(&hf)?, cfg)
    }

    /// Load the tower from `dir` under `prefix` (`visual`, or transformers 5.x's `model.visual`).
    pub(crate) fn from_hf(dev: &Device, dir: &HfDir, prefix: &str, cfg: QwenVisionConfig) -> Result<QwenVisionTower> {
        QwenVisionTower::load_from(dev, dir, prefix, cfg)
    }

    /// Seeded random weights of `cfg`'s shapes (for benchmarks).
    pub fn random(dev: &Device, cfg: QwenVisionConfig, seed: u64) -> Result<QwenVisionTower> {
        QwenVisionTower::load_from(dev, &Random(std::cell::Cell::new(seed | 1)), "visual", cfg)
    }

    fn load_from(dev: &Device, dir: &dyn Source, prefix: &str, cfg: QwenVisionConfig) -> Result<QwenVisionTower> {
        let d = cfg.hidden;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let n = format!("{prefix}.{name}");
            Ok(dev.upload_f32(&n, &dir.get(&n, shape)?, shape, DType::F32)?)
        };
        let affine = |name: &str, n: usize, k: usize, bias: bool| -> Result<Affine> {
            Ok(Affine {
                w: get(&format!("{name}.weight"), &[n, k])?,
                b: if bias { Some(get(&format!("{name}.bias"), &[n])?) } else { None },
                n,
                k,
            })
        };
        // The fused QKV rows, split at load.
        let qkv = |l: usize, part: usize| -> Result<Affine> {
            let n = format!("{prefix}.blocks.{l}.attn.qkv");
            let w = dir.get(&format!("{n}.weight"), &[3 * d, d])?;
            let b = dir.get(&format!("{n}.bias"), &[3 * d])?;
            let rows = part * d..(part + 1) * d;
            Ok(Affine {
                w: dev.upload_f32(&n, &w[rows.start * d..rows.end * d], &[d, d], DType::F32)?,
                b: Some(dev.upload_f32(&n, &b[rows], &[d], DType::F32)?),
                n: d,
                k: d,
            })
        };
        let mut blocks = Vec::with_capacity(cfg.depth);
        for l in 0..cfg.depth {
            let p = format!("blocks.{l}");
            blocks.push(Block {
                norm1: get(&format!("{p}.norm1.weight"), &[d])?,
                q: qkv(l, 0)?,
                k: qkv(l, 1)?,
                v: qkv(l, 2)?,
                proj: affine(&format!("{p}.attn.proj"), d, d, true)?,
                norm2: get(&format!("{p}.norm2.weight"), &[d])?,
                gate: affine(&format!("{p}.mlp.gate_proj"), cfg.ffn, d, true)?,
                up: affine(&format!("{p}.mlp.up_proj"), cfg.ffn, d, true)?,
                down: affine(&format!("{p}.mlp.down_proj"), d, cfg.ffn, true)?,
            });
        }
        let row = cfg.patch_row();
        // Conv3d's weight [d, 3, temporal, patch, patch] is the matmul's [d, row].
        let w = dir.get(&format!("{prefix}.patch_embed.proj.weight"), &[d, 3, cfg.temporal, cfg.patch, cfg.patch])?;
        let patch_embed =
            Affine { w: dev.upload_f32("patch_embed", &w, &[d, row], DType::F32)?, b: None, n: d, k: row };
        let m = d * cfg.merge * cfg.merge;
        Ok(QwenVisionTower {
            dev: dev.clone(),
            patch_embed,
            blocks,
            ln_q: get("merger.ln_q.weight", &[d])?,
            mlp0: affine("merger.mlp.0", m, m, true)?,
            mlp2: affine("merger.mlp.2", cfg.out_hidden, m, true)?,
            cfg,
        })
    }

    /// Merged tokens an image of `grid` patches becomes.
    pub fn tokens_for(&self, grid: (usize, usize)) -> usize {
        grid.0 * grid.1 / (self.cfg.merge * self.cfg.merge)
    }

    fn layout(&self, images: &PatchImages) -> Result<Layout> {
        let (m, unit) = (self.cfg.merge, self.cfg.merge * self.cfg.merge);
        let ws = self.cfg.window / m / self.cfg.patch;
        let hd = self.cfg.head_dim();
        let quarter = hd / 4;
        let inv: Vec<f32> = (0..quarter)
            .map(|k| (1.0 / f64::from(self.cfg.theta).powf(2.0 * k as f64 / (hd / 2) as f64)) as f32)
            .collect();
        let mut l =
            Layout { order: Vec::new(), images: Vec::new(), masks: Vec::new(), angles: Vec::new(), back: Vec::new() };
        let (mut first_row, mut first_unit) = (0, 0);
        for (i, &(h, w)) in images.grids.iter().enumerate() {
            if h == 0 || w == 0 || !h.is_multiple_of(m) || !w.is_multiple_of(m) {
                return Err(RuntimeError::Request(format!(
                    "image {} has a {h}x{w} patch grid; the tower takes grids in multiples of {m}",
                    i + 1
                )));
            }
            let (uh, uw) = (h / m, w / m);
            let n = h * w;
            // Units in window order, and each unit's window.
            let mut units = Vec::with_capacity(uh * uw);
            let mut window_of = Vec::with_capacity(uh * uw);
            for wy in 0..uh.div_ceil(ws) {
                for wx in 0..uw.div_ceil(ws) {
                    for y in wy * ws..((wy + 1) * ws).min(uh) {
                        for x in wx * ws..((wx + 1) * ws).min(uw) {
                            units.push(y * uw + x);
                            window_of.push(wy * uw.div_ceil(ws) + wx);
                        }
                    }
                }
            }
            let mut back = vec![0u32; uh * uw];
            for (pos, &u) in units.iter().enumerate() {
                back[u] = (first_unit + pos) as u32;
                for s in 0..unit {
                    // The processor's row of sub-patch s of unit u, and its grid position.
                    l.order.push(first_row + u * unit + s);
                    let (r, c) = ((u / uw) * m + s / m, (u % uw) * m + s % m);
                    l.angles.extend(inv.iter().map(|f| r as f32 * f));
                    l.angles.extend(inv.iter().map(|f| c as f32 * f));
                }
            }
            l.back.extend(back);
            let mut mask = vec![f32::NEG_INFINITY; n * n];
            for a in 0..n {
                for b in 0..n {
                    if window_of[a / unit] == window_of[b / unit] {
                        mask[a * n + b] = 0.0;
                    }
                }
            }
            l.masks.push(mask);
            l.images.push((first_row, n));
            first_row += n;
            first_unit += uh * uw;
        }
        Ok(l)
    }

    /// Record the tower and merger over `images`: the merged tokens `[tokens, out_hidden]` in
    /// image order, and the blocks' output `[patches, hidden]` in window order.
    pub fn encode(&self, rec: &mut Recorder, images: &PatchImages) -> Result<(Tensor, Tensor)> {
        let (dev, cfg) = (&self.dev, &self.cfg);
        let (d, row, n) = (cfg.hidden, cfg.patch_row(), images.patches());
        if n == 0 || images.pixels.len() != n * row {
            return Err(RuntimeError::Request(format!(
                "{} pixel values for {n} patches of {row}",
                images.pixels.len()
            )));
        }
        if let Some(i) = images.pixels.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::Request(format!(
                "pixel value {i} is {}: pixel values must be finite",
                images.pixels[i]
            )));
        }
        let l = self.layout(images)?;
        let mut permuted = Vec::with_capacity(n * row);
        for &r in &l.order {
            permuted.extend_from_slice(&images.pixels[r * row..(r + 1) * row]);
        }
        let px = dev.upload_f32("qwen vision patches", &permuted, &[n, row], DType::F32)?;
        let x = dev.empty("qwen vision hidden", &[n, d], DType::F32)?;
        self.patch_embed.forward(dev, rec, &px, n, &x)?;
        let hd = cfg.head_dim();
        let angles = dev.upload_f32("qwen vision angles", &l.angles, &[n, hd / 2], DType::F32)?;
        let masks: Vec<Tensor> = l
            .masks
            .iter()
            .zip(&l.images)
            .map(|(m, &(_, k))| dev.upload_f32("qwen vision window mask", m, &[k, k], DType::F32))
            .collect::<std::result::Result<_, _>>()?;
        let rms = |rec: &mut Recorder, w: &Tensor, out: &Tensor| -> Result<()> {
            let p = NormParams { kind: NormKind::Rms, rows: n, dim: d, eps: 1e-6 };
            Ok(flint_kernels::norm::norm(dev, rec, &p, &x, w, None, out)?)
        };
        let rope = RopeParams {
            tokens: n,
            heads: cfg.heads,
            head_dim: hd,
            rot_dim: hd,
            theta: cfg.theta,
            freq_scale: 1.0,
            layout: RopeLayout::RotateHalf,
        };
        let residual = EltParams { op: EltOp::ResidualAdd, n: n * d, b_len: n * d, scale: 1.0 };
        let normed = dev.empty("qwen vision normed", &[n, d], DType::F32)?;
        // Scratch made once and reused by every block: made per block, it would all stay
        // alive until the recording is submitted (10 GB for a 3B tower over 896x896).
        let [q, k, v, qr, kr, o, y] = ["q", "k", "v", "q rotated", "k rotated", "attention", "block out"]
            .map(|name| dev.empty(&format!("qwen vision {name}"), &[n, d], DType::F32));
        let (q, k, v, qr, kr, o, y) = (q?, k?, v?, qr?, kr?, o?, y?);
        let [g, u, a] =
            ["gate", "up", "act"].map(|name| dev.empty(&format!("qwen vision {name}"), &[n, cfg.ffn], DType::F32));
        let (g, u, a) = (g?, u?, a?);
        let table = PageTable::contiguous(dev, 1)?;
        for (b, block) in self.blocks.iter().enumerate() {
            rms(rec, &block.norm1, &normed)?;
            block.q.forward(dev, rec, &normed, n, &q)?;
            block.k.forward(dev, rec, &normed, n, &k)?;
            block.v.forward(dev, rec, &normed, n, &v)?;
            flint_kernels::rope::rope_angles(dev, rec, &rope, &q, &angles, &qr)?;
            flint_kernels::rope::rope_angles(dev, rec, &rope, &k, &angles, &kr)?;
            let windowed = !cfg.full_attention.contains(&b);
            for (i, &(first, rows)) in l.images.iter().enumerate() {
                let at = (first * d * 4) as u64;
                let view = |t: &Tensor, shape: &[usize]| t.view(at, shape, DType::F32);
                let cache = KvCache {
                    k: view(&kr, &[1, rows, d])?,
                    v: view(&v, &[1, rows, d])?,
                    page_size: rows,
                    num_pages: 1,
                };
                let p = AttnParams {
                    seqs: 1,
                    q_len: rows,
                    n_heads: cfg.heads,
                    n_kv_heads: cfg.heads,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    mask: Mask::None,
                    additive_mask: windowed,
                    mask_stride: if windowed { rows } else { 0 },
                };
                let specs = [SeqSpec { kv_len: rows, q_pos0: 0 }];
                let mask = windowed.then_some(&masks[i]);
                attention::attention(
                    dev,
                    rec,
                    &p,
                    &specs,
                    &view(&qr, &[rows, d])?,
                    &cache,
                    &table,
                    mask,
                    &view(&o, &[rows, d])?,
                )?;
            }
            block.proj.forward(dev, rec, &o, n, &y)?;
            flint_kernels::elementwise::residual_add(dev, rec, &residual, &x, &y)?;
            rms(rec, &block.norm2, &normed)?;
            block.gate.forward(dev, rec, &normed, n, &g)?;
            block.up.forward(dev, rec, &normed, n, &u)?;
            let glu = EltParams { op: EltOp::SwiGlu, n: n * cfg.ffn, b_len: n * cfg.ffn, scale: 1.0 };
            flint_kernels::elementwise::elementwise(dev, rec, &glu, &g, Some(&u), &a)?;
            block.down.forward(dev, rec, &a, n, &y)?;
            flint_kernels::elementwise::residual_add(dev, rec, &residual, &x, &y)?;
        }
        // The merger: RMSNorm, each unit's rows as one row, the MLP; then back in image order.
        rms(rec, &self.ln_q, &normed)?;
        let (units, wide) = (n / (cfg.merge * cfg.merge), d * cfg.merge * cfg.merge);
        let grouped = normed.view(0, &[units, wide], DType::F32)?;
        let h = dev.empty("qwen merger hidden", &[units, wide], DType::F32)?;
        self.mlp0.forward(dev, rec, &grouped, units, &h)?;
        let g = dev.empty("qwen merger gelu", &[units, wide], DType::F32)?;
        flint_kernels::elementwise::elementwise(
            dev,
            rec,
            &EltParams::unary(EltOp::GeluErf, units * wide),
            &h,
            None,
            &g,
        )?;
        let merged = dev.empty("qwen merger out", &[units, cfg.out_hidden], DType::F32)?;
        self.mlp2.forward(dev, rec, &g, units, &merged)?;
        let back = dev.upload_u32("qwen merger order", &l.back, &[units])?;
        let out = dev.empty("qwen vision tokens", &[units, cfg.out_hidden], DType::F32)?;
        let p = EmbedParams { tokens: units, vocab: units, dim: cfg.out_hidden, scale: 1.0 };
        flint_kernels::embed::embed(dev, rec, &p, &merged, &back, &out)?;
        Ok((out, x))
    }

    /// The merged tokens and the blocks' output of `images`, read back (see
    /// [`QwenVisionTower::encode`]): what conformance compares stage by stage.
    pub fn encode_host(&self, images: &PatchImages) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut rec = Recorder::new(&self.dev);
        let (out, hidden) = self.encode(&mut rec, images)?;
        rec.submit()?.wait()?;
        Ok((self.dev.read_f32(&out)?, self.dev.read_f32(&hidden)?))
    }
}

/// Where a Qwen2.5-VL checkpoint keeps its tower: `visual` (published) or `model.visual`
/// (transformers 5.x).
pub(crate) fn visual_prefix(dir: &HfDir) -> Result<&'static str> {
    let names = "visual.* or model.visual.*";
    crate::model::arch::prefix_of(dir, &["visual", "model.visual"], ".patch_embed.proj.weight", "vision tower", names)
}

/// The image side of a Qwen2.5-VL model: the tower, the processor, and the tokens that mark
/// images in a prompt.
#[derive(Debug)]
pub struct QwenVision {
    /// Tower and merger.
    pub tower: QwenVisionTower,
    /// Smart resize and patch rows.
    pub processor: crate::image::PatchProcessor,
    /// `<|image_pad|>` (`image_token_id`), one per merged token.
    pub image_token_id: u32,
    /// `<|vision_start|>`, `<|image_pad|>` and `<|vision_end|>` as text.
    pub markup: (String, String, String),
}

impl QwenVision {
    /// Whether `text` places an image: `<image>`, or the template's `<|image_pad|>`.
    pub fn has_placeholder(&self, text: &str) -> bool {
        text.contains("<image>") || text.contains(self.markup.1.as_str())
    }

    /// `text` with each image's placeholder expanded into its merged tokens, and the images'
    /// patches. `<image>` becomes `<|vision_start|><|image_pad|>...<|vision_end|>`; the
    /// template's `<|image_pad|>` (between its start and end tokens) is repeated.
    pub fn prompt(&self, text: &str, images: &[crate::image::Rgb]) -> Result<(String, PatchImages)> {
        let (start, pad, end) = &self.markup;
        let text = text.replace("<image>", &format!("{start}{pad}{end}"));
        let found = text.matches(pad.as_str()).count();
        if found != images.len() {
            return Err(RuntimeError::Request(format!(
                "the prompt has {found} image placeholders (<image> or {pad}) for {} images",
                images.len()
            )));
        }
        let mut patches = PatchImages { pixels: Vec::new(), grids: Vec::new() };
        let mut out = String::with_capacity(text.len());
        let mut pieces = text.split(pad.as_str());
        out.push_str(pieces.next().unwrap_or_default());
        for (piece, img) in pieces.zip(images) {
            let p = self.processor.process(img)?;
            out.push_str(&pad.repeat(self.tower.tokens_for(p.grid)));
            out.push_str(piece);
            patches.pixels.extend(p.pixels);
            patches.grids.push(p.grid);
        }
        Ok((out, patches))
    }

    /// The M-RoPE positions (temporal, row, column) of `ids` from `start`, as transformers'
    /// get_rope_index makes them: a text token takes the next position on all three axes; an
    /// image's tokens (consecutive `image_token_id`s, the images' `grids` in order) take
    /// `start + (0, row, column)` over its merged grid, and the text after it starts at
    /// `start + max(rows, columns)`. Returns the positions and the next text position.
    pub fn positions(&self, ids: &[u32], grids: &[(usize, usize)], start: u32) -> Result<(Vec<[u32; 3]>, u32)> {
        let m = self.tower.cfg.merge;
        let mut out = Vec::with_capacity(ids.len());
        let (mut p, mut i, mut image) = (start, 0, 0);
        while i < ids.len() {
            if ids[i] != self.image_token_id {
                out.push([p; 3]);
                p += 1;
                i += 1;
                continue;
            }
            let Some(&(h, w)) = grids.get(image) else {
                return Err(RuntimeError::Request(format!("image tokens past the {} images' grids", grids.len())));
            };
            let (rows, cols) = (h / m, w / m);
            if i + rows * cols > ids.len() || ids[i..i + rows * cols].iter().any(|&t| t != self.image_token_id) {
                return Err(RuntimeError::Request(format!(
                    "image {} needs {} consecutive image tokens",
                    image + 1,
                    rows * cols
                )));
            }
            for r in 0..rows {
                for c in 0..cols {
                    out.push([p, p + r as u32, p + c as u32]);
                }
            }
            p += rows.max(cols) as u32;
            i += rows * cols;
            image += 1;
        }
        Ok((out, p))
    }
}
