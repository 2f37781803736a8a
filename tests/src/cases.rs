//! The case table: every op, in f32 and f16, over awkward shapes (1, 7, 17, 63, 65, 127, ...,
//! sizes that are multiples of no tile), plus the large shapes `flint bench` reports.

use flint_gpu::{Caps, DType, Device, Recorder, Tensor};
use flint_kernels::matmul::{self, Strategy};
use flint_ref::ParamError;
use flint_ref::elementwise::{EltOp, EltParams};
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::norm::{NormKind, NormParams};
use flint_ref::rope::{RopeLayout, RopeParams};
use flint_ref::softmax::SoftmaxParams;

use crate::{Case, Input, Rng, Tier, Tolerance};

/// Results computed in f32 and stored as f32. A length-k dot product in f32 has a relative
/// error near sqrt(k) * 2^-24, so NMSE ~ k * 2^-48 (4e-12 at k = 1024); GPU exp/sin/cos are
/// accurate to a few ulp. 1e-9 leaves two orders of magnitude of room while a wrong index, a
/// missed element or a lost term gives 1e-4 or more. Max-abs: 1e-4 of the largest reference
/// value catches a single bad element that NMSE would average away.
pub const F32_TOL: Tolerance = Tolerance { nmse: 1e-9, max_abs_rel: 1e-4 };

/// Results computed in f32 and stored as f16. Rounding to f16 alone costs up to half an ulp,
/// 2^-11 relative, so NMSE ~ 2^-22 / 3 = 8e-8 for uniformly spread errors; the inputs are
/// already f16 values, so nothing else adds much. 5e-6 is 60x that; max-abs 2e-3 of the largest
/// value is four times the worst rounding of the largest element.
pub const F16_TOL: Tolerance = Tolerance { nmse: 5e-6, max_abs_rel: 2e-3 };

/// RoPE in f32: the angle `pos * theta^(-2i/d)` is formed in f32, so at position p it carries an
/// absolute error near p * 2^-24 radians before sin/cos (2.4e-4 rad at p = 4096), which the
/// rotated values inherit. NMSE then reaches ~1e-8 for positions up to 4096; 1e-7 covers it,
/// and a wrong pair or frequency still gives 1e-2 or more.
pub const ROPE_F32_TOL: Tolerance = Tolerance { nmse: 1e-7, max_abs_rel: 2e-3 };

pub(crate) fn tol_for(dtype: DType) -> Tolerance {
    if dtype == DType::F16 { F16_TOL } else { F32_TOL }
}

pub(crate) fn f16_reason(caps: &Caps, dtypes: &[DType]) -> Option<String> {
    (dtypes.contains(&DType::F16) && !caps.f16).then(|| "adapter lacks SHADER_F16".to_string())
}

/// A matmul case with a forced strategy.
pub struct MatmulCase {
    /// Shape.
    pub p: MatmulParams,
    /// Strategy under test.
    pub strategy: Strategy,
    /// A, B and C storage types.
    pub types: (DType, DType, DType),
    /// Tier.
    pub tier: Tier,
}

impl Case for MatmulCase {
    fn name(&self) -> String {
        let p = &self.p;
        let batch =
            if p.batch > 1 { format!("b{}{}_", p.batch, if p.b_batched { "" } else { "s" }) } else { String::new() };
        format!(
            "matmul_{}_{}_{batch}{}x{}x{}{}",
            self.strategy.name(),
            self.dtype(),
            p.m,
            p.n,
            p.k,
            if p.bias { "_bias" } else { "" }
        )
    }
    fn op(&self) -> &'static str {
        "matmul"
    }
    fn dtype(&self) -> String {
        let (a, b, c) = self.types;
        if a == b && b == c { a.name().to_string() } else { format!("{a}x{b}") }
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn unsupported(&self, caps: &Caps) -> Option<String> {
        let (a, b, c) = self.types;
        f16_reason(caps, &[a, b, c]).or_else(|| matmul::unsupported(caps, &self.p, self.strategy))
    }
    fn tolerance(&self) -> Tolerance {
        tol_for(self.types.2)
    }
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        let (a, b, c) = self.types;
        self.p.bytes(a.size(), b.size(), c.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let p = &self.p;
        let mut v = vec![
            Input::float("A", &[p.a_len()], self.types.0, rng.vec(p.a_len(), -1.0, 1.0)),
            Input::float("B", &[p.b_len()], self.types.1, rng.vec(p.b_len(), -1.0, 1.0)),
        ];
        if p.bias {
            v.push(Input::float("bias", &[p.n], self.types.1, rng.vec(p.n, -1.0, 1.0)));
        }
        v
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::matmul::matmul(&self.p, inputs[0].f32s(), inputs[1].f32s(), inputs.get(2).map(Input::f32s))
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.batch, self.p.m, self.p.n], self.types.2)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        matmul::matmul_with(dev, rec, &self.p, self.strategy, &t[0], &t[1], t.get(2), out)
    }
}

