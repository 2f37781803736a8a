//! flint's kernels: WGSL sources from `shaders/`, one module per op family with its launcher,
//! its variant choice and the list of every variant it can build.
//!
//! A launcher takes the op's Params (from `flint_ref`, shared with the CPU reference), checks
//! tensors against them and records a dispatch; it never panics on bad input.
//!
//! ```no_run
//! use flint_gpu::{DType, Device, Recorder};
//! use flint_ref::matmul::MatmulParams;
//! let dev = Device::open("")?;
//! let p = MatmulParams::new(2, 3, 4);
//! let a = dev.upload_f32("a", &[1.0; 8], &[2, 4], DType::F32)?;
//! let b = dev.upload_f32("b", &[1.0; 12], &[3, 4], DType::F32)?;
//! let c = dev.empty("c", &[2, 3], DType::F32)?;
//! let mut rec = Recorder::new(&dev);
//! flint_kernels::matmul::matmul(&dev, &mut rec, &p, &a, &b, None, &c)?;
//! rec.submit()?.wait()?;
//! assert_eq!(dev.read_f32(&c)?, vec![4.0; 6]);
//! # Ok::<(), flint_gpu::GpuError>(())
//! ```

#![warn(missing_docs)]

use std::sync::LazyLock;

use flint_gpu::{Caps, DType, Device, GpuError, PipelineKey, Result, ShaderRegistry, Tensor};
use flint_ref::ParamError;

pub mod attention;
pub mod audio;
pub mod elementwise;
pub mod embed;
pub mod matmul;
pub mod norm;
pub mod quant;
pub mod roofline;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod vision;

/// Every WGSL file of flint, by name.
pub const SHADER_FILES: &[(&str, &str)] = &[
    ("attention.wgsl", include_str!("../../../shaders/attention.wgsl")),
    ("audio.wgsl", include_str!("../../../shaders/audio.wgsl")),
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl")),
    ("elementwise.wgsl", include_str!("../../../shaders/elementwise.wgsl")),
    ("embed.wgsl", include_str!("../../../shaders/embed.wgsl")),
    ("kvcache.wgsl", include_str!("../../../shaders/kvcache.wgsl")),
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    ("merge.wgsl", include_str!("../../../shaders/merge.wgsl")),
    ("norm.wgsl", include_str!("../../../shaders/norm.wgsl")),
    ("quant.wgsl", include_str!("../../../shaders/quant.wgsl")),
    ("roofline.wgsl", include_str!("../../../shaders/roofline.wgsl")),
    ("rope.wgsl", include_str!("../../../shaders/rope.wgsl")),
    ("sample.wgsl", include_str!("../../../shaders/sample.wgsl")),
    ("softmax.wgsl", include_str!("../../../shaders/softmax.wgsl")),
    ("vision.wgsl", include_str!("../../../shaders/vision.wgsl")),
];

static REGISTRY: LazyLock<ShaderRegistry> = LazyLock::new(|| {
    let Some(dir) = std::env::var_os("FLINT_SHADER_DIR") else {
        return ShaderRegistry::new(SHADER_FILES);
    };
    // Kernel development: read the sources from disk (a file that cannot be read keeps the
    // built-in copy). Leaked once per process, as the registry lives as long as the process.
    let files: Vec<(&'static str, &'static str)> = SHADER_FILES
        .iter()
        .map(|&(name, builtin)| {
            let text = std::fs::read_to_string(std::path::Path::new(&dir).join(name)).ok();
            (name, text.map_or(builtin, |t| &*Box::leak(t.into_boxed_str())))
        })
        .collect();
    ShaderRegistry::new(&files)
});

/// The registry over [`SHADER_FILES`], or over the files in `FLINT_SHADER_DIR` when that is set
/// (for editing kernels without rebuilding).
pub fn registry() -> &'static ShaderRegistry {
    &REGISTRY
}

/// What a variant needs from the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `SHADER_F16`.
    pub f16: bool,
    /// `SUBGROUP`.
    pub subgroups: bool,
}

