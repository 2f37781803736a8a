//! Attention cases: prefill and decode over contiguous and paged (shuffled) caches, every mask,
//! GQA ratios 1, 3 and 4:1, head sizes 64/72/128/256, forced key splits, cascade with shared
//! prefixes, and the state merge. Pool slots no sequence owns hold NaN, so a read outside a
//! sequence's keys shows up as a failure; and in the `_nan` cases one key holds NaN in K and V,
//! seen by the rows the causal or window mask lets see it, or by none (an additive mask of -inf):
//! a masked key is absent, so no other row may turn NaN (no 0 x NaN).

use flint_gpu::{Caps, DType, Device, Recorder, Tensor};
use flint_kernels::attention::{self, KvCache, PageTable};
use flint_ref::ParamError;
use flint_ref::attention::{AttnParams, Mask, SeqSpec};

use crate::cases::{F16_TOL, F32_TOL};
use crate::{Case, Input, Rng, Tier, Tolerance};

/// Where the sequences' keys live in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One page per sequence, as long as the longest sequence.
    Contiguous,
    /// Pages of `page_size` slots handed out in a shuffled order.
    Paged {
        /// Slots per page.
        page_size: usize,
    },
    /// Every sequence starts with the same `prefix_len` keys held once in shared pages
    /// (`prefix_len` a multiple of `page_size`), then its own pages.
    SharedPrefix {
        /// Slots per page.
        page_size: usize,
        /// Shared keys.
        prefix_len: usize,
    },
}

/// Host-side pool contents: per-sequence page lists and K/V of every sequence.
struct Pool {
    page_size: usize,
    num_pages: usize,
    rows: Vec<Vec<u32>>,
    k_pool: Vec<f32>,
    v_pool: Vec<f32>,
    k_seq: Vec<Vec<f32>>,
    v_seq: Vec<Vec<f32>>,
}

/// Lay out per-sequence K/V (`[kv_len, kv_heads, d]` each) into pages; unused slots are NaN.
fn build_pool(rng: &mut Rng, lens: &[usize], row: usize, layout: Layout, dtype: DType) -> Pool {
    let (page_size, prefix_len) = match layout {
        Layout::Contiguous => (lens.iter().copied().max().unwrap_or(1).max(1), 0),
        Layout::Paged { page_size } => (page_size, 0),
        Layout::SharedPrefix { page_size, prefix_len } => (page_size, prefix_len),
    };
    let prefix_pages = prefix_len / page_size;
    let own: Vec<usize> = lens.iter().map(|&l| (l - prefix_len).div_ceil(page_size)).collect();
    let num_pages = prefix_pages + own.iter().sum::<usize>() + 2;
    let mut order: Vec<u32> = (0..num_pages as u32).collect();
    if layout != Layout::Contiguous {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u32 + 1) as usize);
        }
    }
    let mut next = order.into_iter();
    let prefix: Vec<u32> = next.by_ref().take(prefix_pages).collect();
    let rows: Vec<Vec<u32>> =
        own.iter().map(|&n| prefix.iter().copied().chain(next.by_ref().take(n)).collect()).collect();
    let round = |v: Vec<f32>| crate::round_to(v, dtype);
    let shared_k = round(rng.vec(prefix_len * row, -1.0, 1.0));
    let shared_v = round(rng.vec(prefix_len * row, -1.0, 1.0));
    let mut k_pool = vec![f32::NAN; num_pages * page_size * row];
    let mut v_pool = k_pool.clone();
    let mut k_seq = Vec::new();
    let mut v_seq = Vec::new();
    for (s, &len) in lens.iter().enumerate() {
        let mut k = shared_k.clone();
        let mut v = shared_v.clone();
        k.extend(round(rng.vec((len - prefix_len) * row, -1.0, 1.0)));
        v.extend(round(rng.vec((len - prefix_len) * row, -1.0, 1.0)));
        for j in 0..len {
            let slot = rows[s][j / page_size] as usize * page_size + j % page_size;
            k_pool[slot * row..][..row].copy_from_slice(&k[j * row..][..row]);
            v_pool[slot * row..][..row].copy_from_slice(&v[j * row..][..row]);
        }
        k_seq.push(k);
        v_seq.push(v);
    }
    Pool { page_size, num_pages, rows, k_pool, v_pool, k_seq, v_seq }
}