/// An elementwise case.
pub struct EltCase {
    /// Shape and op.
    pub p: EltParams,
    /// Storage type.
    pub dt: DType,
    /// Tier.
    pub tier: Tier,
}

impl Case for EltCase {
    fn name(&self) -> String {
        let b = if self.p.op.is_binary() && self.p.b_len != self.p.n {
            format!("_b{}", self.p.b_len)
        } else {
            String::new()
        };
        format!("{}_{}_{}{b}", self.p.op.name(), self.dt, self.p.n)
    }
    fn op(&self) -> &'static str {
        "elementwise"
    }
    float_case!();
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes(self.dt.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        // Activations see the tails of silu/gelu; arithmetic ops see signed values.
        let (lo, hi) =
            if matches!(self.p.op, EltOp::Silu | EltOp::GeluErf | EltOp::GeluTanh | EltOp::SwiGlu | EltOp::GeGlu) {
                (-8.0, 8.0)
            } else {
                (-2.0, 2.0)
            };
        let mut v = vec![Input::float("a", &[self.p.n], self.dt, rng.vec(self.p.n, lo, hi))];
        if self.p.op.is_binary() {
            v.push(Input::float("b", &[self.p.b_len], self.dt, rng.vec(self.p.b_len, -2.0, 2.0)));
        }
        v
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::elementwise::elementwise(&self.p, inputs[0].f32s(), inputs.get(1).map(Input::f32s))
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.n], self.dt)
    }
    fn in_place(&self) -> Option<usize> {
        (self.p.op == EltOp::ResidualAdd).then_some(0)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        if self.p.op == EltOp::ResidualAdd {
            flint_kernels::elementwise::residual_add(dev, rec, &self.p, out, &t[1])
        } else {
            flint_kernels::elementwise::elementwise(dev, rec, &self.p, &t[0], t.get(1), out)
        }
    }
}

/// A normalisation case.
pub struct NormCase {
    /// Shape and kind.
    pub p: NormParams,
    /// Storage type.
    pub dt: DType,
    /// Tier.
    pub tier: Tier,
}

impl Case for NormCase {
    fn name(&self) -> String {
        format!("{}_{}_{}x{}", self.p.kind.name(), self.dt, self.p.rows, self.p.dim)
    }
    fn op(&self) -> &'static str {
        "norm"
    }
    float_case!();
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes(self.dt.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.rows * self.p.dim;
        // An offset mean makes LayerNorm's centring matter.
        let mut v = vec![
            Input::float("x", &[n], self.dt, rng.vec(n, -1.5, 2.5)),
            Input::float("weight", &[self.p.dim], self.dt, rng.vec(self.p.dim, 0.5, 1.5)),
        ];
        if self.p.kind == NormKind::Layer {
            v.push(Input::float("bias", &[self.p.dim], self.dt, rng.vec(self.p.dim, -0.5, 0.5)));
        }
        v
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::norm::norm(&self.p, inputs[0].f32s(), inputs[1].f32s(), inputs.get(2).map(Input::f32s))
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.rows, self.p.dim], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::norm::norm(dev, rec, &self.p, &t[0], &t[1], t.get(2), out)
    }
}

/// A softmax case.
pub struct SoftmaxCase {
    /// Shape.
    pub p: SoftmaxParams,
    /// Storage type.
    pub dt: DType,
    /// Input range (large values check the max subtraction).
    pub range: f32,
    /// Tier.
    pub tier: Tier,
}

impl Case for SoftmaxCase {
    fn name(&self) -> String {
        format!("softmax_{}_{}x{}_r{}", self.dt, self.p.rows, self.p.dim, self.range)
    }
    fn op(&self) -> &'static str {
        "softmax"
    }
    float_case!();
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes(self.dt.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.rows * self.p.dim;
        vec![Input::float("x", &[n], self.dt, rng.vec(n, -self.range, self.range))]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::softmax::softmax(&self.p, inputs[0].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.rows, self.p.dim], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::softmax::softmax(dev, rec, &self.p, &t[0], out)
    }
}

