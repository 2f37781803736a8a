//! Quantized-weight cases: every block format, repacked into the GPU layout as a runtime does it,
//! against dequantize-the-GGUF-blocks-then-f64-matmul, through the matvec kernels (1 to 8 rows),
//! the subgroup matmul (more rows), and weights split into parts; and the quantized embedding
//! gather.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::quant::{self, Matvec, QuantWeight};
use flint_ref::ParamError;
use flint_ref::elementwise::EltOp;
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::quant::{BlockFormat, FusedQuantParams, QuantEpilogue, QuantMatmulParams};

use crate::cases::{F32_TOL, RopeQkvCase};
use crate::{Case, Input, Rng, Tier, Tolerance};

/// Random blocks of `fmt` holding `n` values, with finite scales of realistic size.
pub fn random_blocks(rng: &mut Rng, fmt: BlockFormat, n: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..fmt.bytes_for(n)).map(|_| rng.below(256) as u8).collect();
    for block in bytes.chunks_exact_mut(fmt.block_bytes()) {
        for (i, &off) in fmt.scale_offsets().iter().enumerate() {
            // d in [0.002, 0.03); a second scale (Q4_1's m, Q4_K's dmin) signed.
            let v = if i == 0 { rng.uniform(0.002, 0.03) } else { rng.uniform(-0.03, 0.03) };
            block[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

fn bytes_as_words(bytes: &[u8]) -> Vec<u32> {
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0);
    padded.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn words_as_bytes(words: &[u32], len: usize) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).take(len).collect()
}

/// C = A x W^T with W in blocks.
pub struct QuantMatmulCase {
    /// Shape and format.
    pub p: QuantMatmulParams,
    /// Weight rows per part (None: one part).
    pub part_rows: Option<usize>,
    /// The matvec kernel (for at most 8 rows of A).
    pub how: Matvec,
    /// Tier.
    pub tier: Tier,
}

impl Case for QuantMatmulCase {
    fn name(&self) -> String {
        let mm = &self.p.mm;
        let parts = self.part_rows.map(|r| format!("_parts{r}")).unwrap_or_default();
        let how = match self.how {
            Matvec::Auto => "",
            Matvec::Rows => "_rows",
            Matvec::Split => "_split",
            Matvec::Tiled => "_tiled",
        };
        format!("qmatmul_{}_{}x{}x{}{parts}{how}", self.p.format.name(), mm.m, mm.n, mm.k)
    }
    fn op(&self) -> &'static str {
        "quant"
    }
    fn dtype(&self) -> String {
        format!("f32x{}", self.p.format.name())
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        self.p.mm.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes()
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let mm = &self.p.mm;
        let blocks = random_blocks(&mut rng, self.p.format, mm.n * mm.k);
        let words = bytes_as_words(&blocks);
        vec![
            Input::float("A", &[mm.m, mm.k], DType::F32, rng.vec(mm.a_len(), -1.0, 1.0)),
            Input::ints("W blocks", &[words.len()], words),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let blocks = words_as_bytes(inputs[1].u32s(), self.p.b_bytes());
        flint_ref::quant::quant_matmul(&self.p, inputs[0].f32s(), &blocks, None)
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.mm.m, self.p.mm.n], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        // The blocks come back from the input words; a runtime uploads them from the file.
        let words = self.inputs()[1].u32s().to_vec();
        let bytes = words_as_bytes(&words, self.p.b_bytes());
        let (n, k, f) = (self.p.mm.n, self.p.mm.k, self.p.format);
        let w = match self.part_rows {
            Some(rows) => QuantWeight::upload_parts(dev, "W", &bytes, f, n, k, rows * QuantWeight::row_bytes(f, k))?,
            None => QuantWeight::upload(dev, "W", &bytes, f, n, k)?,
        };
        quant::quant_matmul_with(dev, rec, &self.p, &t[0], &w, out, self.how)
    }
}

/// A decode step's matvec with its fusions: RMSNorm of A on the way in, and the products stored,
/// added to C (residual) or through a GLU over gate/up pairs; against the norm, matmul and GLU
/// references composed.
pub struct FusedMatvecCase {
    /// Shape, norm and epilogue.
    pub p: FusedQuantParams,
    /// The matvec kernel.
    pub how: Matvec,
}

