//! Attention (`shaders/attention.wgsl`, `merge.wgsl`, `kvcache.wgsl`): flash-style prefill,
//! split-k decode with a log-sum-exp merge, attention through a paged KV cache, and cascade
//! (shared-prefix) attention for many branches of one prompt.
//!
//! Every call reads K/V through a [`PageTable`]; contiguous K/V is one page per sequence
//! ([`PageTable::contiguous`]). Which pages a sequence holds is the caller's policy (flint's
//! runtime allocates, forks and frees them in `flint_runtime::kvpool`); the kernels take a
//! layer's [`KvCache`] and the page table.

use flint_gpu::{Caps, DType, Device, GpuError, PipelineKey, Recorder, Result, Tensor};
use flint_ref::attention::{AttnParams, Mask, SeqSpec};

use crate::{
    FLOATS, Needs, Variant, check_tensor, fixed_subgroup, needs_for, param_err, registry, require, typed_key, u32_of,
};

/// Head sizes the kernels take: multiples of 4 up to this.
pub const MAX_HEAD_DIM: usize = 256;
/// Keys per tile of the online softmax (the kernels hold a tile's scores in a vec4).
const KEYS_PER_TILE: u32 = 4;
/// Lanes of a unit on adapters without a fixed subgroup size (sums go through workgroup memory).
const EMULATED_LANES: u32 = 8;
/// Rows-per-unit choices of the `attend` layout.
const ROWS_PER_UNIT: [u32; 3] = [1, 2, 4];
/// Shortest split worth a workgroup of its own.
const MIN_SPLIT: usize = 256;
const MERGE_WG: u32 = 64;
const APPEND_WG: u32 = 64;

/// A paged K/V pool: `k` and `v` are `[num_pages, page_size, n_kv_heads, head_dim]` (often
/// views of one layer's region in a larger buffer).
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
    /// Slots per page.
    pub page_size: usize,
    /// Pages in the pool.
    pub num_pages: usize,
}

/// Per-sequence lists of pages, validated against the pool size and uploaded as u32
/// `[rows, max_pages]`.
#[derive(Clone, Debug)]
pub struct PageTable {
    tensor: Tensor,
    lens: Vec<usize>,
    max_pages: usize,
    num_pages: usize,
}

impl PageTable {
    /// Upload `rows` (one list of page indices per sequence). Every index must be below
    /// `num_pages`, the size of the pool the table will be used with.
    pub fn new(dev: &Device, rows: &[Vec<u32>], num_pages: usize) -> Result<PageTable> {
        if rows.is_empty() {
            return Err(GpuError::Shape { what: "page table".into(), message: "no sequences".into() });
        }
        for (s, row) in rows.iter().enumerate() {
            if let Some((i, &bad)) = row.iter().enumerate().find(|(_, p)| **p as usize >= num_pages) {
                return Err(GpuError::Shape {
                    what: "page table".into(),
                    message: format!("sequence {s} entry {i} is page {bad}, past the pool's {num_pages} pages"),
                });
            }
        }
        let max_pages = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; rows.len() * max_pages];
        for (s, row) in rows.iter().enumerate() {
            flat[s * max_pages..][..row.len()].copy_from_slice(row);
        }
        let tensor = dev.upload_u32("page table", &flat, &[rows.len(), max_pages])?;
        Ok(PageTable { tensor, lens: rows.iter().map(Vec::len).collect(), max_pages, num_pages })
    }

    /// A table over `tensor` (u32 `[rows, width]`) whose contents the caller writes, such as a
    /// view of a decode plan's per-step block: every row may list up to `width` pages of a pool
    /// of `num_pages` (the caller keeps the entries below it).
    pub fn over(tensor: Tensor, rows: usize, width: usize, num_pages: usize) -> Result<PageTable> {
        if rows == 0 || width == 0 {
            return Err(GpuError::Shape {
                what: "page table".into(),
                message: format!("{rows} rows of {width} pages"),
            });
        }
        check_tensor("page table", "entries", &tensor, rows * width, &[DType::U32])?;
        Ok(PageTable { tensor, lens: vec![width; rows], max_pages: width, num_pages })
    }

    /// A table for `seqs` sequences whose K/V are contiguous in pages `0..seqs` of a pool whose
    /// page size is the longest sequence: sequence `s` is page `s`.
    pub fn contiguous(dev: &Device, seqs: usize) -> Result<PageTable> {
        let rows: Vec<Vec<u32>> = (0..seqs as u32).map(|s| vec![s]).collect();
        PageTable::new(dev, &rows, seqs)
    }

    /// Sequences (rows).
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Columns of the uploaded table (the longest row).
    pub fn max_pages(&self) -> usize {
        self.max_pages
    }

    /// Pages listed for sequence `s`.
    pub fn pages_of(&self, s: usize) -> usize {
        self.lens.get(s).copied().unwrap_or(0)
    }

    /// The uploaded table.
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
}