/// A RoPE case.
pub struct RopeCase {
    /// Shape and constants.
    pub p: RopeParams,
    /// Storage type.
    pub dt: DType,
    /// Positions are drawn below this.
    pub max_pos: u32,
    /// Each token's angles given as a table (the 2D rotary of vision towers, M-RoPE: angles of
    /// row and column positions at frequencies restarting per half, up to `max_pos` radians),
    /// not computed from one position.
    pub angles: bool,
    /// Elements after the heads in each token's row (with `angles`: the heads lead wider rows,
    /// as Q and K lead a fused QKV row; the rest passes through).
    pub row_extra: usize,
    /// Tier.
    pub tier: Tier,
}

impl RopeCase {
    fn row(&self) -> usize {
        self.p.heads * self.p.head_dim + self.row_extra
    }
}

impl Case for RopeCase {
    fn name(&self) -> String {
        let p = &self.p;
        let partial = if p.rot_dim != p.head_dim { format!("_rot{}", p.rot_dim) } else { String::new() };
        let table = match (self.angles, self.row_extra) {
            (false, _) => String::new(),
            (true, 0) => "_angles".into(),
            (true, e) => format!("_angles_pad{e}"),
        };
        format!(
            "rope{table}_{}_{}_{}x{}x{}{partial}_theta{}",
            p.layout.name(),
            self.dt,
            p.tokens,
            p.heads,
            p.head_dim,
            p.theta
        )
    }
    fn op(&self) -> &'static str {
        "rope"
    }
    fn dtype(&self) -> String {
        self.dt.name().into()
    }
    fn tier(&self) -> Tier {
        self.tier
    }
    fn unsupported(&self, caps: &Caps) -> Option<String> {
        f16_reason(caps, &[self.dt])
    }
    fn tolerance(&self) -> Tolerance {
        if self.dt == DType::F16 { F16_TOL } else { ROPE_F32_TOL }
    }
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes(self.dt.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.tokens * self.row();
        let mut pos: Vec<u32> = (0..self.p.tokens).map(|_| rng.below(self.max_pos)).collect();
        pos[0] = 0;
        if let Some(last) = pos.last_mut().filter(|_| self.p.tokens > 1) {
            *last = self.max_pos - 1;
        }
        let x = Input::float("x", &[n], self.dt, rng.vec(n, -1.0, 1.0));
        if !self.angles {
            return vec![x, Input::ints("positions", &[self.p.tokens], pos)];
        }
        // Two positions per token (a row and a column), each half of the pairs at frequencies
        // theta^(-2j / (rot_dim / 2)), as Qwen2.5-VL's vision rotary makes them (in f32).
        let half = self.p.rot_dim / 2;
        let quarter = half.div_ceil(2);
        let cols: Vec<u32> = (0..self.p.tokens).map(|_| rng.below(self.max_pos)).collect();
        let mut table = Vec::with_capacity(self.p.tokens * half);
        for t in 0..self.p.tokens {
            for j in 0..half {
                let (p, k) = if j < quarter { (pos[t], j) } else { (cols[t], j - quarter) };
                let freq = (1.0 / f64::from(self.p.theta).powf(2.0 * k as f64 / half as f64)) as f32;
                table.push(p as f32 * freq);
            }
        }
        vec![x, Input::float("angles", &[self.p.tokens * half], DType::F32, table)]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        if self.angles {
            return flint_ref::rope::rope_angles_rows(&self.p, self.row(), inputs[0].f32s(), inputs[1].f32s());
        }
        flint_ref::rope::rope(&self.p, inputs[0].f32s(), inputs[1].u32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.tokens, self.row()], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        if self.angles && self.row_extra > 0 {
            // The elements past the heads are not written: they come from a copy, as the
            // decoder makes one of its QKV rows.
            rec.copy(&t[0], out)?;
            return flint_kernels::rope::rope_angles_rows(dev, rec, &self.p, self.row(), &t[0], &t[1], out);
        }
        if self.angles {
            return flint_kernels::rope::rope_angles(dev, rec, &self.p, &t[0], &t[1], out);
        }
        flint_kernels::rope::rope(dev, rec, &self.p, &t[0], &t[1], out)
    }
}

/// An embedding gather case.
pub struct EmbedCase {
    /// Shape.
    pub p: EmbedParams,
    /// Storage type.
    pub dt: DType,
    /// Tier.
    pub tier: Tier,
}