fn tol(dtype: DType) -> Tolerance {
    if dtype == DType::F16 { F16_TOL } else { F32_TOL }
}

fn f16_reason(caps: &Caps, dtypes: &[DType]) -> Option<String> {
    (dtypes.contains(&DType::F16) && !caps.f16).then(|| "adapter lacks SHADER_F16".to_string())
}

fn type_name(q: DType, kv: DType) -> String {
    if q == kv { q.name().into() } else { format!("{q}x{kv}") }
}

/// An attention call against the reference.
pub struct AttnCase {
    /// Shape and mask.
    pub p: AttnParams,
    /// Per-sequence key counts and query positions.
    pub seqs: Vec<SeqSpec>,
    /// Q/O and K/V storage types.
    pub types: (DType, DType),
    /// Where keys live.
    pub layout: Layout,
    /// Forced key splits.
    pub splits: Option<usize>,
    /// Tier.
    pub tier: Tier,
    /// Name prefix (`prefill`, `decode`, ...).
    pub kind: &'static str,
    /// Launch one call per sequence instead of one call for all.
    pub independent: bool,
    /// This key of each sequence holds NaN (K and V); with an additive mask, that key's column
    /// is -inf for every query.
    pub poison: Option<usize>,
}

impl AttnCase {
    fn pool(&self) -> Pool {
        let mut rng = Rng::from_name(&format!("{} pool", self.name()));
        let lens: Vec<usize> = self.seqs.iter().map(|s| s.kv_len).collect();
        let row = self.p.n_kv_heads * self.p.head_dim;
        let mut pool = build_pool(&mut rng, &lens, row, self.layout, self.types.1);
        if let Some(j) = self.poison {
            for s in 0..lens.len() {
                let slot = pool.rows[s][j / pool.page_size] as usize * pool.page_size + j % pool.page_size;
                pool.k_pool[slot * row..][..row].fill(f32::NAN);
                pool.v_pool[slot * row..][..row].fill(f32::NAN);
                pool.k_seq[s][j * row..][..row].fill(f32::NAN);
                pool.v_seq[s][j * row..][..row].fill(f32::NAN);
            }
        }
        pool
    }
}