impl Case for FusedMatvecCase {
    fn name(&self) -> String {
        let mm = &self.p.q.mm;
        let epi = match self.p.epilogue {
            QuantEpilogue::Store => "store".to_string(),
            QuantEpilogue::Residual => "residual".to_string(),
            QuantEpilogue::Glu(op) => op.name().to_string(),
        };
        let how = if self.how == Matvec::Rows { "rows" } else { "split" };
        let norm = if self.p.norm_eps.is_some() { "norm_" } else { "" };
        format!("qmatvec_{}_{}x{}x{}_{norm}{epi}_{how}", self.p.q.format.name(), mm.m, mm.n, mm.k)
    }
    fn op(&self) -> &'static str {
        "quant"
    }
    fn dtype(&self) -> String {
        format!("f32x{}", self.p.q.format.name())
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        self.p.q.mm.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.q.bytes()
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let mm = &self.p.q.mm;
        let words = bytes_as_words(&random_blocks(&mut rng, self.p.q.format, mm.n * mm.k));
        vec![
            Input::float("A", &[mm.m, mm.k], DType::F32, rng.vec(mm.a_len(), -2.0, 2.0)),
            Input::ints("W blocks", &[words.len()], words),
            Input::float("norm weights", &[mm.k], DType::F32, rng.vec(mm.k, 0.5, 1.5)),
            Input::float(
                "C before",
                &[mm.m, self.p.out_cols()],
                DType::F32,
                rng.vec(mm.m * self.p.out_cols(), -1.0, 1.0),
            ),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let blocks = words_as_bytes(inputs[1].u32s(), self.p.q.b_bytes());
        let norm = self.p.norm_eps.map(|_| inputs[2].f32s());
        flint_ref::quant::fused_quant_matmul(&self.p, inputs[0].f32s(), &blocks, norm, inputs[3].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.q.mm.m, self.p.out_cols()], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let words = self.inputs()[1].u32s().to_vec();
        let bytes = words_as_bytes(&words, self.p.q.b_bytes());
        let (n, k, f) = (self.p.q.mm.n, self.p.q.mm.k, self.p.q.format);
        let w = match self.p.epilogue {
            QuantEpilogue::Glu(_) => QuantWeight::upload_glu(dev, "W", &bytes, f, n, k)?,
            _ => QuantWeight::upload(dev, "W", &bytes, f, n, k)?,
        };
        // The residual epilogue adds to what C holds.
        rec.copy(&t[3], out)?;
        let norm = self.p.norm_eps.map(|_| &t[2]);
        quant::quant_matvec_fused(dev, rec, &self.p, &t[0], &w, norm, out, self.how)
    }
}

/// The output head of a greedy decode step with the pick folded in: the matvec (RMSNorm of A on
/// the way in, or not) writes each workgroup's argmax tile and `sample_tiles` merges them
/// (`fused`), or the matvec writes the logits and the sampler reads them (what ran before; the
/// benchmark's baseline); against the norm and matmul references and the greedy reference
/// sampler: `[m, 2]` of (token id, log-probability). With `ties`, the row paired with the one
/// that wins for row 0 of A (`win ^ 1`: the same lane or subgroup) and the row half the matrix
/// away are copies of it, so that the win is a three-way tie within a lane and across tiles,
/// which the lowest row must take.
pub struct HeadTilesCase {
    /// Shape and format.
    pub p: QuantMatmulParams,
    /// RMSNorm of A's rows on the way in.
    pub norm: bool,
    /// The matvec kernel.
    pub how: Matvec,
    /// Weight rows per part (None: one part).
    pub part_rows: Option<usize>,
    /// Make a three-way tie for row 0 of A.
    pub ties: bool,
    /// Tiles and `sample_tiles`, or logits and `sample_rows`.
    pub fused: bool,
    /// Tier.
    pub tier: Tier,
}

