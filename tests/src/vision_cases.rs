//! Vision data movement: patch extraction (with images whose sides are odd multiples of the
//! patch, and patches of 7), the pixel shuffle (scales 2, 3 and 4, odd token widths) and the
//! average pool (the same shapes). The first two are pure copies: any tolerance above zero
//! would only hide a wrong index, but the f32 table tolerance is kept so the comparison reads
//! the same as every other case; the pool sums at most 16 values in f32 (f16 inputs: each
//! value is exact in f32, the mean rounds once to f16), well inside the tables' tolerances.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_ref::ParamError;
use flint_ref::vision::{PatchParams, ShuffleParams};

use crate::{Case, Input, Rng, Tier};

struct PatchCase {
    p: PatchParams,
    dt: DType,
    tier: Tier,
}

impl Case for PatchCase {
    fn name(&self) -> String {
        let p = &self.p;
        format!("patches_{}_{}x{}x{}x{}_p{}", self.dt, p.images, p.channels, p.height, p.width, p.patch)
    }
    fn op(&self) -> &'static str {
        "vision"
    }
    float_case!();
    fn flops(&self) -> f64 {
        0.0
    }
    fn bytes(&self) -> f64 {
        let p = &self.p;
        (2 * p.images * p.channels * p.height * p.width * self.dt.size()) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let p = &self.p;
        let mut rng = Rng::from_name(&self.name());
        let n = p.images * p.channels * p.height * p.width;
        vec![Input::float("pixels", &[p.images, p.channels, p.height, p.width], self.dt, rng.vec(n, -1.0, 1.0))]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        flint_ref::vision::patches(&self.p, inputs[0].f32s())
    }
    fn output(&self) -> (Vec<usize>, DType) {
        (vec![self.p.images * self.p.patches(), self.p.row()], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        flint_kernels::vision::patches(dev, rec, &self.p, &t[0], out)
    }
}

struct ShuffleCase {
    p: ShuffleParams,
    dt: DType,
    tier: Tier,
    /// The average pool instead of the shuffle.
    pool: bool,
}

impl Case for ShuffleCase {
    fn name(&self) -> String {
        let p = &self.p;
        let op = if self.pool { "avg_pool" } else { "pixel_shuffle" };
        format!("{op}_{}_{}x{}^2x{}_s{}", self.dt, p.images, p.side, p.dim, p.scale)
    }
    fn op(&self) -> &'static str {
        "vision"
    }
    float_case!();
    fn flops(&self) -> f64 {
        0.0
    }
    fn bytes(&self) -> f64 {
        let p = &self.p;
        (2 * p.images * p.side * p.side * p.dim * self.dt.size()) as f64
    }
    fn inputs(&self) -> Vec<Input> {
        let p = &self.p;
        let mut rng = Rng::from_name(&self.name());
        let n = p.images * p.side * p.side * p.dim;
        vec![Input::float("x", &[p.images, p.side * p.side, p.dim], self.dt, rng.vec(n, -1.0, 1.0))]
    }
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, ParamError> {
        if self.pool {
            flint_ref::vision::avg_pool(&self.p, inputs[0].f32s())
        } else {
            flint_ref::vision::pixel_shuffle(&self.p, inputs[0].f32s())
        }
    }
    fn output(&self) -> (Vec<usize>, DType) {
        let p = &self.p;
        let width = if self.pool { p.dim } else { p.dim * p.scale * p.scale };
        (vec![p.images, p.tokens_out(), width], self.dt)
    }
    fn launch(&self, dev: &Device, rec: &mut Recorder, t: &[Tensor], out: &Tensor) -> flint_gpu::Result<()> {
        if self.pool {
            flint_kernels::vision::avg_pool(dev, rec, &self.p, &t[0], out)
        } else {
            flint_kernels::vision::pixel_shuffle(dev, rec, &self.p, &t[0], out)
        }
    }
}

/// Patch extraction, pixel-shuffle and average-pool cases.
pub fn cases(out: &mut Vec<Box<dyn Case>>) {
    for dt in [DType::F32, DType::F16] {
        let pp = |images, channels, height, width, patch| PatchParams { images, channels, height, width, patch };
        for p in [pp(1, 1, 8, 8, 8), pp(2, 3, 16, 24, 8), pp(3, 3, 21, 35, 7), pp(1, 3, 48, 16, 16)] {
            out.push(Box::new(PatchCase { p, dt, tier: Tier::Test }));
        }
        // SmolVLM's tiles: 512x512, patches of 16.
        out.push(Box::new(PatchCase { p: pp(5, 3, 512, 512, 16), dt, tier: Tier::Bench }));
        let sp = |images, side, dim, scale| ShuffleParams { images, side, dim, scale };
        for pool in [false, true] {
            for p in [sp(1, 4, 1, 2), sp(2, 6, 5, 3), sp(3, 8, 17, 4), sp(1, 2, 63, 1)] {
                out.push(Box::new(ShuffleCase { p, dt, tier: Tier::Test, pool }));
            }
        }
        out.push(Box::new(ShuffleCase { p: sp(5, 32, 768, 4), dt, tier: Tier::Bench, pool: false }));
        // Gemma 3's projector: 64x64 patches of SigLIP's 1152 pooled 4x4 to 256 tokens.
        out.push(Box::new(ShuffleCase { p: sp(1, 64, 1152, 4), dt, tier: Tier::Bench, pool: true }));
    }
}
