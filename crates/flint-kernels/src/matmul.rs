//! Matmul launcher: `C = A x B^T (+ bias)`, batched, with three strategies (see
//! `shaders/matmul.wgsl`) and a rule that picks one from the shape and the adapter.

use flint_gpu::{Caps, DType, Device, GpuError, PipelineKey, Recorder, Result, Tensor};
use flint_ref::matmul::MatmulParams;

use crate::{
    FLOATS, Needs, Variant, check_tensor, fixed_subgroup, needs_for, param_err, registry, require, typed_key, u32_of,
};

/// How a matmul is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Workgroup-memory tiles with register blocking; runs everywhere.
    Tiled,
    /// Subgroup-shuffle row sharing with register blocking; needs a fixed subgroup size.
    Subgroup,
    /// Split-k matrix-vector product for at most [`MATVEC_MAX_ROWS`] rows.
    Matvec,
}

impl Strategy {
    /// Every strategy, fallback first.
    pub const ALL: [Strategy; 3] = [Strategy::Tiled, Strategy::Subgroup, Strategy::Matvec];

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Tiled => "tiled",
            Strategy::Subgroup => "subgroup",
            Strategy::Matvec => "matvec",
        }
    }
}

/// Most rows of A the matvec strategy takes.
pub const MATVEC_MAX_ROWS: usize = 8;

/// Tiled kernel: tile rows, tile columns, rows and columns per invocation, vec4s of k per slice.
const TILED: (u32, u32, u32, u32, u32) = (64, 64, 4, 4, 4);
/// Subgroup kernel: invocations per workgroup, row blocks per subgroup (each lane owns four
/// columns). On lavapipe RB = 2 measured 32 GFLOP/s against 23 for RB = 1 and 11 for RB = 3
/// (spills) before the k loop was unrolled.
const SUBGROUP_WG: u32 = 64;
const SUBGROUP_COLS: u32 = 4;
const SUBGROUP_RB: u32 = 2;
/// Matvec: invocations per workgroup, output columns per subgroup (or workgroup).
const MATVEC_WG: u32 = 64;
const MATVEC_NR: u32 = 2;

/// The uniform block of `matmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    pad: u32,
}

/// Why `strategy` cannot run `p` on `caps`, or `None` when it can.
pub fn unsupported(caps: &Caps, p: &MatmulParams, strategy: Strategy) -> Option<String> {
    match strategy {
        Strategy::Tiled => None,
        Strategy::Subgroup => {
            if !caps.subgroups {
                Some("adapter lacks SUBGROUP".into())
            } else if fixed_subgroup(caps).is_none() {
                Some(format!(
                    "subgroup size varies ({}..{}); the subgroup matmul needs a fixed size",
                    caps.subgroup_min_size, caps.subgroup_max_size
                ))
            } else {
                None
            }
        }
        Strategy::Matvec => {
            (p.m > MATVEC_MAX_ROWS).then(|| format!("matvec takes at most {MATVEC_MAX_ROWS} rows, got {}", p.m))
        }
    }
}

/// The strategy the launcher picks: matvec for a few rows, the subgroup kernel where the
/// subgroup size is fixed, the tiled kernel otherwise.
pub fn choose(caps: &Caps, p: &MatmulParams) -> Strategy {
    if p.m <= MATVEC_MAX_ROWS {
        Strategy::Matvec
    } else if unsupported(caps, p, Strategy::Subgroup).is_none() {
        Strategy::Subgroup
    } else {
        Strategy::Tiled
    }
}

/// Options that select a compiled variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    strategy: Strategy,
    a: DType,
    b: DType,
    c: DType,
    vec4: bool,
    bias: bool,
    /// Subgroup size for [`Strategy::Subgroup`]; whether subgroups exist for [`Strategy::Matvec`].
    subgroup: u32,
    /// Rows for [`Strategy::Matvec`].
    rows: u32,
}

impl Config {
    fn key(&self) -> PipelineKey {
        let entry = match self.strategy {
            Strategy::Tiled => "matmul_tiled",
            Strategy::Subgroup => "matmul_subgroup",
            Strategy::Matvec => "matvec",
        };
        let wg = match self.strategy {
            Strategy::Tiled => 0,
            Strategy::Subgroup => SUBGROUP_WG.max(self.subgroup),
            Strategy::Matvec => MATVEC_WG,
        };
        let key = typed_key("matmul.wgsl", entry, wg, &[("TA", self.a), ("TB", self.b), ("TC", self.c)])
            .flag("VEC4", self.vec4)
            .flag("BIAS", self.bias);
        match self.strategy {
            Strategy::Tiled => {
                let (bm, bn, tm, tn, bk4) = TILED;
                key.flag("TILED", true)
                    .define("BM", bm)
                    .define("BN", bn)
                    .define("TM", tm)
                    .define("TN", tn)
                    .define("BK4", bk4)
            }
            Strategy::Subgroup => key.flag("SUBGROUP_MM", true).define("SG", self.subgroup).define("RB", SUBGROUP_RB),
            Strategy::Matvec => key
                .flag("MATVEC", true)
                .flag("SUBGROUPS", self.subgroup > 0)
                .define("MR", self.rows)
                .define("NR", MATVEC_NR),
        }
    }

    fn needs(&self) -> Needs {
        let sub = match self.strategy {
            Strategy::Tiled => false,
            Strategy::Subgroup | Strategy::Matvec => self.subgroup > 0,
        };
        needs_for(&[self.a, self.b, self.c], sub)
    }
}