/// Ids exact, log-probabilities to f32 rounding. A wrong id is off by at least 1, against an
/// allowance of 1e-5 of the largest |value| (at most 0.5 for a 49152-token vocabulary); a
/// log-probability's error is the f32 rounding of a log-sum-exp over the row (about 1e-6
/// absolute for these sizes), well inside 1e-5 of the largest value (>= the log-probability's
/// own size) and inside an NMSE of 1e-9.
const HEAD_TOL: Tolerance = Tolerance { nmse: 1e-9, max_abs_rel: 1e-5 };

impl HeadTilesCase {
    fn fused_params(&self) -> FusedQuantParams {
        FusedQuantParams { q: self.p, norm_eps: self.norm.then_some(1e-5), epilogue: QuantEpilogue::Store }
    }
}

impl Case for HeadTilesCase {
    fn name(&self) -> String {
        let mm = &self.p.mm;
        let parts = self.part_rows.map(|r| format!("_parts{r}")).unwrap_or_default();
        format!(
            "qhead_{}_{}x{}x{}{}{parts}{}_{}{}",
            self.p.format.name(),
            mm.m,
            mm.n,
            mm.k,
            if self.norm { "_norm" } else { "" },
            if self.ties { "_ties" } else { "" },
            if self.how == Matvec::Rows { "rows" } else { "split" },
            if self.fused { "" } else { "_logits" },
        )
    }
    fn op(&self) -> &'static str {
        "quant"
    }
    fn dtype(&self) -> String {
        format!("f32x{}", self.p.format.name())
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn tolerance(&self) -> Tolerance {
        HEAD_TOL
    }
    fn flops(&self) -> f64 {
        self.p.mm.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes()
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let mm = &self.p.mm;
        let mut blocks = random_blocks(&mut rng, self.p.format, mm.n * mm.k);
        let a = rng.vec(mm.a_len(), -2.0, 2.0);
        let norm_w = rng.vec(mm.k, 0.5, 1.5);
        if self.ties {
            let fp = self.fused_params();
            let logits = flint_ref::quant::fused_quant_matmul(
                &fp,
                &a,
                &blocks,
                self.norm.then_some(&norm_w),
                &vec![0.0; mm.m * mm.n],
            )
            .expect("valid case");
            let row0 = &logits[..mm.n];
            let win = (0..mm.n).fold(0, |b, i| if row0[i] > row0[b] { i } else { b });
            let rb = self.p.format.bytes_for(mm.k);
            let src = blocks[win * rb..][..rb].to_vec();
            // Its pair (the same lane or subgroup) and a row half the matrix away (another tile).
            assert!(mm.n >= 4, "a tie needs rows in two tiles");
            let pair = if win ^ 1 < mm.n { win ^ 1 } else { win - 1 };
            for dst in [pair, (win + mm.n / 2) % mm.n] {
                blocks[dst * rb..][..rb].copy_from_slice(&src);
            }
        }
        let words = bytes_as_words(&blocks);
        vec![
            Input::float("A", &[mm.m, mm.k], DType::F32, a),
            Input::ints("W blocks", &[words.len()], words),
            Input::float("norm weights", &[mm.k], DType::F32, norm_w),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let mm = &self.p.mm;
        let blocks = words_as_bytes(inputs[1].u32s(), self.p.b_bytes());
        let norm = self.norm.then(|| inputs[2].f32s());
        let zero = vec![0.0; mm.m * mm.n];
        let logits =
            flint_ref::quant::fused_quant_matmul(&self.fused_params(), inputs[0].f32s(), &blocks, norm, &zero)?;
        let picks = flint_ref::sample::sample(
            &flint_ref::sample::SampleParams::greedy(mm.m, mm.n),
            &logits,
            &vec![(0, 0); mm.m],
        )?;
        Ok(picks.iter().flat_map(|c| [c.token as f32, c.logprob]).collect())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.mm.m, 2], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let (m, n, k, f) = (self.p.mm.m, self.p.mm.n, self.p.mm.k, self.p.format);
        let words = self.inputs()[1].u32s().to_vec();
        let bytes = words_as_bytes(&words, self.p.b_bytes());
        let w = match self.part_rows {
            Some(rows) => QuantWeight::upload_parts(dev, "W", &bytes, f, n, k, rows * QuantWeight::row_bytes(f, k))?,
            None => QuantWeight::upload(dev, "W", &bytes, f, n, k)?,
        };
        let norm = self.norm.then_some(&t[2]);
        // Greedy options, row r's id to token slot r.
        let opts: Vec<u32> = (0..m)
            .flat_map(|r| {
                let params = flint_ref::sample::SampleParams::greedy(1, n);
                flint_kernels::sample::RowOptions { params, seed: 0, step: 0, slot: r as u32 }.words()
            })
            .collect();
        let opts = dev.upload_u32("row options", &opts, &[m, flint_kernels::sample::RowOptions::WORDS])?;
        let tokens = dev.empty("tokens", &[m], DType::U32)?;
        if self.fused {
            let count = quant::head_tiles(dev, &w, self.how);
            let tiles = dev.empty("tiles", &[m, count, 4], DType::F32)?;
            quant::quant_head_tiles(
                dev,
                rec,
                &self.p,
                self.fused_params().norm_eps,
                &t[0],
                &w,
                norm,
                &tiles,
                self.how,
            )?;
            flint_kernels::sample::sample_tiles(dev, rec, m, count, &tiles, &opts, out, &tokens)
        } else {
            let logits = dev.empty("logits", &[m, n], DType::F32)?;
            quant::quant_matvec_fused(dev, rec, &self.fused_params(), &t[0], &w, norm, &logits, self.how)?;
            flint_kernels::sample::sample_rows(dev, rec, m, n, &logits, &opts, out, &tokens)
        }
    }
}