impl Case for EmbedCase {
    fn name(&self) -> String {
        format!("embed_{}_{}x{}x{}", self.dt, self.p.tokens, self.p.vocab, self.p.dim)
    }
    fn op(&self) -> &'static str {
        "embed"
    }
    float_case!();
    fn flops(&self) -> f64 {
        self.p.flops()
    }
    fn bytes(&self) -> f64 {
        self.p.bytes(self.dt.size())
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.vocab * self.p.dim;
        let mut ids: Vec<u32> = (0..self.p.tokens).map(|_| rng.below(self.p.vocab as u32)).collect();
        if let Some(last) = ids.last_mut() {
            *last = self.p.vocab as u32 - 1;
        }
        vec![
            Input::float("table", &[self.p.vocab, self.p.dim], self.dt, rng.vec(n, -1.0, 1.0)),
            Input::ints("ids", &[self.p.tokens], ids),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::embed::embed(&self.p, inputs[0].f32s(), inputs[1].u32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.tokens, self.p.dim], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::embed::embed(dev, rec, &self.p, &t[0], &t[1], out)
    }
}

const FLOAT_TYPES: [DType; 2] = [DType::F32, DType::F16];

fn matmul_cases(out: &mut Vec<Box<dyn Case>>) {
    let mm = |batch, m, n, k, b_batched, bias| MatmulParams { batch, m, n, k, b_batched, bias };
    let test_shapes = [
        mm(1, 1, 1, 1, false, false),
        mm(1, 1, 7, 17, false, true),
        mm(1, 3, 17, 63, false, false),
        mm(1, 8, 65, 64, false, true),
        mm(1, 7, 127, 576, false, false),
        mm(2, 5, 17, 63, false, false),
        mm(1, 17, 65, 127, false, false),
        mm(1, 65, 17, 63, false, true),
        mm(1, 63, 127, 65, false, false),
        mm(1, 127, 63, 576, false, false),
        mm(1, 33, 100, 128, false, true),
        mm(3, 17, 33, 64, true, false),
        mm(2, 9, 7, 17, true, false),
    ];
    let types = [
        (DType::F32, DType::F32, DType::F32),
        (DType::F16, DType::F16, DType::F16),
        (DType::F32, DType::F16, DType::F32),
    ];
    for p in test_shapes {
        for types in types {
            for strategy in Strategy::ALL {
                if strategy == Strategy::Matvec && p.m > matmul::MATVEC_MAX_ROWS {
                    continue;
                }
                out.push(Box::new(MatmulCase { p, strategy, types, tier: Tier::Test }));
            }
        }
    }
    let bench = [
        (mm(1, 1024, 1024, 1024, false, false), [Strategy::Tiled, Strategy::Subgroup].as_slice()),
        (mm(1, 512, 1536, 576, false, false), &[Strategy::Tiled, Strategy::Subgroup]),
        (mm(1, 64, 1536, 576, false, false), &[Strategy::Tiled, Strategy::Subgroup]),
        (mm(1, 1, 1536, 576, false, false), &[Strategy::Matvec, Strategy::Tiled]),
        (mm(1, 8, 1536, 576, false, false), &[Strategy::Matvec]),
        // SigLIP base/16 on a 512x512 tile: 1024 patches, attention projections and the MLP.
        (mm(1, 1024, 768, 768, false, true), &[Strategy::Subgroup]),
        (mm(1, 1024, 3072, 768, false, true), &[Strategy::Subgroup]),
        (mm(1, 1024, 3072, 768, false, false), &[Strategy::Subgroup]),
    ];
    for (p, strategies) in bench {
        for types in types {
            for &strategy in strategies {
                out.push(Box::new(MatmulCase { p, strategy, types, tier: Tier::Bench }));
            }
        }
    }
}