impl Needs {
    /// Why `caps` cannot run a variant with these needs, or `None` if it can.
    pub fn missing(&self, caps: &Caps) -> Option<&'static str> {
        if self.f16 && !caps.f16 {
            Some("adapter lacks SHADER_F16")
        } else if self.subgroups && !caps.subgroups {
            Some("adapter lacks SUBGROUP")
        } else {
            None
        }
    }
}

/// One buildable kernel variant: a name for reports and the pipeline key.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Readable name, e.g. `matmul/subgroup f16 vec4 bias`.
    pub name: String,
    /// What it compiles from.
    pub key: PipelineKey,
    /// What the adapter must have.
    pub needs: Needs,
}

/// Every variant every launcher can build; each must pass naga validation.
pub fn all_variants() -> Vec<Variant> {
    let mut v = Vec::new();
    v.extend(matmul::variants());
    v.extend(attention::variants());
    v.extend(elementwise::variants());
    v.extend(norm::variants());
    v.extend(norm::add_norm_variants());
    v.extend(quant::variants());
    v.extend(softmax::variants());
    v.extend(rope::variants());
    v.extend(rope::qkv_variants());
    v.extend(embed::variants());
    v.extend(roofline::variants());
    v.extend(sample::variants());
    v.extend(vision::variants());
    v.extend(audio::variants());
    v
}

/// The WGSL name of a float storage type.
pub(crate) fn wgsl_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::F32 => "f32",
        DType::U32 => "u32",
    }
}

/// Key for `entry` of `shader` with workgroup size `wg` and type defines `(NAME, dtype)`;
/// defines ENABLE_F16 when any of them is f16.
pub(crate) fn typed_key(shader: &str, entry: &str, wg: u32, types: &[(&str, DType)]) -> PipelineKey {
    let mut key = PipelineKey::new(shader, entry).define("WG", wg);
    for (name, dt) in types {
        key = key.define(name, wgsl_type(*dt));
    }
    key.flag("ENABLE_F16", types.iter().any(|(_, d)| *d == DType::F16))
}

/// The subgroup size when the adapter fixes one that a workgroup can be made of (4 to 64
/// lanes): what the subgroup variants of matmul, quantized matmul, attention and the norms need.
pub(crate) fn fixed_subgroup(caps: &Caps) -> Option<u32> {
    (caps.subgroups && caps.subgroup_min_size == caps.subgroup_max_size && (4..=64).contains(&caps.subgroup_min_size))
        .then_some(caps.subgroup_min_size)
}

/// Needs of a kernel over these dtypes.
pub(crate) fn needs_for(dtypes: &[DType], subgroups: bool) -> Needs {
    Needs { f16: dtypes.contains(&DType::F16), subgroups }
}

/// Turn a Params error into the GPU layer's error type.
pub(crate) fn param_err(e: ParamError) -> GpuError {
    GpuError::Shape { what: e.op.to_string(), message: e.message }
}

/// Check that `t` holds `numel` elements of a float dtype in `allowed`.
pub(crate) fn check_tensor(op: &str, what: &str, t: &Tensor, numel: usize, allowed: &[DType]) -> Result<()> {
    if !allowed.contains(&t.dtype()) {
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        return Err(GpuError::Shape {
            what: format!("{op} {what}"),
            message: format!("dtype {} is not one of {}", t.dtype(), names.join(", ")),
        });
    }
    if t.numel() != numel {
        return Err(GpuError::Shape {
            what: format!("{op} {what}"),
            message: format!("has {} elements (shape {:?}), the params need {numel}", t.numel(), t.shape()),
        });
    }
    Ok(())
}

/// Fail early with a clear error when a variant's needs are not met.
pub(crate) fn require(dev: &Device, needs: Needs, what: &str) -> Result<()> {
    let caps = dev.caps();
    if needs.f16 && !caps.f16 {
        return Err(GpuError::Unsupported { adapter: caps.short_label(), feature: "SHADER_F16", what: what.into() });
    }
    if needs.subgroups && !caps.subgroups {
        return Err(GpuError::Unsupported { adapter: caps.short_label(), feature: "SUBGROUP", what: what.into() });
    }
    Ok(())
}

/// Float dtypes kernels accept.
pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::F16];

/// `u32` from a usize that Params validation has bounded.
pub(crate) fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