/// A decode step's QKV projection with RoPE and the K/V append folded in (RMSNorm of A on the
/// way in), against the fused-matvec reference then the rope_qkv reference; Q, the K pool and
/// the V pool laid out as [`RopeQkvCase`]'s (slots no token writes stay NaN).
pub struct QkvRopeMatvecCase {
    /// Format of the stacked `[q | k | v]` weight.
    pub format: BlockFormat,
    /// Rows of A (tokens at positions `pos0..`), heads, head size; `pos0` in `rope`.
    pub rope: RopeQkvCase,
    /// Row length.
    pub k: usize,
    /// The matvec kernel.
    pub how: Matvec,
}

impl QkvRopeMatvecCase {
    fn params(&self) -> FusedQuantParams {
        let p = &self.rope.p;
        FusedQuantParams {
            q: QuantMatmulParams { mm: MatmulParams::new(p.tokens, p.row(), self.k), format: self.format },
            norm_eps: Some(1e-5),
            epilogue: QuantEpilogue::Store,
        }
    }
}

impl Case for QkvRopeMatvecCase {
    fn name(&self) -> String {
        let p = &self.rope.p;
        let how = if self.how == Matvec::Rows { "rows" } else { "split" };
        format!(
            "qmatvec_qkv_rope_{}_{}x{}+{}x{}_k{}_pos{}_{how}",
            self.format.name(),
            p.tokens,
            p.heads,
            p.kv_heads,
            p.head_dim,
            self.k,
            self.rope.pos0
        )
    }
    fn op(&self) -> &'static str {
        "quant"
    }
    fn dtype(&self) -> String {
        format!("f32x{}", self.format.name())
    }
    fn unsupported(&self, caps: &flint_gpu::Caps) -> Option<String> {
        (caps.max_storage_buffers < 9)
            .then(|| format!("{} storage bindings per shader stage, 9 needed", caps.max_storage_buffers))
    }
    fn tolerance(&self) -> Tolerance {
        // The products carry the matvec's f32 rounding (F32_TOL), then the rotation RoPE's.
        crate::cases::ROPE_F32_TOL
    }
    fn flops(&self) -> f64 {
        self.params().q.mm.flops()
    }
    fn bytes(&self) -> f64 {
        self.params().q.bytes()
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let mm = self.params().q.mm;
        let words = bytes_as_words(&random_blocks(&mut rng, self.format, mm.n * mm.k));
        let pos: Vec<u32> = (0..mm.m).map(|t| (self.rope.pos0 + t) as u32).collect();
        vec![
            Input::float("A", &[mm.m, mm.k], DType::F32, rng.vec(mm.a_len(), -2.0, 2.0)),
            Input::ints("W blocks", &[words.len()], words),
            Input::float("norm weights", &[mm.k], DType::F32, rng.vec(mm.k, 0.5, 1.5)),
            Input::ints("positions", &[mm.m], pos),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let p = self.params();
        let blocks = words_as_bytes(inputs[1].u32s(), p.q.b_bytes());
        let zeros = vec![0.0; p.q.mm.m * p.q.mm.n];
        let qkv = flint_ref::quant::fused_quant_matmul(&p, inputs[0].f32s(), &blocks, Some(inputs[2].f32s()), &zeros)?;
        let d = self.rope.p.head_dim;
        self.rope.reference(&[
            Input::float("qkv", &[qkv.len()], DType::F32, qkv),
            inputs[3].clone(),
            Input::float("norms", &[RopeQkvCase::K_NORM_AT + d], DType::F32, vec![1.0; RopeQkvCase::K_NORM_AT + d]),
        ])
    }
    fn output(&self) -> (Vec<usize>, DType) {
        self.rope.output()
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let p = self.params();
        let words = self.inputs()[1].u32s().to_vec();
        let bytes = words_as_bytes(&words, p.q.b_bytes());
        let w = QuantWeight::upload(dev, "W", &bytes, self.format, p.q.mm.n, p.q.mm.k)?;
        let (rp, d) = (&self.rope.p, self.rope.p.head_dim);
        let (qs, pool, _) = self.rope.sections();
        let num_pages = self.rope.num_pages();
        let pool_n = num_pages * RopeQkvCase::PAGE * rp.kv_heads * d;
        let q_out = out.view(0, &[rp.tokens * rp.heads * d], DType::F32)?;
        let k = out.view(4 * qs as u64, &[pool_n], DType::F32)?;
        let v = out.view(4 * (qs + pool) as u64, &[pool_n], DType::F32)?;
        let cache = flint_kernels::attention::KvCache { k, v, page_size: RopeQkvCase::PAGE, num_pages };
        let table = flint_kernels::attention::PageTable::new(dev, &[self.rope.pages()], num_pages)?;
        let dest: Vec<u32> = (0..rp.tokens).flat_map(|t| [0, (self.rope.pos0 + t) as u32]).collect();
        let dest = dev.upload_u32("destinations", &dest, &[rp.tokens, 2])?;
        let kv = quant::QkvDest { positions: &t[3], dest: &dest, cache: &cache, table: &table };
        quant::quant_matvec_qkv_rope(dev, rec, rp, p.norm_eps, &t[0], &w, Some(&t[2]), kv, &q_out, self.how)
    }
}