/// Every case, test tier first.
pub fn all_cases() -> Vec<Box<dyn Case>> {
    let mut out: Vec<Box<dyn Case>> = Vec::new();
    matmul_cases(&mut out);
    for dt in FLOAT_TYPES {
        for op in EltOp::ALL {
            for n in [1usize, 7, 1000, 4099] {
                let b_len = if op.is_binary() { n } else { 0 };
                out.push(Box::new(EltCase { p: EltParams { op, n, b_len, scale: 0.37 }, dt, tier: Tier::Test }));
            }
            if op.is_binary() && !matches!(op, EltOp::SwiGlu | EltOp::GeGlu) {
                out.push(Box::new(EltCase {
                    p: EltParams { op, n: 3 * 576, b_len: 576, scale: 1.0 },
                    dt,
                    tier: Tier::Test,
                }));
            }
            let b_len = if op.is_binary() { 1 << 20 } else { 0 };
            out.push(Box::new(EltCase { p: EltParams { op, n: 1 << 20, b_len, scale: 0.37 }, dt, tier: Tier::Bench }));
        }
        for kind in [NormKind::Rms, NormKind::RmsUnitOffset, NormKind::Layer] {
            for (rows, dim) in [(1, 1), (7, 576), (3, 1000), (65, 63), (2, 4097)] {
                out.push(Box::new(NormCase { p: NormParams { kind, rows, dim, eps: 1e-5 }, dt, tier: Tier::Test }));
            }
            out.push(Box::new(NormCase {
                p: NormParams { kind, rows: 512, dim: 576, eps: 1e-6 },
                dt,
                tier: Tier::Bench,
            }));
        }
        for (rows, dim, scale, range) in
            [(1, 1, 1.0, 4.0), (7, 17, 1.0, 8.0), (3, 1000, 0.125, 8.0), (65, 63, 1.0, 1000.0), (1, 49152, 1.0, 16.0)]
        {
            out.push(Box::new(SoftmaxCase { p: SoftmaxParams { rows, dim, scale }, dt, range, tier: Tier::Test }));
        }
        out.push(Box::new(SoftmaxCase {
            p: SoftmaxParams { rows: 32, dim: 49152, scale: 1.0 },
            dt,
            range: 16.0,
            tier: Tier::Bench,
        }));
        for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
            let r = |tokens, heads, head_dim, rot_dim, theta| RopeParams {
                tokens,
                heads,
                head_dim,
                rot_dim,
                theta,
                freq_scale: 1.0,
                layout,
            };
            for (p, max_pos) in [
                (r(1, 1, 2, 2, 10000.0), 1),
                (r(7, 9, 64, 64, 100000.0), 4096),
                (r(5, 3, 72, 72, 10000.0), 1000),
                (r(3, 1, 256, 256, 1_000_000.0), 4096),
                (r(4, 2, 64, 32, 10000.0), 2048),
                (r(17, 3, 128, 128, 500000.0), 4096),
            ] {
                out.push(Box::new(RopeCase { p, dt, max_pos, angles: false, row_extra: 0, tier: Tier::Test }));
            }
            let bench = r(512, 9, 64, 64, 100000.0);
            out.push(Box::new(RopeCase {
                p: bench,
                dt,
                max_pos: 4096,
                angles: false,
                row_extra: 0,
                tier: Tier::Bench,
            }));
            // Angle tables: a vision tower's heads (16 and 80 wide, rows and columns up to 64
            // and 4096), one token, odd token counts.
            for (p, max_pos) in [
                (r(1, 1, 4, 4, 10000.0), 8),
                (r(37, 4, 16, 16, 10000.0), 64),
                (r(19, 3, 80, 80, 10000.0), 4096),
                (r(6, 2, 64, 48, 10000.0), 512),
            ] {
                out.push(Box::new(RopeCase { p, dt, max_pos, angles: true, row_extra: 0, tier: Tier::Test }));
            }
            // Q and K heads (3 + 1 of 32) leading a fused QKV row (one V head after them).
            let qk = r(9, 4, 32, 32, 10000.0);
            out.push(Box::new(RopeCase { p: qk, dt, max_pos: 300, angles: true, row_extra: 32, tier: Tier::Test }));
        }
        for (tokens, vocab, dim, scale) in [(1, 1, 1, 1.0), (7, 1000, 576, 1.0), (17, 4099, 63, 24.0)] {
            out.push(Box::new(EmbedCase { p: EmbedParams { tokens, vocab, dim, scale }, dt, tier: Tier::Test }));
        }
        out.push(Box::new(EmbedCase {
            p: EmbedParams { tokens: 512, vocab: 49152, dim: 576, scale: 1.0 },
            dt,
            tier: Tier::Bench,
        }));
    }
    crate::attention_cases::cases(&mut out);
    crate::quant_cases::cases(&mut out);
    sample_cases(&mut out);
    crate::vision_cases::cases(&mut out);
    crate::audio_cases::cases(&mut out);
    for op in [EltOp::SwiGlu, EltOp::GeGlu] {
        for (rows, f) in [(1, 1), (1, 1536), (7, 2048), (3, 17)] {
            out.push(Box::new(GluPairCase { op, rows, f, interleaved: false }));
        }
        out.push(Box::new(GluPairCase { op, rows: 3, f: 17, interleaved: true }));
        out.push(Box::new(GluPairCase { op, rows: 2, f: 1536, interleaved: true }));
    }
    for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
        for (tokens, heads, kv_heads, head_dim, pos0, norm) in
            [(1, 9, 3, 64, 0, false), (1, 9, 3, 64, 37, false), (5, 4, 1, 256, 2, true), (3, 4, 4, 72, 1000, true)]
        {
            let p = flint_ref::rope::RopeQkvParams {
                tokens,
                heads,
                kv_heads,
                head_dim,
                theta: 10000.0,
                freq_scale: 1.0,
                layout,
                qk_norm_eps: norm.then_some(1e-6),
            };
            out.push(Box::new(RopeQkvCase { p, pos0 }));
        }
    }
    // Rows of 576 and 640 (SmolLM2, Gemma 3) keep the second half's offset aligned for binding.
    for (rows, dim) in [(1, 576), (7, 640), (3, 512)] {
        for (add, post_norm) in [(false, false), (true, false), (true, true)] {
            let p = flint_ref::norm::AddNormParams { rows, dim, eps: 1e-6, post_norm, add };
            out.push(Box::new(AddNormCase { p }));
        }
    }
    out.sort_by_key(|c| c.tier() == Tier::Bench);
    out
}