/// Every matmul variant the launcher can build.
pub fn variants() -> Vec<Variant> {
    let types = [
        (DType::F32, DType::F32, DType::F32),
        (DType::F16, DType::F16, DType::F16),
        (DType::F32, DType::F16, DType::F32),
    ];
    let mut out = Vec::new();
    for (a, b, c) in types {
        for vec4 in [false, true] {
            for bias in [false, true] {
                let base = Config { strategy: Strategy::Tiled, a, b, c, vec4, bias, subgroup: 0, rows: 1 };
                let mut configs = vec![base];
                configs.extend([8, 32].map(|sg| Config { strategy: Strategy::Subgroup, subgroup: sg, ..base }));
                for rows in 1..=MATVEC_MAX_ROWS as u32 {
                    for sg in [0, 8] {
                        configs.push(Config { strategy: Strategy::Matvec, subgroup: sg, rows, ..base });
                    }
                }
                for cfg in configs {
                    let name = format!(
                        "matmul/{} {}x{}->{}{}{}{}",
                        cfg.strategy.name(),
                        a,
                        b,
                        c,
                        if vec4 { " vec4" } else { "" },
                        if bias { " bias" } else { "" },
                        match cfg.strategy {
                            Strategy::Tiled => String::new(),
                            Strategy::Subgroup => format!(" sg{}", cfg.subgroup),
                            Strategy::Matvec =>
                                format!(" rows{}{}", cfg.rows, if cfg.subgroup > 0 { " subgroups" } else { "" }),
                        }
                    );
                    out.push(Variant { name, key: cfg.key(), needs: cfg.needs() });
                }
            }
        }
    }
    out
}

/// Record `c = a x b^T (+ bias)` with the strategy [`choose`] picks.
pub fn matmul(
    dev: &Device,
    rec: &mut Recorder,
    p: &MatmulParams,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<()> {
    matmul_with(dev, rec, p, choose(dev.caps(), p), a, b, bias, c)
}

/// Record `c = a x b^T (+ bias)` with a given strategy.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    dev: &Device,
    rec: &mut Recorder,
    p: &MatmulParams,
    strategy: Strategy,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    check_tensor("matmul", "A", a, p.a_len(), FLOATS)?;
    check_tensor("matmul", "B", b, p.b_len(), FLOATS)?;
    check_tensor("matmul", "C", c, p.c_len(), FLOATS)?;
    match (p.bias, bias) {
        (true, Some(t)) => check_tensor("matmul", "bias", t, p.n, &[b.dtype()])?,
        (false, None) => {}
        (true, None) => {
            return Err(GpuError::Shape {
                what: "matmul".into(),
                message: "params ask for a bias but none was given".into(),
            });
        }
        (false, Some(_)) => {
            return Err(GpuError::Shape {
                what: "matmul".into(),
                message: "a bias was given but params have bias = false".into(),
            });
        }
    }
    if let Some(why) = unsupported(dev.caps(), p, strategy) {
        return Err(GpuError::Unsupported {
            adapter: dev.caps().short_label(),
            feature: "matmul strategy",
            what: format!("{}: {why}", strategy.name()),
        });
    }
    let caps = dev.caps();
    let subgroup = match strategy {
        Strategy::Tiled => 0,
        Strategy::Subgroup => fixed_subgroup(caps).unwrap_or(0),
        Strategy::Matvec => u32::from(caps.subgroups) * caps.subgroup_max_size.max(1),
    };
    let cfg = Config {
        strategy,
        a: a.dtype(),
        b: b.dtype(),
        c: c.dtype(),
        vec4: p.k.is_multiple_of(4),
        bias: p.bias,
        // The matvec variant only distinguishes "has subgroups" (8 stands for any size).
        subgroup: if strategy == Strategy::Matvec && subgroup > 0 { 8 } else { subgroup },
        rows: u32_of(p.m),
    };
    require(dev, cfg.needs(), "matmul")?;
    let kernel = dev.kernel(registry(), &cfg.key())?;
    let uniform = Uniform {
        m: u32_of(p.m),
        n: u32_of(p.n),
        k: u32_of(p.k),
        batch: u32_of(p.batch),
        a_batch: u32_of(p.m * p.k),
        b_batch: if p.b_batched { u32_of(p.n * p.k) } else { 0 },
        c_batch: u32_of(p.m * p.n),
        pad: 0,
    };
    let batch = u32_of(p.batch);
    let (m, n) = (u32_of(p.m), u32_of(p.n));
    let groups = match strategy {
        Strategy::Tiled => [n.div_ceil(TILED.1), m.div_ceil(TILED.0), batch],
        Strategy::Subgroup => {
            let wg = SUBGROUP_WG.max(subgroup);
            [n.div_ceil(wg * SUBGROUP_COLS), m.div_ceil(subgroup * SUBGROUP_RB), batch]
        }
        Strategy::Matvec => {
            // Columns one workgroup covers, counting the fewest subgroups it can have.
            let per_group = MATVEC_NR * MATVEC_WG.checked_div(subgroup).map_or(1, |n| n.max(1));
            let [x, y, _] = dev.grid(n.div_ceil(per_group));
            [x, y, batch]
        }
    };
    let mut tensors = vec![a, b, c];
    if let Some(bias) = bias {
        tensors.push(bias);
    }
    rec.dispatch(&format!("matmul/{} {}x{}x{}", strategy.name(), p.m, p.n, p.k), &kernel, &uniform, &tensors, groups)
}