/// How one attention call is run; [`plan`] picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnConfig {
    /// Lanes per workgroup: the subgroup size, or 8 (emulated through workgroup memory) without subgroups.
    pub lanes: u32,
    /// Whether lanes sum with subgroup operations (else through workgroup memory).
    pub subgroups: bool,
    /// Rows per lane when lanes own whole rows (`attend_rows`); 0 when lanes own head-dim
    /// chunks of `rows_per_unit` rows (`attend`).
    pub rows_per_lane: u32,
    /// Query rows per unit.
    pub rows_per_unit: u32,
    /// Key splits (1: no merge pass).
    pub splits: u32,
    /// Keys per split of the longest sequence (the kernel splits each sequence's own keys into
    /// `splits` runs of whole tiles).
    pub split_size: u32,
    /// Keys per split when fixed ([`decode_plan`]; 0: `split_size`'s rule).
    pub split_len: u32,
}

/// Keys per split of decode attention ([`decode_plan`]).
pub const DECODE_SPLIT: usize = 256;

/// The plan of a decode step's attention over rows whose longest has `kv_max` keys: splits of
/// [`DECODE_SPLIT`] keys, as many as the longest needs, so that a row's keys split the same way
/// whatever rows it is decoded with; with `whole_rows`, lanes own whole rows wherever subgroups
/// allow it, whatever the number of rows (the cascade prefix pass, whose rows are the
/// branches). A decode step's rows are then computed the same way in any batch.
pub fn decode_plan(caps: &Caps, p: &AttnParams, kv_max: usize, whole_rows: bool) -> AttnConfig {
    let specs = [SeqSpec { kv_len: 1, q_pos0: 0 }];
    let mut cfg = plan(caps, &AttnParams { seqs: 1, ..*p }, &specs, Some(1));
    if whole_rows && cfg.subgroups && cfg.rows_per_lane == 0 {
        cfg.rows_per_lane = 1;
        cfg.rows_per_unit = cfg.lanes;
    }
    cfg.splits = u32_of(kv_max.max(1).div_ceil(DECODE_SPLIT));
    cfg.split_size = u32_of(DECODE_SPLIT);
    cfg.split_len = u32_of(DECODE_SPLIT);
    cfg
}