/// Token sampling against the reference: each row's seed is chosen so its draw lies at least
/// 1e-4 from the edges of the chosen token's interval, so f32 rounding cannot flip the pick.
pub struct SampleCase {
    /// Shape and sampling values.
    pub p: flint_ref::sample::SampleParams,
    /// Make several logits equal to the maximum (ties go to the lower id).
    pub ties: bool,
}

impl SampleCase {
    fn logits(&self) -> Vec<f32> {
        let mut rng = Rng::from_name(&self.name());
        let mut l = rng.vec(self.p.rows * self.p.vocab, -6.0, 6.0);
        if self.ties {
            for row in l.chunks_exact_mut(self.p.vocab) {
                let n = row.len();
                row[n / 2] = 9.0;
                row[n / 3] = 9.0;
            }
        }
        l
    }

    fn seeds(&self, logits: &[f32]) -> Vec<(u32, u32)> {
        let one = flint_ref::sample::SampleParams { rows: 1, ..self.p };
        (0..self.p.rows)
            .map(|r| {
                let row = &logits[r * self.p.vocab..][..self.p.vocab];
                (0u32..)
                    .map(|s| (s * 7919 + r as u32, 3))
                    .find(|&(seed, step)| {
                        let c = flint_ref::sample::sample(&one, row, &[(seed, step)]).expect("valid")[0];
                        let u = f64::from(flint_ref::sample::uniform(seed, step));
                        u - c.interval.0 > 1e-4 && c.interval.1 - u > 1e-4
                    })
                    .expect("some seed lands inside an interval")
            })
            .collect()
    }
}

impl Case for SampleCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!(
            "sample_{}x{}_t{}_k{}_p{}{}",
            p.rows,
            p.vocab,
            p.temperature,
            p.top_k,
            p.top_p,
            if self.ties { "_ties" } else { "" }
        )
    }
    fn op(&self) -> &'static str {
        "sample"
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        4.0 * (self.p.rows * self.p.vocab) as f64
    }
    fn bytes(&self) -> f64 {
        (4 * self.p.rows * self.p.vocab) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let logits = self.logits();
        let seeds: Vec<u32> = self.seeds(&logits).into_iter().flat_map(|(s, t)| [s, t]).collect();
        vec![
            Input::float("logits", &[self.p.rows, self.p.vocab], DType::F32, logits),
            Input::ints("rng", &[self.p.rows, 2], seeds),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let rng: Vec<(u32, u32)> = inputs[1].u32s().chunks_exact(2).map(|c| (c[0], c[1])).collect();
        let picks = flint_ref::sample::sample(&self.p, inputs[0].f32s(), &rng)?;
        Ok(picks.iter().flat_map(|c| [c.token as f32, c.logprob]).collect())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.rows, 2], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::sample::sample(dev, rec, &self.p, &t[0], &t[1], out)
    }
}

/// Sampling cases.
pub fn sample_cases(out: &mut Vec<Box<dyn Case>>) {
    use flint_ref::sample::SampleParams as S;
    let s = |rows, vocab, temperature, top_k, top_p| S { rows, vocab, temperature, top_k, top_p };
    for p in [
        s(1, 7, 0.0, 0, 1.0),
        s(3, 1000, 0.0, 0, 1.0),
        s(2, 49152, 0.0, 0, 1.0),
        s(4, 1000, 0.7, 0, 1.0),
        s(4, 1000, 1.5, 40, 0.9),
        s(16, 1000, 1.0, 1, 1.0),
        s(5, 49152, 0.8, 50, 0.95),
        s(3, 4099, 1.2, 0, 0.5),
        s(2, 7, 2.0, 3, 1.0),
    ] {
        out.push(Box::new(SampleCase { p, ties: false }));
    }
    out.push(Box::new(SampleCase { p: s(3, 1000, 0.0, 0, 1.0), ties: true }));
    out.push(Box::new(SampleCase { p: s(3, 1000, 0.5, 2, 1.0), ties: true }));
}