impl Case for AttnCase {
    fn name(&self) -> String {
        let p = &self.p;
        let kv: Vec<String> = self.seqs.iter().map(|s| s.kv_len.to_string()).collect();
        let layout = match self.layout {
            Layout::Contiguous => String::new(),
            Layout::Paged { page_size } => format!("_page{page_size}"),
            Layout::SharedPrefix { page_size, prefix_len } => format!("_page{page_size}_shared{prefix_len}"),
        };
        format!(
            "attn_{}{}_{}_{}_q{}_kv{}_h{}x{}_d{}{}{layout}{}",
            self.kind,
            if self.independent { "_each" } else { "" },
            p.mask.name(),
            type_name(self.types.0, self.types.1),
            p.q_len,
            if kv.len() > 4 { format!("{}x{}", kv.len(), kv[0]) } else { kv.join("-") },
            p.n_heads,
            p.n_kv_heads,
            p.head_dim,
            if p.additive_mask { "_addmask" } else { "" },
            self.splits.map(|s| format!("_split{s}")).unwrap_or_default()
        ) + &self.poison.map(|j| format!("_nan{j}")).unwrap_or_default()
    }
    fn op(&self) -> &'static str {
        "attention"
    }
    fn dtype(&self) -> String {
        type_name(self.types.0, self.types.1)
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn unsupported(&self, caps: &Caps) -> Option<String> {
        f16_reason(caps, &[self.types.0, self.types.1])
    }
    fn tolerance(&self) -> Tolerance {
        tol(self.types.0)
    }
    fn flops(&self) -> f64 {
        self.p.flops(&self.seqs)
    }
    fn bytes(&self) -> f64 {
        let prefix = match self.layout {
            Layout::SharedPrefix { prefix_len, .. } => prefix_len * (self.seqs.len() - 1),
            _ => 0,
        };
        // Shared keys count once.
        let shared = (2 * prefix * self.p.n_kv_heads * self.p.head_dim * self.types.1.size()) as f64;
        self.p.bytes(&self.seqs, self.types.0.size(), self.types.1.size()) - shared
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let pool = self.pool();
        let shape = [pool.num_pages, pool.page_size, self.p.n_kv_heads, self.p.head_dim];
        let mut v = vec![
            Input::float("q", &[self.p.q_numel()], self.types.0, rng.vec(self.p.q_numel(), -1.0, 1.0)),
            Input::float("k pool", &shape, self.types.1, pool.k_pool),
            Input::float("v pool", &shape, self.types.1, pool.v_pool),
        ];
        if self.p.additive_mask {
            let n = self.p.q_len * self.p.mask_stride;
            let mut mask = rng.vec(n, -3.0, 0.0);
            if let Some(j) = self.poison {
                for t in 0..self.p.q_len {
                    mask[t * self.p.mask_stride + j] = f32::NEG_INFINITY;
                }
            }
            v.push(Input::float("mask", &[n], DType::F32, mask));
        }
        v
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let pool = self.pool();
        flint_ref::attention::attention(
            &self.p,
            &self.seqs,
            inputs[0].f32s(),
            &pool.k_seq,
            &pool.v_seq,
            inputs.get(3).map(Input::f32s),
        )
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.seqs, self.p.q_len, self.p.n_heads, self.p.head_dim], self.types.0)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let pool = self.pool();
        let kv = KvCache { k: t[1].clone(), v: t[2].clone(), page_size: pool.page_size, num_pages: pool.num_pages };
        if !self.independent {
            let table = PageTable::new(dev, &pool.rows, pool.num_pages)?;
            return attention::attention_with(
                dev,
                rec,
                &self.p,
                &self.seqs,
                &t[0],
                &kv,
                &table,
                t.get(3),
                out,
                self.splits,
            );
        }
        // One call per sequence, each with its own page table, as a runtime without batching would.
        let p1 = AttnParams { seqs: 1, ..self.p };
        let bytes = (p1.q_numel() * self.types.0.size()) as u64;
        let shape = [1, p1.q_len, p1.n_heads, p1.head_dim];
        for (s, spec) in self.seqs.iter().enumerate() {
            let table = PageTable::new(dev, &pool.rows[s..=s], pool.num_pages)?;
            let q = t[0].view(s as u64 * bytes, &shape, self.types.0)?;
            let o = out.view(s as u64 * bytes, &shape, self.types.0)?;
            attention::attention_with(dev, rec, &p1, &[*spec], &q, &kv, &table, t.get(3), &o, self.splits)?;
        }
        Ok(())
    }
}

/// Cascade attention against the reference over each branch's concatenated prefix and suffix.
pub struct CascadeCase {
    /// Query heads, KV heads, head size.
    pub heads: (usize, usize, usize),
    /// Shared keys.
    pub prefix_len: usize,
    /// Each branch's own keys.
    pub suffix_lens: Vec<usize>,
    /// Slots per page.
    pub page_size: usize,
    /// Q/O and K/V storage types.
    pub types: (DType, DType),
    /// Tier.
    pub tier: Tier,
}

impl CascadeCase {
    fn params(&self) -> AttnParams {
        let (n_heads, n_kv_heads, head_dim) = self.heads;
        AttnParams {
            seqs: self.suffix_lens.len(),
            q_len: 1,
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            mask: Mask::None,
            additive_mask: false,
            mask_stride: 0,
        }
    }