/// Pick lanes per unit, rows per unit and the key split for `p` on `caps`. `splits` forces a
/// split count (rounded to what the longest sequence allows).
pub fn plan(caps: &Caps, p: &AttnParams, seqs: &[SeqSpec], splits: Option<usize>) -> AttnConfig {
    let (lanes, subgroups) = match fixed_subgroup(caps) {
        Some(sg) => (sg, true),
        None => (EMULATED_LANES, false),
    };
    let rows = p.q_len * p.group();
    // Many rows and subgroups: lanes own whole rows (RL each), so the softmax runs lane-parallel.
    // A lane holds RL x head_dim/4 vec4s of Q and of O: up to 4 rows at head_dim 64, 2 at 128, 1
    // above. RL is the one that pads the fewest rows, the largest of those (48 rows on 8 lanes:
    // RL 3 ran the cascade prefix in 1.47 ms, RL 4 in 1.68 ms with its second unit half empty).
    let rows_per_lane = if subgroups && rows >= lanes as usize {
        let max_rl = if p.head_dim <= 64 {
            4
        } else if p.head_dim <= 128 {
            2
        } else {
            1
        };
        (1..=max_rl).rev().min_by_key(|&rl| rows.div_ceil(lanes as usize * rl) * rl).unwrap_or(1) as u32
    } else {
        0
    };
    let rows_per_unit = if rows_per_lane > 0 {
        lanes * rows_per_lane
    } else {
        // Lanes own head-dim chunks for RQ rows: keep RQ x (chunks a lane holds) at 32 or less
        // (head_dim 256 on 8 lanes with 16 rows took LLVM 50 s to compile on lavapipe), and RQ at
        // 4: loops over more rows were not unrolled on lavapipe and ran from scratch memory.
        let chunks = (p.head_dim / 4).div_ceil(lanes as usize).max(1);
        let cap = ROWS_PER_UNIT.iter().copied().rev().find(|&r| r as usize * chunks <= 32).unwrap_or(1).min(4);
        ROWS_PER_UNIT.iter().copied().find(|&r| r as usize >= rows).unwrap_or(4).min(cap)
    };
    let units = rows.div_ceil(rows_per_unit as usize);
    let kv_max = seqs.iter().map(|s| s.kv_len).max().unwrap_or(0).max(1);
    let parallel = units * p.n_kv_heads * p.seqs;
    let target = if caps.device_type == "cpu" { 16 } else { 256 };
    let wanted = splits.unwrap_or(if parallel >= target {
        1
    } else {
        target.div_ceil(parallel).min(kv_max.div_ceil(MIN_SPLIT))
    });
    let wanted = wanted.clamp(1, kv_max);
    let t = KEYS_PER_TILE as usize;
    let split_size = kv_max.div_ceil(wanted).div_ceil(t) * t;
    AttnConfig {
        lanes,
        subgroups,
        rows_per_lane,
        rows_per_unit,
        splits: u32_of(kv_max.div_ceil(split_size)),
        split_size: u32_of(split_size),
        split_len: 0,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnUniform {
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    q_len: u32,
    seqs: u32,
    page_size: u32,
    max_pages: u32,
    mask_mode: u32,
    window: u32,
    splits: u32,
    split_slot: u32,
    mask_stride: u32,
    units: u32,
    scale_log2: f32,
    split_len: u32,
    pad: u32,
}

fn attend_key(q: DType, kv: DType, o: DType, head_dim: usize, cfg: &AttnConfig, mask: bool) -> PipelineKey {
    let entry = if cfg.rows_per_lane > 0 { "attend_rows" } else { "attend" };
    let dv = head_dim as u32 / 4;
    let key = typed_key("attention.wgsl", entry, cfg.lanes, &[("TQ", q), ("TKV", kv), ("TO", o)])
        .define("D", head_dim)
        .define("DV", dv)
        .define("DC", dv.div_ceil(cfg.lanes))
        .define("SG", cfg.lanes)
        .flag("SUBGROUPS", cfg.subgroups)
        .flag("MASK", mask);
    if cfg.rows_per_lane > 0 {
        key.flag("ATTEND_ROWS", true).define("RL", cfg.rows_per_lane)
    } else {
        key.flag("ATTEND_DIMS", true).define("RQ", cfg.rows_per_unit)
    }
}

fn merge_key(input: DType, out: DType) -> PipelineKey {
    typed_key("merge.wgsl", "merge", MERGE_WG, &[("TI", input), ("TO", out)])
}

fn append_key(src: DType, kv: DType) -> PipelineKey {
    typed_key("kvcache.wgsl", "append", APPEND_WG, &[("TS", src), ("TKV", kv)])
}

/// Every attention-family variant: the attend kernel over head sizes, rows per unit, with and
/// without subgroups and additive masks, for all-f32, all-f16 and f32 with an f16 cache; the
/// merge and append kernels.
pub fn variants() -> Vec<Variant> {
    let types = [
        (DType::F32, DType::F32, DType::F32),
        (DType::F16, DType::F16, DType::F16),
        (DType::F32, DType::F16, DType::F32),
    ];
    let mut out = Vec::new();
    for (q, kv, o) in types {
        for d in [64usize, 72, 128, 256] {
            for (lanes, subgroups) in [(EMULATED_LANES, false), (8, true), (32, true)] {
                for mask in [false, true] {
                    let sg = if subgroups { format!("sg{lanes}") } else { format!("wg{lanes}") };
                    let m = if mask { " mask" } else { "" };
                    let mut configs: Vec<(String, AttnConfig)> = [1, 2, 4]
                        .map(|rq| {
                            let cfg = AttnConfig {
                                lanes,
                                subgroups,
                                rows_per_lane: 0,
                                rows_per_unit: rq,
                                splits: 1,
                                split_size: 1,
                                split_len: 0,
                            };
                            (format!("attention/attend {q}x{kv}->{o} d{d} {sg} rq{rq}{m}"), cfg)
                        })
                        .to_vec();
                    if subgroups {
                        let max_rl = if d <= 64 {
                            4
                        } else if d <= 128 {
                            2
                        } else {
                            1
                        };
                        for rl in 1..=max_rl {
                            let cfg = AttnConfig {
                                lanes,
                                subgroups,
                                rows_per_lane: rl,
                                rows_per_unit: lanes * rl,
                                splits: 1,
                                split_size: 1,
                                split_len: 0,
                            };
                            configs.push((format!("attention/attend_rows {q}x{kv}->{o} d{d} {sg} rl{rl}{m}"), cfg));
                        }
                    }
                    for (name, cfg) in configs {
                        out.push(Variant {
                            name,
                            key: attend_key(q, kv, o, d, &cfg, mask),
                            needs: needs_for(&[q, kv, o], subgroups),
                        });
                    }
                }
            }
        }
    }
    for (i, o) in [(DType::F32, DType::F32), (DType::F32, DType::F16)] {
        out.push(Variant {
            name: format!("attention/merge {i}->{o}"),
            key: merge_key(i, o),
            needs: needs_for(&[i, o], false),
        });
    }
    for (s, kv) in [(DType::F32, DType::F32), (DType::F16, DType::F16), (DType::F32, DType::F16)] {
        out.push(Variant {
            name: format!("attention/append {s}->{kv}"),
            key: append_key(s, kv),
            needs: needs_for(&[s, kv], false),
        });
    }
    out
}

fn shape_err(what: &str, message: String) -> GpuError {
    GpuError::Shape { what: what.into(), message }
}

/// Checks shared by every attention entry point, before anything is recorded.
fn check_attention(
    dev: &Device,
    p: &AttnParams,
    seqs: &[SeqSpec],
    q: &Tensor,
    kv: &KvCache,
    table: &PageTable,
    mask: Option<&Tensor>,
) -> Result<()> {
    p.validate(seqs).map_err(param_err)?;
    if !p.head_dim.is_multiple_of(4) || p.head_dim > MAX_HEAD_DIM {
        return Err(GpuError::Unsupported {
            adapter: dev.caps().short_label(),
            feature: "head_dim",
            what: format!("attention with head_dim {}: kernels take multiples of 4 up to {MAX_HEAD_DIM}", p.head_dim),
        });
    }
    check_tensor("attention", "q", q, p.q_numel(), FLOATS)?;
    let pool = kv.num_pages * kv.page_size * p.n_kv_heads * p.head_dim;
    check_tensor("attention", "k pool", &kv.k, pool, FLOATS)?;
    check_tensor("attention", "v pool", &kv.v, pool, &[kv.k.dtype()])?;
    if kv.page_size == 0 {
        return Err(shape_err("attention", "page size 0".into()));
    }
    if table.rows() != p.seqs {
        return Err(shape_err("attention", format!("page table has {} rows for {} sequences", table.rows(), p.seqs)));
    }
    if table.num_pages > kv.num_pages {
        return Err(shape_err(
            "attention",
            format!("page table was checked against {} pages but the pool has {}", table.num_pages, kv.num_pages),
        ));
    }
    for (s, spec) in seqs.iter().enumerate() {
        let cap = table.pages_of(s) * kv.page_size;
        if spec.kv_len > cap {
            return Err(shape_err(
                "attention",
                format!("sequence {s} has {} keys but its {} pages hold {cap}", spec.kv_len, table.pages_of(s)),
            ));
        }
    }
    match (p.additive_mask, mask) {
        (true, Some(m)) => check_tensor("attention", "mask", m, p.q_len * p.mask_stride, &[DType::F32])?,
        (false, None) => {}
        (true, None) => {
            return Err(shape_err("attention", "params ask for an additive mask but none was given".into()));
        }
        (false, Some(_)) => {
            return Err(shape_err("attention", "a mask was given but params have additive_mask = false".into()));
        }
    }
    Ok(())
}

/// Record attention of `q` `[seqs, q_len, n_heads, head_dim]` against the paged cache into
/// `out` (same shape), splitting keys across workgroups and merging when that helps.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    seqs: &[SeqSpec],
    q: &Tensor,
    kv: &KvCache,
    table: &PageTable,
    mask: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    attention_with(dev, rec, p, seqs, q, kv, table, mask, out, None)
}

/// [`attention`] with a forced number of key splits.
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    seqs: &[SeqSpec],
    q: &Tensor,
    kv: &KvCache,
    table: &PageTable,
    mask: Option<&Tensor>,
    out: &Tensor,
    splits: Option<usize>,
) -> Result<()> {
    check_attention(dev, p, seqs, q, kv, table, mask)?;
    let cfg = plan(dev.caps(), p, seqs, splits);
    let info = seq_info(dev, seqs)?;
    attention_planned(dev, rec, p, &cfg, q, kv, table, &info, mask, out)
}

