//! flint's conformance table: one list of cases drives the tests (`cargo test`), the
//! `flint conformance` report and the `flint bench` measurements.
//!
//! A case names its op, dtype and shape, makes seeded inputs (already rounded to the dtype, so
//! the reference sees exactly what the GPU sees), computes the f64 CPU reference, launches the
//! kernel and declares its tolerance, FLOPs and bytes. Outputs are written into a buffer whose
//! elements and surrounding guard bands start as NaN: a kernel that skips an element or writes
//! out of bounds fails.

#![warn(missing_docs)]

/// The four [`Case`] methods of a case over one float dtype (`self.dt`) in a tier
/// (`self.tier`): its name, the tier, skipped without f16, the dtype's tolerance.
macro_rules! float_case {
    () => {
        fn dtype(&self) -> String {
            self.dt.name().into()
        }
        fn tier(&self) -> crate::Tier {
            self.tier
        }
        fn unsupported(&self, caps: &flint_gpu::Caps) -> Option<String> {
            crate::cases::f16_reason(caps, &[self.dt])
        }
        fn tolerance(&self) -> crate::Tolerance {
            crate::cases::tol_for(self.dt)
        }
    };
}

mod attention_cases;
mod audio_cases;
pub mod cases;
mod compare;
mod quant_cases;
mod rng;
mod run;
mod vision_cases;

pub use compare::{Comparison, Tolerance, compare};
pub use rng::Rng;
pub use run::{
    BenchReport, CaseReport, Roofline, Status, bench_case, bench_case_async, measure_roofline, measure_roofline_async,
    run_case, run_case_async,
};

use flint_gpu::{Caps, DType, Device, Recorder, Tensor};

/// Whether a case is part of the test run or only of benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Small enough for every `cargo test` on every adapter.
    Test,
    /// Large shapes for `flint bench` (and `flint conformance --bench-cases`).
    Bench,
}

/// Host data of one kernel input.
#[derive(Clone, Debug)]
pub enum HostData {
    /// Float values (already representable in the tensor's dtype).
    F32(Vec<f32>),
    /// Integer values (ids, positions).
    U32(Vec<u32>),
}

/// One input of a case.
#[derive(Clone, Debug)]
pub struct Input {
    /// Name for errors.
    pub name: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Storage dtype on the GPU.
    pub dtype: DType,
    /// Values.
    pub data: HostData,
}

impl Input {
    /// A float input of `dtype`; values are rounded to it.
    pub fn float(name: &'static str, shape: &[usize], dtype: DType, values: Vec<f32>) -> Self {
        Input { name, shape: shape.to_vec(), dtype, data: HostData::F32(round_to(values, dtype)) }
    }

    /// A u32 input.
    pub fn ints(name: &'static str, shape: &[usize], values: Vec<u32>) -> Self {
        Input { name, shape: shape.to_vec(), dtype: DType::U32, data: HostData::U32(values) }
    }

    /// The float values (empty for integer inputs).
    pub fn f32s(&self) -> &[f32] {
        match &self.data {
            HostData::F32(v) => v,
            HostData::U32(_) => &[],
        }
    }

    /// The integer values (empty for float inputs).
    pub fn u32s(&self) -> &[u32] {
        match &self.data {
            HostData::U32(v) => v,
            HostData::F32(_) => &[],
        }
    }

    /// Upload to `dev`.
    pub fn upload(&self, dev: &Device) -> flint_gpu::Result<Tensor> {
        match &self.data {
            HostData::F32(v) => dev.upload_f32(self.name, v, &self.shape, self.dtype),
            HostData::U32(v) => dev.upload_u32(self.name, v, &self.shape),
        }
    }
}

/// Round values to what `dtype` can hold.
pub fn round_to(values: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => values.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect(),
        _ => values,
    }
}

/// One conformance case.
pub trait Case: Send + Sync {
    /// Unique printed name, e.g. `matmul_tiled_f16_65x17x63`.
    fn name(&self) -> String;
    /// The op family, e.g. `matmul` (what `--op` filters on).
    fn op(&self) -> &'static str;
    /// The dtype label the case is about (`f32`, `f16`, or a mix such as `f32xf16`); `f32`
    /// unless the case says otherwise.
    fn dtype(&self) -> String {
        "f32".into()
    }
    /// Test or bench tier.
    fn tier(&self) -> Tier {
        Tier::Test
    }
    /// Why this adapter cannot run the case, or `None` (the default: every adapter can).
    fn unsupported(&self, _caps: &Caps) -> Option<String> {
        None
    }
    /// Accepted error.
    fn tolerance(&self) -> Tolerance;
    /// Floating point operations of one launch.
    fn flops(&self) -> f64;
    /// Bytes one launch must move at least.
    fn bytes(&self) -> f64;
    /// Seeded inputs.
    fn inputs(&self) -> Vec<Input>;
    /// The expected output from the CPU reference.
    fn reference(&self, inputs: &[Input]) -> Result<Vec<f32>, flint_ref::ParamError>;
    /// Shape and dtype of the output.
    fn output(&self) -> (Vec<usize>, DType);
    /// Which input the kernel updates in place (the output then starts as that input).
    fn in_place(&self) -> Option<usize> {
        None
    }
    /// Record the kernel. For in-place cases `out` is the tensor to update.
    fn launch(&self, dev: &Device, rec: &mut Recorder, inputs: &[Tensor], out: &Tensor) -> flint_gpu::Result<()>;
}