    /// Prefix pages, each branch's suffix pages, and every branch's full K/V.
    fn pool(&self) -> (Pool, Vec<u32>) {
        let mut rng = Rng::from_name(&format!("{} pool", self.name()));
        let (_, kv_heads, d) = self.heads;
        // The prefix as sequence 0 of a paged pool, the suffixes as the next ones.
        let mut lens = vec![self.prefix_len];
        lens.extend(&self.suffix_lens);
        let pool = build_pool(&mut rng, &lens, kv_heads * d, Layout::Paged { page_size: self.page_size }, self.types.1);
        let prefix = pool.rows[0].clone();
        (pool, prefix)
    }
}

impl Case for CascadeCase {
    fn name(&self) -> String {
        let (h, kv, d) = self.heads;
        let n = self.suffix_lens.len();
        let suf = if n > 4 {
            format!("{}..{}", self.suffix_lens[0], self.suffix_lens[n - 1])
        } else {
            format!("{:?}", self.suffix_lens).replace([' ', '[', ']'], "").replace(',', "-")
        };
        format!(
            "cascade_{}_n{n}_prefix{}_suffix{suf}_h{h}x{kv}_d{d}_page{}",
            type_name(self.types.0, self.types.1),
            self.prefix_len,
            self.page_size
        )
    }
    fn op(&self) -> &'static str {
        "attention"
    }
    fn dtype(&self) -> String {
        type_name(self.types.0, self.types.1)
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn unsupported(&self, caps: &Caps) -> Option<String> {
        f16_reason(caps, &[self.types.0, self.types.1])
    }
    fn tolerance(&self) -> Tolerance {
        tol(self.types.0)
    }
    fn flops(&self) -> f64 {
        let seqs: Vec<SeqSpec> =
            self.suffix_lens.iter().map(|&l| SeqSpec { kv_len: self.prefix_len + l, q_pos0: 0 }).collect();
        self.params().flops(&seqs)
    }
    fn bytes(&self) -> f64 {
        let (_, kv, d) = self.heads;
        let keys = self.prefix_len + self.suffix_lens.iter().sum::<usize>();
        (2 * self.params().q_numel() * self.types.0.size() + 2 * keys * kv * d * self.types.1.size()) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let (pool, _) = self.pool();
        let (_, kv, d) = self.heads;
        let shape = [pool.num_pages, pool.page_size, kv, d];
        let n = self.params().q_numel();
        vec![
            Input::float("q", &[n], self.types.0, rng.vec(n, -1.0, 1.0)),
            Input::float("k pool", &shape, self.types.1, pool.k_pool),
            Input::float("v pool", &shape, self.types.1, pool.v_pool),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let (pool, _) = self.pool();
        let cat = |seq: &[Vec<f32>], b: usize| -> Vec<f32> { seq[0].iter().chain(&seq[b + 1]).copied().collect() };
        let n = self.suffix_lens.len();
        let k: Vec<Vec<f32>> = (0..n).map(|b| cat(&pool.k_seq, b)).collect();
        let v: Vec<Vec<f32>> = (0..n).map(|b| cat(&pool.v_seq, b)).collect();
        let seqs: Vec<SeqSpec> =
            self.suffix_lens.iter().map(|&l| SeqSpec { kv_len: self.prefix_len + l, q_pos0: 0 }).collect();
        flint_ref::attention::attention(&self.params(), &seqs, inputs[0].f32s(), &k, &v, None)
    }
    fn output(&self) -> (Vec<usize>, DType) {
        let (h, _, d) = self.heads;
        (vec![self.suffix_lens.len(), h, d], self.types.0)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let (pool, prefix) = self.pool();
        let prefix_table = PageTable::new(dev, &[prefix], pool.num_pages)?;
        let suffix_table = PageTable::new(dev, &pool.rows[1..], pool.num_pages)?;
        let kv = KvCache { k: t[1].clone(), v: t[2].clone(), page_size: pool.page_size, num_pages: pool.num_pages };
        attention::cascade(
            dev,
            rec,
            &self.params(),
            &t[0],
            &kv,
            &prefix_table,
            self.prefix_len,
            &suffix_table,
            &self.suffix_lens,
            out,
        )
    }
}

/// The merge of partial states against the reference.
pub struct MergeCase {
    /// States.
    pub splits: usize,
    /// Rows.
    pub rows: usize,
    /// Row length.
    pub dim: usize,
    /// Output type.
    pub out: DType,
}

impl Case for MergeCase {
    fn name(&self) -> String {
        format!("merge_{}_s{}_r{}_d{}", self.out, self.splits, self.rows, self.dim)
    }
    fn op(&self) -> &'static str {
        "attention"
    }
    fn dtype(&self) -> String {
        self.out.name().into()
    }
    fn unsupported(&self, caps: &Caps) -> Option<String> {
        f16_reason(caps, &[self.out])
    }
    fn tolerance(&self) -> Tolerance {
        tol(self.out)
    }
    fn flops(&self) -> f64 {
        (3 * self.splits * self.rows * self.dim) as f64
    }
    fn bytes(&self) -> f64 {
        ((self.splits + 1) * self.rows * self.dim * 4) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let mut lse = rng.vec(self.splits * self.rows, -20.0, 20.0);
        // One empty state (no visible keys) per row of the first split.
        for l in lse.iter_mut().take(self.rows.min(2)) {
            *l = -3.0e38;
        }
        let n = self.splits * self.rows * self.dim;
        vec![
            Input::float("parts", &[n], DType::F32, rng.vec(n, -2.0, 2.0)),
            Input::float("lse", &[self.splits * self.rows], DType::F32, lse),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::attention::merge_states(self.splits, self.rows, self.dim, inputs[0].f32s(), inputs[1].f32s())
            .map(|(o, _)| o)
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.rows, self.dim], self.out)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let lse_out = dev.empty("lse out", &[self.rows], DType::F32)?;
        attention::merge_states(dev, rec, self.rows, self.splits, self.dim, &t[0], &t[1], out, &lse_out)
    }
}