/// The per-sequence key counts and first query positions the kernels read: u32 `[seqs, 2]`.
pub fn seq_info(dev: &Device, seqs: &[SeqSpec]) -> Result<Tensor> {
    let info: Vec<u32> = seqs.iter().flat_map(|s| [u32_of(s.kv_len), u32_of(s.q_pos0)]).collect();
    dev.upload_u32("attention sequences", &info, &[seqs.len(), 2])
}

/// [`attention`] with the plan (`cfg`, from [`plan`]) and the sequences' lengths (`info`, as
/// [`seq_info`] lays them out) given: what a decode plan records once and replays with new
/// lengths written into `info`. The lengths are the caller's to check against the table.
#[allow(clippy::too_many_arguments)]
pub fn attention_planned(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    cfg: &AttnConfig,
    q: &Tensor,
    kv: &KvCache,
    table: &PageTable,
    info: &Tensor,
    mask: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    check_tensor("attention", "out", out, p.q_numel(), FLOATS)?;
    check_tensor("attention", "sequence info", info, p.seqs * 2, &[DType::U32])?;
    let rows = p.seqs * p.q_len * p.n_heads;
    if cfg.splits <= 1 {
        let lse = dev.empty("attention lse", &[rows], DType::F32)?;
        return record_attend(dev, rec, p, q, kv, table, info, mask, cfg, 0, out, &lse);
    }
    let parts = dev.empty("attention partial outputs", &[cfg.splits as usize * p.q_numel()], DType::F32)?;
    let lse = dev.empty("attention partial lse", &[cfg.splits as usize * rows], DType::F32)?;
    record_attend(dev, rec, p, q, kv, table, info, mask, cfg, 0, &parts, &lse)?;
    let lse_out = dev.empty("attention lse", &[rows], DType::F32)?;
    merge_states(dev, rec, rows, cfg.splits as usize, p.head_dim, &parts, &lse, out, &lse_out)
}