/// Embedding gather from a quantized table.
pub struct QuantEmbedCase {
    /// Shape.
    pub p: EmbedParams,
    /// Table format.
    pub format: BlockFormat,
    /// Table rows per part (None: one part).
    pub part_rows: Option<usize>,
}

impl Case for QuantEmbedCase {
    fn name(&self) -> String {
        let parts = self.part_rows.map(|r| format!("_parts{r}")).unwrap_or_default();
        format!("qembed_{}_{}x{}x{}{parts}", self.format.name(), self.p.tokens, self.p.vocab, self.p.dim)
    }
    fn op(&self) -> &'static str {
        "quant"
    }
    fn dtype(&self) -> String {
        self.format.name().into()
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        (self.format.bytes_for(self.p.tokens * self.p.dim) + 4 * self.p.tokens * self.p.dim) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let blocks = random_blocks(&mut rng, self.format, self.p.vocab * self.p.dim);
        let words = bytes_as_words(&blocks);
        let mut ids: Vec<u32> = (0..self.p.tokens).map(|_| rng.below(self.p.vocab as u32)).collect();
        ids[0] = self.p.vocab as u32 - 1;
        vec![Input::ints("table blocks", &[words.len()], words), Input::ints("ids", &[self.p.tokens], ids)]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let bytes = words_as_bytes(inputs[0].u32s(), self.format.bytes_for(self.p.vocab * self.p.dim));
        let table = flint_ref::quant::dequantize(self.format, &bytes, self.p.vocab * self.p.dim)?;
        flint_ref::embed::embed(&self.p, &table, inputs[1].u32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.tokens, self.p.dim], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let words = self.inputs()[0].u32s().to_vec();
        let bytes = words_as_bytes(&words, self.format.bytes_for(self.p.vocab * self.p.dim));
        let (n, k, f) = (self.p.vocab, self.p.dim, self.format);
        let table = match self.part_rows {
            Some(rows) => {
                QuantWeight::upload_parts(dev, "table", &bytes, f, n, k, rows * QuantWeight::row_bytes(f, k))?
            }
            None => QuantWeight::upload(dev, "table", &bytes, f, n, k)?,
        };
        quant::embed_q(dev, rec, &self.p, &table, &t[1], out)
    }
}