/// The fused residual step: the output buffer holds the updated x then the normalised rows.
pub struct AddNormCase {
    /// Shape and options.
    pub p: flint_ref::norm::AddNormParams,
}

impl Case for AddNormCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!(
            "add_norm_{}x{}{}{}",
            p.rows,
            p.dim,
            if p.add { "_add" } else { "" },
            if p.post_norm { "_post" } else { "" }
        )
    }
    fn op(&self) -> &'static str {
        "norm"
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        (10 * self.p.rows * self.p.dim) as f64
    }
    fn bytes(&self) -> f64 {
        (16 * self.p.rows * self.p.dim) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.rows * self.p.dim;
        // x then room for the normalised rows, updated in place.
        let mut xo = rng.vec(n, -2.0, 2.0);
        xo.extend(vec![0.0; n]);
        vec![
            Input::float("x|out", &[2 * n], DType::F32, xo),
            Input::float("y", &[n], DType::F32, rng.vec(n, -2.0, 2.0)),
            Input::float("post", &[self.p.dim], DType::F32, rng.vec(self.p.dim, 0.5, 1.5)),
            Input::float("w", &[self.p.dim], DType::F32, rng.vec(self.p.dim, 0.5, 1.5)),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let n = self.p.rows * self.p.dim;
        let (x, out) = flint_ref::norm::add_norm(
            &self.p,
            &inputs[0].f32s()[..n],
            self.p.add.then(|| inputs[1].f32s()),
            self.p.post_norm.then(|| inputs[2].f32s()),
            inputs[3].f32s(),
        )?;
        Ok(x.into_iter().chain(out).collect())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![2 * self.p.rows * self.p.dim], DType::F32)
    }
    fn in_place(&self) -> Option<usize> {
        Some(0)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let n = self.p.rows * self.p.dim;
        let x = out.view(0, &[n], DType::F32)?;
        let o = out.view(4 * n as u64, &[n], DType::F32)?;
        let y = self.p.add.then(|| &t[1]);
        let post = self.p.post_norm.then(|| &t[2]);
        flint_kernels::norm::add_norm(dev, rec, &self.p, &x, y, post, &t[3], &o)
    }
}

/// A gated unit over paired rows (gate then up in one row).
pub struct GluPairCase {
    /// SwiGlu or GeGlu.
    pub op: EltOp,
    /// Rows.
    pub rows: usize,
    /// Output columns.
    pub f: usize,
    /// Gate and up values alternate in a row (else the gate's, then the up's).
    pub interleaved: bool,
}

impl Case for GluPairCase {
    fn name(&self) -> String {
        let il = if self.interleaved { "_interleaved" } else { "" };
        format!("{}_pair{il}_f32_{}x{}", self.op.name(), self.rows, self.f)
    }
    fn op(&self) -> &'static str {
        "elementwise"
    }
    fn tolerance(&self) -> Tolerance {
        F32_TOL
    }
    fn flops(&self) -> f64 {
        (10 * self.rows * self.f) as f64
    }
    fn bytes(&self) -> f64 {
        (12 * self.rows * self.f) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.rows * 2 * self.f;
        vec![Input::float("gate|up", &[self.rows, 2 * self.f], DType::F32, rng.vec(n, -6.0, 6.0))]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        if self.interleaved {
            flint_ref::elementwise::glu_interleaved(self.op, self.rows, self.f, inputs[0].f32s())
        } else {
            flint_ref::elementwise::glu_pair(self.op, self.rows, self.f, inputs[0].f32s())
        }
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.rows, self.f], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        if self.interleaved {
            flint_kernels::elementwise::glu_interleaved(dev, rec, self.op, self.rows, self.f, &t[0], out)
        } else {
            flint_kernels::elementwise::glu_pair(dev, rec, self.op, self.rows, self.f, &t[0], out)
        }
    }
}

/// The fused QKV step. The output buffer holds Q then the K pool then the V pool (each section
/// 256-byte aligned); pool slots no token is written to must stay NaN.
pub struct RopeQkvCase {
    /// Shape.
    pub p: flint_ref::rope::RopeQkvParams,
    /// Position of the first token.
    pub pos0: usize,
}