/// Record the attend kernel writing split states `slot .. slot + cfg.splits` of `parts` (rows
/// normalised within their split) and `lse`.
#[allow(clippy::too_many_arguments)]
fn record_attend(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    q: &Tensor,
    kv: &KvCache,
    table: &PageTable,
    info: &Tensor,
    mask: Option<&Tensor>,
    cfg: &AttnConfig,
    slot: u32,
    parts: &Tensor,
    lse: &Tensor,
) -> Result<()> {
    let needs = needs_for(&[q.dtype(), kv.k.dtype(), parts.dtype()], cfg.subgroups);
    require(dev, needs, "attention")?;
    let kernel =
        dev.kernel(registry(), &attend_key(q.dtype(), kv.k.dtype(), parts.dtype(), p.head_dim, cfg, mask.is_some()))?;
    let rows = p.q_len * p.group();
    let units = rows.div_ceil(cfg.rows_per_unit as usize);
    let (mask_mode, window) = match p.mask {
        Mask::None => (0, 0),
        Mask::Causal => (1, 0),
        Mask::SlidingWindow(w) => (2, w),
    };
    let uniform = AttnUniform {
        n_heads: u32_of(p.n_heads),
        n_kv_heads: u32_of(p.n_kv_heads),
        group: u32_of(p.group()),
        q_len: u32_of(p.q_len),
        seqs: u32_of(p.seqs),
        page_size: u32_of(kv.page_size),
        max_pages: u32_of(table.max_pages),
        mask_mode,
        window: u32_of(window),
        splits: cfg.splits,
        split_slot: slot,
        mask_stride: u32_of(p.mask_stride),
        units: u32_of(units),
        scale_log2: p.scale * std::f32::consts::LOG2_E,
        split_len: cfg.split_len,
        pad: 0,
    };
    let groups = [u32_of(units * p.n_kv_heads), cfg.splits, u32_of(p.seqs)];
    let mut tensors = vec![q, &kv.k, &kv.v, table.tensor(), info, parts, lse];
    if let Some(m) = mask {
        tensors.push(m);
    }
    let label = format!(
        "attention {}x{} splits{} h{}/{} d{}",
        p.seqs, p.q_len, cfg.splits, p.n_heads, p.n_kv_heads, p.head_dim
    );
    rec.dispatch(&label, &kernel, &uniform, &tensors, groups)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MergeUniform {
    rows: u32,
    splits: u32,
    dv: u32,
    pad: u32,
}

/// Record the merge of `splits` attention states: `parts` `[splits, rows, head_dim]` (f32, each
/// row normalised within its state) and `lse` `[splits, rows]` into `out` `[rows, head_dim]`
/// and `lse_out` `[rows]`.
#[allow(clippy::too_many_arguments)]
pub fn merge_states(
    dev: &Device,
    rec: &mut Recorder,
    rows: usize,
    splits: usize,
    head_dim: usize,
    parts: &Tensor,
    lse: &Tensor,
    out: &Tensor,
    lse_out: &Tensor,
) -> Result<()> {
    if splits == 0 || rows == 0 || !head_dim.is_multiple_of(4) {
        return Err(shape_err("merge", format!("{splits} states of {rows} rows of {head_dim} (a multiple of 4)")));
    }
    check_tensor("merge", "parts", parts, splits * rows * head_dim, &[DType::F32])?;
    check_tensor("merge", "lse", lse, splits * rows, &[DType::F32])?;
    check_tensor("merge", "out", out, rows * head_dim, FLOATS)?;
    check_tensor("merge", "lse_out", lse_out, rows, &[DType::F32])?;
    require(dev, needs_for(&[out.dtype()], false), "merge")?;
    let kernel = dev.kernel(registry(), &merge_key(DType::F32, out.dtype()))?;
    let dv = head_dim / 4;
    let uniform = MergeUniform { rows: u32_of(rows), splits: u32_of(splits), dv: u32_of(dv), pad: 0 };
    rec.dispatch(
        &format!("merge {splits}x{rows}"),
        &kernel,
        &uniform,
        &[parts, lse, out, lse_out],
        dev.grid(u32_of(rows * dv).div_ceil(MERGE_WG)),
    )
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AppendUniform {
    tokens: u32,
    n_kv_heads: u32,
    dv: u32,
    page_size: u32,
    max_pages: u32,
    pad: [u32; 3],
}

/// Record writing `k` and `v` `[tokens, n_kv_heads, head_dim]` into the pool: token `t` goes to
/// row `dest[t].0` of `table` at position `dest[t].1`. Positions must lie within the pages the
/// table lists (checked here).
#[allow(clippy::too_many_arguments)]
pub fn append_kv(
    dev: &Device,
    rec: &mut Recorder,
    n_kv_heads: usize,
    head_dim: usize,
    k: &Tensor,
    v: &Tensor,
    dest: &[(usize, usize)],
    kv: &KvCache,
    table: &PageTable,
) -> Result<()> {
    let tokens = dest.len();
    if tokens == 0 || !head_dim.is_multiple_of(4) || n_kv_heads == 0 {
        return Err(shape_err(
            "append_kv",
            format!("{tokens} tokens, {n_kv_heads} heads of {head_dim} (a multiple of 4)"),
        ));
    }
    let row = n_kv_heads * head_dim;
    check_tensor("append_kv", "k", k, tokens * row, FLOATS)?;
    check_tensor("append_kv", "v", v, tokens * row, &[k.dtype()])?;
    let pool = kv.num_pages * kv.page_size * row;
    check_tensor("append_kv", "k pool", &kv.k, pool, FLOATS)?;
    check_tensor("append_kv", "v pool", &kv.v, pool, &[kv.k.dtype()])?;
    for (t, &(s, pos)) in dest.iter().enumerate() {
        if s >= table.rows() || pos >= table.pages_of(s) * kv.page_size {
            return Err(shape_err(
                "append_kv",
                format!("token {t} goes to sequence {s} position {pos}, outside the pages its table row lists"),
            ));
        }
    }
    require(dev, needs_for(&[k.dtype(), kv.k.dtype()], false), "append_kv")?;
    let kernel = dev.kernel(registry(), &append_key(k.dtype(), kv.k.dtype()))?;
    let flat: Vec<u32> = dest.iter().flat_map(|&(s, pos)| [u32_of(s), u32_of(pos)]).collect();
    let dest_t = dev.upload_u32("append destinations", &flat, &[tokens, 2])?;
    let uniform = AppendUniform {
        tokens: u32_of(tokens),
        n_kv_heads: u32_of(n_kv_heads),
        dv: u32_of(head_dim / 4),
        page_size: u32_of(kv.page_size),
        max_pages: u32_of(table.max_pages),
        pad: [0; 3],
    };
    rec.dispatch(
        &format!("append_kv {tokens}"),
        &kernel,
        &uniform,
        &[k, v, &dest_t, table.tensor(), &kv.k, &kv.v],
        dev.grid(u32_of(tokens * row / 4).div_ceil(APPEND_WG)),
    )
}

/// Record cascade attention: `q` `[branches, n_heads, head_dim]` (one query per branch) attends
/// to a shared prefix (row 0 of `prefix`, `prefix_len` keys) and to each branch's own suffix
/// (row b of `suffixes`, `suffix_lens[b]` keys). The prefix pass treats all branches' rows as
/// one matrix against the prefix, so the prefix K/V is read once per unit of rows rather than
/// once per branch; the two states merge exactly by their log-sum-exp. `p.seqs` is the branch
/// count and `p.q_len` must be 1; no mask applies (every key precedes every query).
#[allow(clippy::too_many_arguments)]
pub fn cascade(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    q: &Tensor,
    kv: &KvCache,
    prefix: &PageTable,
    prefix_len: usize,
    suffixes: &PageTable,
    suffix_lens: &[usize],
    out: &Tensor,
) -> Result<()> {
    if p.q_len != 1 || p.mask != Mask::None || p.additive_mask {
        return Err(shape_err("cascade", "one query per branch and no mask (all keys precede the queries)".into()));
    }
    if suffix_lens.len() != p.seqs {
        return Err(shape_err("cascade", format!("{} suffix lengths for {} branches", suffix_lens.len(), p.seqs)));
    }
    let branches = p.seqs;
    // Prefix pass: one sequence whose "tokens" are the branches.
    let pre = AttnParams { seqs: 1, q_len: branches, ..*p };
    let pre_seqs = [SeqSpec { kv_len: prefix_len, q_pos0: 0 }];
    check_attention(dev, &pre, &pre_seqs, q, kv, prefix, None)?;
    let suf_seqs: Vec<SeqSpec> = suffix_lens.iter().map(|&l| SeqSpec { kv_len: l, q_pos0: 0 }).collect();
    check_attention(dev, p, &suf_seqs, q, kv, suffixes, None)?;
    let cfgs = cascade_plan(dev.caps(), p, prefix_len, suffix_lens);
    let (pre_info, suf_info) = (seq_info(dev, &pre_seqs)?, seq_info(dev, &suf_seqs)?);
    cascade_planned(dev, rec, p, cfgs, q, kv, (prefix, &pre_info), (suffixes, &suf_info), out)
}

/// The plans of the prefix and suffix passes of [`cascade`].
pub fn cascade_plan(caps: &Caps, p: &AttnParams, prefix_len: usize, suffix_lens: &[usize]) -> (AttnConfig, AttnConfig) {
    let pre = AttnParams { seqs: 1, q_len: p.seqs, ..*p };
    let suf_seqs: Vec<SeqSpec> = suffix_lens.iter().map(|&l| SeqSpec { kv_len: l, q_pos0: 0 }).collect();
    (plan(caps, &pre, &[SeqSpec { kv_len: prefix_len, q_pos0: 0 }], None), plan(caps, p, &suf_seqs, None))
}

/// [`cascade`] with the plans ([`cascade_plan`]) and the lengths given as tensors (the prefix's
/// `[1, 2]` and the suffixes' `[branches, 2]`, laid out as [`seq_info`] does), for plans that
/// are recorded once and replayed.
#[allow(clippy::too_many_arguments)]
pub fn cascade_planned(
    dev: &Device,
    rec: &mut Recorder,
    p: &AttnParams,
    (pre_cfg, suf_cfg): (AttnConfig, AttnConfig),
    q: &Tensor,
    kv: &KvCache,
    (prefix, pre_info): (&PageTable, &Tensor),
    (suffixes, suf_info): (&PageTable, &Tensor),
    out: &Tensor,
) -> Result<()> {
    if p.q_len != 1 || p.mask != Mask::None || p.additive_mask {
        return Err(shape_err("cascade", "one query per branch and no mask (all keys precede the queries)".into()));
    }
    check_tensor("cascade", "out", out, p.q_numel(), FLOATS)?;
    check_tensor("cascade", "prefix info", pre_info, 2, &[DType::U32])?;
    check_tensor("cascade", "suffix info", suf_info, p.seqs * 2, &[DType::U32])?;
    let pre = AttnParams { seqs: 1, q_len: p.seqs, ..*p };
    let states = (pre_cfg.splits + suf_cfg.splits) as usize;
    let rows = p.seqs * p.n_heads;
    let parts = dev.empty("cascade partial outputs", &[states * p.q_numel()], DType::F32)?;
    let lse = dev.empty("cascade partial lse", &[states * rows], DType::F32)?;
    // Both passes lay rows out as (state, branch, head), so they share one buffer.
    record_attend(dev, rec, &pre, q, kv, prefix, pre_info, None, &pre_cfg, 0, &parts, &lse)?;
    record_attend(dev, rec, p, q, kv, suffixes, suf_info, None, &suf_cfg, pre_cfg.splits, &parts, &lse)?;
    let lse_out = dev.empty("cascade lse", &[rows], DType::F32)?;
    merge_states(dev, rec, rows, states, p.head_dim, &parts, &lse, out, &lse_out)
}

/// The needs of attention in `dtypes` on `caps` (f16, and subgroups when the plan uses them).
pub fn needs(caps: &Caps, dtypes: &[DType]) -> Needs {
    needs_for(dtypes, fixed_subgroup(caps).is_some())
}