/// Every quantized-weight case.
pub fn cases(out: &mut Vec<Box<dyn Case>>) {
    let q = |format, m, n, k| QuantMatmulParams { mm: MatmulParams::new(m, n, k), format };
    for f in BlockFormat::ALL {
        // Rows of A from 1 to 8 (matvec) and past it (matmul); weight rows not a multiple of any
        // tile (1, 17, 65, 70); rows of 1, 3 and 9 blocks (32-value formats: 9 blocks is two
        // whole groups of four and one left over, 18 is SmolLM2's 576).
        let be = f.block_elems();
        let ks = if be == 32 { [be, 9 * be, 18 * be] } else { [be, 3 * be, 2 * be] };
        // One row of 18 blocks (SmolLM2's 576 values for the 32-value formats): the row length
        // matvec_rows compiles in and unrolls at one row of A.
        for (m, n, k) in [
            (1, 17, ks[1]),
            (3, 65, ks[2]),
            (8, 64, ks[0]),
            (33, 70, ks[1]),
            (1, 1, ks[0]),
            (5, 9, ks[2]),
            (1, 65, ks[2]),
        ] {
            // The tiled matmul (what runs past 8 rows without subgroups) at every row count:
            // fewer rows than its tile, and a tile and a bit.
            let hows: &[Matvec] = if m <= quant::MATVEC_MAX_ROWS {
                &[Matvec::Rows, Matvec::Split, Matvec::Tiled]
            } else {
                &[Matvec::Auto, Matvec::Tiled]
            };
            for &how in hows {
                out.push(Box::new(QuantMatmulCase { p: q(f, m, n, k), part_rows: None, how, tier: Tier::Test }));
            }
        }
        // The decode step's fusions, through both matvec kernels, on rows of 9 blocks.
        for (m, norm, epilogue) in [
            (1, true, QuantEpilogue::Store),
            (3, false, QuantEpilogue::Residual),
            (1, true, QuantEpilogue::Glu(EltOp::SwiGlu)),
            (5, true, QuantEpilogue::Glu(EltOp::GeGlu)),
        ] {
            for how in [Matvec::Rows, Matvec::Split] {
                let p = FusedQuantParams { q: q(f, m, 34, ks[1]), norm_eps: norm.then_some(1e-5), epilogue };
                out.push(Box::new(FusedMatvecCase { p, how }));
            }
        }
        // The QKV step with RoPE and the K/V append: heads of 6 (a pair count that is odd),
        // 8 and SmolLM2's 64, GQA, positions across pages.
        if matches!(f, BlockFormat::Q4_1 | BlockFormat::Q8_0 | BlockFormat::Q4_K) {
            for (m, heads, kv_heads, d, pos0, k) in
                [(1, 3, 1, 6, 37, ks[1]), (5, 4, 2, 8, 2, ks[1]), (1, 9, 3, 64, 1000, ks[1]), (1, 9, 3, 64, 7, ks[2])]
            {
                for how in [Matvec::Rows, Matvec::Split] {
                    let rope = flint_ref::rope::RopeQkvParams {
                        tokens: m,
                        heads,
                        kv_heads,
                        head_dim: d,
                        theta: 10000.0,
                        freq_scale: 1.0,
                        layout: flint_ref::rope::RopeLayout::Interleaved,
                        qk_norm_eps: None,
                    };
                    let rope = RopeQkvCase { p: rope, pos0 };
                    out.push(Box::new(QkvRopeMatvecCase { format: f, rope, k, how }));
                }
            }
        }
        // The greedy head, through both matvec kernels: several tiles and a partial last one in
        // every format; for the formats heads come in (the epilogue is the same code after any
        // format's products), fewer rows than a tile, parts of a size that is no multiple of a
        // tile, and a tie across tiles.
        let head_shapes: &[_] = if matches!(f, BlockFormat::Q8_0 | BlockFormat::Q6_K) {
            &[
                (3, 1100, ks[0], true, None, false),
                (1, 17, ks[1], true, None, false),
                (5, 700, ks[0], false, Some(300), false),
                (1, 1100, ks[1], true, None, true),
                (4, 700, ks[0], true, Some(250), true),
            ]
        } else {
            &[(3, 1100, ks[0], true, None, false)]
        };
        for &(m, n, k, norm, part_rows, ties) in head_shapes {
            for how in [Matvec::Rows, Matvec::Split] {
                let p = q(f, m, n, k);
                out.push(Box::new(HeadTilesCase { p, norm, how, part_rows, ties, fused: true, tier: Tier::Test }));
            }
        }
        out.push(Box::new(QuantEmbedCase {
            p: EmbedParams { tokens: 7, vocab: 100, dim: 256, scale: 1.0 },
            format: f,
            part_rows: None,
        }));
        out.push(Box::new(QuantEmbedCase {
            p: EmbedParams { tokens: 9, vocab: 100, dim: 512, scale: 25.3 },
            format: f,
            part_rows: Some(32),
        }));
    }
    // SmolLM2-135M (Q4_1 layers, Q8_0 tied head) and gemma-3-270m (Q5_0/Q4_K/Q6_K) shapes.
    let b = Tier::Bench;
    // The greedy head with its pick, tiles against logits and the sampler over them.
    for m in [1, 4] {
        for how in [Matvec::Rows, Matvec::Split] {
            for fused in [true, false] {
                let p = q(BlockFormat::Q8_0, m, 49152, 576);
                out.push(Box::new(HeadTilesCase { p, norm: true, how, part_rows: None, ties: false, fused, tier: b }));
            }
        }
    }
    for (f, m, n, k) in [
        (BlockFormat::Q4_1, 1, 1536, 576),
        (BlockFormat::Q4_1, 1, 576, 1536),
        (BlockFormat::Q8_0, 1, 49152, 576),
        (BlockFormat::Q4_1, 4, 1536, 576),
        (BlockFormat::Q4_1, 4, 576, 1536),
        (BlockFormat::Q8_0, 4, 49152, 576),
        (BlockFormat::Q4_1, 8, 1536, 576),
        (BlockFormat::Q4_1, 64, 1536, 576),
        (BlockFormat::Q4_1, 512, 1536, 576),
        (BlockFormat::Q5_0, 1, 2048, 640),
        (BlockFormat::Q4_K, 1, 640, 1024),
        (BlockFormat::Q6_K, 1, 640, 2048),
        (BlockFormat::Q4_0, 1, 1536, 576),
        (BlockFormat::Q5_K, 1, 640, 1024),
    ] {
        for how in [Matvec::Rows, Matvec::Split] {
            if m <= quant::MATVEC_MAX_ROWS || how == Matvec::Rows {
                let how = if m <= quant::MATVEC_MAX_ROWS { how } else { Matvec::Auto };
                out.push(Box::new(QuantMatmulCase { p: q(f, m, n, k), part_rows: None, how, tier: b }));
            }
        }
        // Prefill without subgroups: the tiled matmul, and the matvec over chunks of 8 rows it
        // replaces there.
        if m > quant::MATVEC_MAX_ROWS {
            for how in [Matvec::Tiled, Matvec::Rows] {
                out.push(Box::new(QuantMatmulCase { p: q(f, m, n, k), part_rows: None, how, tier: b }));
            }
        }
    }
}