fn params(seqs: usize, q_len: usize, heads: (usize, usize), d: usize, mask: Mask) -> AttnParams {
    AttnParams {
        seqs,
        q_len,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        mask,
        additive_mask: false,
        mask_stride: 0,
    }
}

/// Every attention case.
pub fn cases(out: &mut Vec<Box<dyn Case>>) {
    use Layout::*;
    let f32s = (DType::F32, DType::F32);
    let f16s = (DType::F16, DType::F16);
    let mixed = (DType::F32, DType::F16);
    let prefill = |l: usize, heads, d, mask, types, layout, tier| AttnCase {
        p: params(1, l, heads, d, mask),
        seqs: vec![SeqSpec { kv_len: l, q_pos0: 0 }],
        types,
        layout,
        splits: None,
        tier,
        kind: "prefill",
        independent: false,
        poison: None,
    };
    let decode = |lens: &[usize], heads, d, types, layout, splits, tier| AttnCase {
        p: params(lens.len(), 1, heads, d, Mask::Causal),
        seqs: lens.iter().map(|&l| SeqSpec { kv_len: l, q_pos0: l - 1 }).collect(),
        types,
        layout,
        splits,
        tier,
        kind: "decode",
        independent: false,
        poison: None,
    };
    let t = Tier::Test;
    // Head sizes x GQA ratios (1, 3, 4:1) in both dtypes.
    for d in [64, 72, 128, 256] {
        for heads in [(4, 4), (9, 3), (4, 1)] {
            for types in [f32s, f16s] {
                out.push(Box::new(prefill(65, heads, d, Mask::Causal, types, Contiguous, t)));
            }
        }
    }
    // Lengths and masks.
    for l in [1, 7, 63, 127] {
        out.push(Box::new(prefill(l, (9, 3), 64, Mask::Causal, f32s, Contiguous, t)));
    }
    out.push(Box::new(prefill(1000, (9, 3), 64, Mask::Causal, f32s, Contiguous, t)));
    for types in [f32s, f16s, mixed] {
        out.push(Box::new(prefill(65, (9, 3), 64, Mask::None, types, Contiguous, t)));
        out.push(Box::new(prefill(127, (4, 1), 256, Mask::SlidingWindow(32), types, Contiguous, t)));
    }
    out.push(Box::new(prefill(65, (9, 3), 72, Mask::SlidingWindow(16), f32s, Paged { page_size: 16 }, t)));
    out.push(Box::new(prefill(127, (9, 3), 64, Mask::Causal, f32s, Paged { page_size: 16 }, t)));
    out.push(Box::new(prefill(127, (9, 3), 64, Mask::Causal, f16s, Paged { page_size: 64 }, t)));
    let mut masked = prefill(33, (9, 3), 64, Mask::Causal, f32s, Contiguous, t);
    masked.p.additive_mask = true;
    masked.p.mask_stride = 40;
    out.push(Box::new(masked));
    let mut vision = prefill(63, (12, 12), 64, Mask::None, f32s, Contiguous, t);
    vision.p.additive_mask = true;
    vision.p.mask_stride = 63;
    out.push(Box::new(vision));
    // Masked means absent: NaN in one key, which the rows before it (causal), the rows past its
    // window, and every row under an additive mask of -inf must not see; both kernels and the
    // paged, chunked path.
    for (types, d) in [(f32s, 64), (f16s, 64), (f32s, 72)] {
        let mut c = prefill(33, (9, 3), d, Mask::Causal, types, Contiguous, t);
        c.poison = Some(17);
        out.push(Box::new(c));
    }
    let mut c = prefill(61, (4, 1), 128, Mask::SlidingWindow(16), f32s, Paged { page_size: 16 }, t);
    c.poison = Some(30);
    out.push(Box::new(c));
    let mut c = prefill(63, (12, 12), 64, Mask::None, f32s, Contiguous, t);
    c.p.additive_mask = true;
    c.p.mask_stride = 63;
    c.poison = Some(21);
    out.push(Box::new(c));
    // Chunked prefill: 7 queries at the end of a longer cache (paged); several sequences at once.
    let chunk = |kv_len: usize, poison| AttnCase {
        p: params(1, 7, (9, 3), 64, Mask::Causal),
        seqs: vec![SeqSpec { kv_len, q_pos0: kv_len - 7 }],
        types: f32s,
        layout: Paged { page_size: 16 },
        splits: None,
        tier: t,
        kind: "chunk",
        independent: false,
        poison,
    };
    out.push(Box::new(chunk(66, Some(63))));
    out.push(Box::new(chunk(65, None)));
    out.push(Box::new(AttnCase {
        p: params(3, 5, (9, 3), 64, Mask::Causal),
        seqs: vec![
            SeqSpec { kv_len: 5, q_pos0: 0 },
            SeqSpec { kv_len: 70, q_pos0: 65 },
            SeqSpec { kv_len: 17, q_pos0: 12 },
        ],
        types: f32s,
        layout: Paged { page_size: 16 },
        splits: None,
        tier: t,
        kind: "chunk",
        independent: false,
        poison: None,
    }));
    // Decode: long caches, split-k (automatic and forced), batches, pages.
    for lens in [&[1][..], &[7], &[65], &[1000], &[4096]] {
        out.push(Box::new(decode(lens, (9, 3), 64, f32s, Contiguous, None, t)));
    }
    for types in [f16s, mixed] {
        out.push(Box::new(decode(&[4096], (9, 3), 64, types, Paged { page_size: 64 }, None, t)));
    }
    out.push(Box::new(decode(&[1000], (9, 3), 64, f32s, Contiguous, Some(3), t)));
    out.push(Box::new(decode(&[1000], (4, 1), 256, f32s, Paged { page_size: 16 }, Some(5), t)));
    out.push(Box::new(decode(&[777], (8, 8), 128, f16s, Paged { page_size: 16 }, None, t)));
    out.push(Box::new(decode(&[1, 17, 300, 1000], (9, 3), 64, f32s, Paged { page_size: 16 }, None, t)));
    out.push(Box::new(decode(&[5, 100, 1000], (4, 1), 64, f32s, Paged { page_size: 64 }, Some(2), t)));
    out.push(Box::new(decode(
        &[80, 100, 113, 144],
        (9, 3),
        64,
        f32s,
        SharedPrefix { page_size: 16, prefix_len: 64 },
        None,
        t,
    )));
    // Cascade: branch counts 1, 2, 5, 16; prefix and suffix lengths including 0.
    let cascade = |n_lens: Vec<usize>, prefix_len, heads, page_size, types| CascadeCase {
        heads,
        prefix_len,
        suffix_lens: n_lens,
        page_size,
        types,
        tier: t,
    };
    out.push(Box::new(cascade(vec![7], 100, (9, 3, 64), 16, f32s)));
    out.push(Box::new(cascade(vec![5, 9], 0, (9, 3, 64), 16, f32s)));
    out.push(Box::new(cascade(vec![0, 0], 100, (9, 3, 64), 64, f32s)));
    out.push(Box::new(cascade(vec![0, 3, 64, 1, 17], 1000, (9, 3, 64), 64, f32s)));
    out.push(Box::new(cascade(vec![0, 3, 64, 1, 17], 1000, (9, 3, 64), 16, f16s)));
    out.push(Box::new(cascade((0..16).map(|i| (i * 7) % 65).collect(), 256, (9, 3, 64), 16, f32s)));
    out.push(Box::new(cascade((0..16).map(|i| (i * 5) % 33).collect(), 300, (4, 1, 256), 16, mixed)));
    for (splits, rows, dim) in [(2, 5, 64), (3, 17, 72), (7, 9, 256)] {
        out.push(Box::new(MergeCase { splits, rows, dim, out: DType::F32 }));
    }
    out.push(Box::new(MergeCase { splits: 2, rows: 7, dim: 64, out: DType::F16 }));

    // Benchmarks: prefill 1024 (9/3 heads, d64), decode over 4096 keys, and cascade of 16
    // branches over a 2048-key prefix with 64-key suffixes next to the same 16 sequences decoded
    // independently over their concatenated keys (prefix pages shared, read once per sequence).
    let b = Tier::Bench;
    for types in [f32s, f16s] {
        out.push(Box::new(prefill(1024, (9, 3), 64, Mask::Causal, types, Contiguous, b)));
        out.push(Box::new(decode(&[4096], (9, 3), 64, types, Paged { page_size: 64 }, None, b)));
        out.push(Box::new(CascadeCase {
            heads: (9, 3, 64),
            prefix_len: 2048,
            suffix_lens: vec![64; 16],
            page_size: 16,
            types,
            tier: b,
        }));
        let shared = SharedPrefix { page_size: 16, prefix_len: 2048 };
        out.push(Box::new(decode(&[2112; 16], (9, 3), 64, types, shared, None, b)));
        let mut each = decode(&[2112; 16], (9, 3), 64, types, shared, None, b);
        each.independent = true;
        out.push(Box::new(each));
    }
    // The shape of llama.cpp's test-backend-ops FLASH_ATTN_EXT(hsk=64,nh=8,nr23=[8,1],kv=7680,nb=1)
    // with an f16 cache, for a same-adapter comparison.
    out.push(Box::new(decode(&[7680], (64, 8), 64, mixed, Contiguous, None, b)));
    // The per-sequence launch path is also checked against the reference.
    let mut each =
        decode(&[80, 100, 113, 144], (9, 3), 64, f32s, SharedPrefix { page_size: 16, prefix_len: 64 }, None, t);
    each.independent = true;
    out.push(Box::new(each));
}