impl RopeQkvCase {
    pub(crate) const PAGE: usize = 4;
    /// Pages of sequence 0, in a shuffled order; one spare page.
    pub(crate) fn pages(&self) -> Vec<u32> {
        let n = (self.pos0 + self.p.tokens).div_ceil(Self::PAGE);
        (0..n as u32).rev().collect()
    }
    pub(crate) fn num_pages(&self) -> usize {
        self.pages().len() + 1
    }
    /// Where K's norm weights start in the norms input: past Q's (head sizes up to 256), at a
    /// 256-byte boundary, where WebGPU binds.
    pub(crate) const K_NORM_AT: usize = 256;

    pub(crate) fn sections(&self) -> (usize, usize, usize) {
        let pad = |n: usize| n.div_ceil(64) * 64;
        let q = pad(self.p.tokens * self.p.heads * self.p.head_dim);
        let pool = pad(self.num_pages() * Self::PAGE * self.p.kv_heads * self.p.head_dim);
        (q, pool, q + 2 * pool)
    }
}

impl Case for RopeQkvCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!(
            "rope_qkv_{}_{}x{}+{}x{}_pos{}{}",
            p.layout.name(),
            p.tokens,
            p.heads,
            p.kv_heads,
            p.head_dim,
            self.pos0,
            if p.qk_norm_eps.is_some() { "_qknorm" } else { "" }
        )
    }
    fn op(&self) -> &'static str {
        "rope"
    }
    fn tolerance(&self) -> Tolerance {
        ROPE_F32_TOL
    }
    fn flops(&self) -> f64 {
        (8 * self.p.tokens * self.p.row()) as f64
    }
    fn bytes(&self) -> f64 {
        (8 * self.p.tokens * self.p.row()) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let mut rng = Rng::from_name(&self.name());
        let n = self.p.tokens * self.p.row();
        let d = self.p.head_dim;
        let pos: Vec<u32> = (0..self.p.tokens).map(|t| (self.pos0 + t) as u32).collect();
        vec![
            Input::float("qkv", &[n], DType::F32, rng.vec(n, -2.0, 2.0)),
            Input::ints("positions", &[self.p.tokens], pos),
            // Q's norm weights, then K's at the next 256-byte boundary (WebGPU binds there).
            Input::float("norms", &[Self::K_NORM_AT + d], DType::F32, rng.vec(Self::K_NORM_AT + d, 0.5, 1.5)),
        ]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        let d = self.p.head_dim;
        let norms = inputs[2].f32s();
        let (q, k, v) = flint_ref::rope::rope_qkv(
            &self.p,
            inputs[0].f32s(),
            inputs[1].u32s(),
            Some((&norms[..d], &norms[Self::K_NORM_AT..])),
        )?;
        let (qs, pool, total) = self.sections();
        let mut out = vec![f32::NAN; total];
        out[..q.len()].copy_from_slice(&q);
        let pages = self.pages();
        let row = self.p.kv_heads * d;
        for t in 0..self.p.tokens {
            let pos = self.pos0 + t;
            let slot = pages[pos / Self::PAGE] as usize * Self::PAGE + pos % Self::PAGE;
            out[qs + slot * row..][..row].copy_from_slice(&k[t * row..][..row]);
            out[qs + pool + slot * row..][..row].copy_from_slice(&v[t * row..][..row]);
        }
        Ok(out)
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.sections().2], DType::F32)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        let d = self.p.head_dim;
        let (qs, pool, _) = self.sections();
        let shape = [self.num_pages(), Self::PAGE, self.p.kv_heads, d];
        let pool_n = shape.iter().product::<usize>();
        let q_out = out.view(0, &[self.p.tokens * self.p.heads * d], DType::F32)?;
        let k = out.view(4 * qs as u64, &[pool_n], DType::F32)?;
        let v = out.view(4 * (qs + pool) as u64, &[pool_n], DType::F32)?;
        let cache = flint_kernels::attention::KvCache { k, v, page_size: Self::PAGE, num_pages: self.num_pages() };
        let table = flint_kernels::attention::PageTable::new(dev, &[self.pages()], self.num_pages())?;
        let dest: Vec<(usize, usize)> = (0..self.p.tokens).map(|t| (0, self.pos0 + t)).collect();
        let qn = t[2].view(0, &[d], DType::F32)?;
        let kn = t[2].view(4 * Self::K_NORM_AT as u64, &[d], DType::F32)?;
        let norms = self.p.qk_norm_eps.map(|_| (&qn, &kn));
        flint_kernels::rope::rope_qkv(dev, rec, &self.p, &t[0], &t[1], &dest, &cache, &table, norms, &q_out)
    }
}
