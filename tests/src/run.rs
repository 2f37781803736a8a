//! Running a case for correctness (with NaN guard bands) and for time (GPU timestamps, or wall
//! clock where the adapter has none).

use flint_gpu::{DType, Device, Recorder, Tensor};

use crate::{Case, Comparison, HostData, Tier, Tolerance, compare};

/// Pass, fail or skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Within tolerance, guards intact.
    Pass,
    /// Wrong output, broken guard, or an error.
    Fail,
    /// The adapter cannot run the case (the reason says why).
    Skip,
}

/// The result of one case on one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseReport {
    /// Case name.
    pub case: String,
    /// Op family.
    pub op: String,
    /// Dtype.
    pub dtype: String,
    /// Adapter (`vulkan llvmpipe`).
    pub adapter: String,
    /// Tier.
    pub tier: Tier,
    /// Outcome.
    pub status: Status,
    /// NMSE against the reference, when it ran.
    pub nmse: Option<f64>,
    /// Largest absolute error, when it ran.
    pub max_abs: Option<f64>,
    /// Largest reference magnitude, when it ran.
    pub ref_max: Option<f64>,
    /// The case's tolerance.
    pub tolerance: Tolerance,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Wall time of the case: inputs, reference, upload, compile, run and compare.
    pub seconds: f64,
}

/// Byte pattern of a NaN of `dtype` (quiet NaN with a payload the kernels never produce).
fn nan_pattern(dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => 0x7E5Au16.to_le_bytes().to_vec(),
        _ => 0x7FC0_5A5Au32.to_le_bytes().to_vec(),
    }
}

fn encode(data: &HostData, dtype: DType) -> Vec<u8> {
    match (data, dtype) {
        (HostData::F32(v), DType::F16) => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        (HostData::F32(v), _) => bytemuck::cast_slice(v).to_vec(),
        (HostData::U32(v), _) => bytemuck::cast_slice(v).to_vec(),
    }
}

/// Run `case` on `dev` and compare with the reference.
pub fn run_case(dev: &Device, case: &dyn Case) -> CaseReport {
    let (mut report, start) = begin(dev, case);
    let Some(start) = start else { return report };
    let outcome = Launched::new(dev, case).and_then(|l| {
        let all = dev.read_bytes(&l.buf).map_err(|e| e.to_string())?;
        l.compare(&all)
    });
    finish(&mut report, outcome, start);
    report
}

/// [`run_case`] without blocking: the output is awaited, as the browser's WebGPU requires.
pub async fn run_case_async(dev: &Device, case: &dyn Case) -> CaseReport {
    let (mut report, start) = begin(dev, case);
    let Some(start) = start else { return report };
    let outcome = match Launched::new(dev, case) {
        Ok(l) => match dev.read_bytes_async(&l.buf).await {
            Ok(all) => l.compare(&all),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
    };
    finish(&mut report, outcome, start);
    report
}

/// The report of a case not yet run and the time it started, or (without a time) the finished
/// report of a case the adapter cannot run.
fn begin(dev: &Device, case: &dyn Case) -> (CaseReport, Option<web_time::Instant>) {
    let mut report = CaseReport {
        case: case.name(),
        op: case.op().to_string(),
        dtype: case.dtype(),
        adapter: dev.caps().short_label(),
        tier: case.tier(),
        status: Status::Skip,
        nmse: None,
        max_abs: None,
        ref_max: None,
        tolerance: case.tolerance(),
        reason: None,
        seconds: 0.0,
    };
    if let Some(why) = case.unsupported(dev.caps()) {
        report.reason = Some(why);
        return (report, None);
    }
    (report, Some(web_time::Instant::now()))
}

/// Fill in `report` from the comparison (or the error) of a case run.
fn finish(report: &mut CaseReport, outcome: Result<Comparison, String>, start: web_time::Instant) {
    match outcome {
        Ok(cmp) => {
            report.nmse = Some(cmp.nmse);
            report.max_abs = Some(cmp.max_abs);
            report.ref_max = Some(cmp.ref_max);
            if cmp.passes(&report.tolerance) {
                report.status = Status::Pass;
            } else {
                report.status = Status::Fail;
                report.reason = Some(cmp.defect.unwrap_or_else(|| {
                    format!(
                        "nmse {:.3e} (limit {:.1e}), max_abs {:.3e} (limit {:.3e})",
                        cmp.nmse,
                        report.tolerance.nmse,
                        cmp.max_abs,
                        report.tolerance.max_abs_rel * cmp.ref_max
                    )
                }));
            }
        }
        Err(e) => {
            report.status = Status::Fail;
            report.reason = Some(e);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
}

/// A case submitted: its output buffer with NaN guard bands around the output, what the buffer
/// held before, and the reference to compare with once the buffer is read back.
struct Launched {
    buf: Tensor,
    before: Vec<u8>,
    guard: usize,
    body: usize,
    dtype: DType,
    want: Vec<f32>,
    _submission: flint_gpu::Submission,
}

impl Launched {
    fn new(dev: &Device, case: &dyn Case) -> Result<Launched, String> {
        let inputs = case.inputs();
        let want = case.reference(&inputs).map_err(|e| format!("reference: {e}"))?;
        let tensors: Vec<Tensor> =
            inputs.iter().map(|i| i.upload(dev)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        let (shape, dtype) = case.output();
        let numel: usize = shape.iter().product();
        let body = dtype.bytes(numel);
        // Guard bands of NaN before and after the output, at a legal binding offset.
        let guard = 256usize.max(dev.caps().storage_offset_alignment as usize);
        let total = guard + body.div_ceil(4) * 4 + guard;
        let pattern = nan_pattern(dtype);
        let mut before: Vec<u8> = pattern.iter().copied().cycle().take(total).collect();
        if let Some(i) = case.in_place() {
            before[guard..guard + body].copy_from_slice(&encode(&inputs[i].data, dtype));
        }
        let buf = dev.empty("output with guards", &[total / dtype.size()], dtype).map_err(|e| e.to_string())?;
        dev.write(&buf, &before).map_err(|e| e.to_string())?;
        let out = buf.view(guard as u64, &shape, dtype).map_err(|e| e.to_string())?;
        let mut rec = Recorder::new(dev);
        case.launch(dev, &mut rec, &tensors, &out).map_err(|e| e.to_string())?;
        // Not waited for here: the readback that follows is queued after it (and the browser
        // cannot block); the submission is held until then.
        let submission = rec.submit().map_err(|e| e.to_string())?;
        Ok(Launched { buf, before, guard, body, dtype, want, _submission: submission })
    }

    /// Check the guard bands of the buffer read back and compare its output with the reference.
    fn compare(&self, all: &[u8]) -> Result<Comparison, String> {
        let (guard, body) = (self.guard, self.body);
        for (i, (&got, &want)) in all.iter().zip(&self.before).enumerate() {
            if (i < guard || i >= guard + body) && got != want {
                let side = if i < guard { "before" } else { "after" };
                return Err(format!("wrote {side} its output (guard byte {} of the buffer changed)", i));
            }
        }
        let got = flint_gpu::to_f32(&all[guard..guard + body], self.dtype);
        Ok(compare(&got, &self.want))
    }
}

/// Peak rates to compare measurements with.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Roofline {
    /// Peak arithmetic rate, GFLOP/s.
    pub gflops: f64,
    /// Peak memory bandwidth, GB/s.
    pub gbs: f64,
    /// Where the numbers come from.
    pub source: String,
}

impl Roofline {
    /// Attainable GFLOP/s at arithmetic intensity `flops / bytes`.
    pub fn attainable(&self, flops: f64, bytes: f64) -> f64 {
        if bytes <= 0.0 { self.gflops } else { self.gflops.min(flops / bytes * self.gbs) }
    }
}

/// Timing of one case on one adapter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// Case name.
    pub case: String,
    /// Op family.
    pub op: String,
    /// Dtype.
    pub dtype: String,
    /// Adapter.
    pub adapter: String,
    /// Median time of one launch, in microseconds.
    pub median_us: f64,
    /// Fastest launch, in microseconds.
    pub min_us: f64,
    /// Launches timed.
    pub iters: usize,
    /// `gpu` (timestamps) or `wall` (submit to completion, per launch).
    pub timer: &'static str,
    /// Achieved GFLOP/s at the median.
    pub gflops: f64,
    /// Achieved GB/s at the median.
    pub gbs: f64,
    /// Achieved rate over what the roofline allows at this arithmetic intensity.
    pub roofline_fraction: f64,
    /// Median time of each dispatch of one launch, in microseconds (GPU timer only).
    pub dispatches: Vec<(String, f64)>,
}

/// Time `case` on `dev` over `iters` launches (after two warm-up launches).
pub fn bench_case(dev: &Device, case: &dyn Case, iters: usize, roofline: &Roofline) -> Result<BenchReport, String> {
    block_on(bench_case_async(dev, case, iters, roofline))
}

/// [`bench_case`] without blocking (the browser's bench page).
pub async fn bench_case_async(
    dev: &Device,
    case: &dyn Case,
    iters: usize,
    roofline: &Roofline,
) -> Result<BenchReport, String> {
    if let Some(why) = case.unsupported(dev.caps()) {
        return Err(format!("skipped: {why}"));
    }
    let s = |e: flint_gpu::GpuError| e.to_string();
    let inputs = case.inputs();
    let tensors: Vec<Tensor> = inputs.iter().map(|i| i.upload(dev)).collect::<Result<_, _>>().map_err(s)?;
    let (shape, dtype) = case.output();
    let out = match case.in_place() {
        Some(i) => tensors[i].clone(),
        None => dev.empty("bench output", &shape, dtype).map_err(s)?,
    };
    for _ in 0..2 {
        let mut rec = Recorder::new(dev);
        case.launch(dev, &mut rec, &tensors, &out).map_err(s)?;
        rec.submit().map_err(s)?.finished().await.map_err(s)?;
    }
    let iters = iters.max(1);
    let mut times_ns: Vec<f64> = Vec::with_capacity(iters);
    let mut dispatches = Vec::new();
    let timer;
    if dev.caps().timestamps {
        timer = "gpu";
        let mut rec = Recorder::new(dev).timed(true);
        for _ in 0..iters {
            case.launch(dev, &mut rec, &tensors, &out).map_err(s)?;
        }
        let per = (rec.dispatches() / iters).max(1);
        let times = rec.submit().map_err(s)?.finished().await.map_err(s)?;
        times_ns.extend(times.chunks(per).map(|c| c.iter().map(|t| t.ns).sum::<f64>()));
        for d in 0..per {
            let mut each: Vec<f64> = times.iter().skip(d).step_by(per).map(|t| t.ns).collect();
            each.sort_by(f64::total_cmp);
            dispatches.push((times[d].label.clone(), each[each.len() / 2] / 1e3));
        }
    } else {
        timer = "wall";
        for _ in 0..iters {
            let t0 = web_time::Instant::now();
            let mut rec = Recorder::new(dev);
            case.launch(dev, &mut rec, &tensors, &out).map_err(s)?;
            rec.submit().map_err(s)?.finished().await.map_err(s)?;
            times_ns.push(t0.elapsed().as_secs_f64() * 1e9);
        }
    }
    times_ns.sort_by(f64::total_cmp);
    let median = times_ns[times_ns.len() / 2];
    let gflops = case.flops() / median;
    Ok(BenchReport {
        case: case.name(),
        op: case.op().to_string(),
        dtype: case.dtype(),
        adapter: dev.caps().short_label(),
        median_us: median / 1e3,
        min_us: times_ns[0] / 1e3,
        iters,
        timer,
        gflops,
        gbs: case.bytes() / median,
        roofline_fraction: gflops / roofline.attainable(case.flops(), case.bytes()),
        dispatches,
    })
}

/// Measure the adapter's attainable peaks with flint's roofline kernels: an FMA-bound kernel
/// and a vec4 copy of 64 MiB. Each is the best of several runs.
pub fn measure_roofline(dev: &Device) -> Result<Roofline, String> {
    block_on(measure_roofline_async(dev))
}

/// [`measure_roofline`] without blocking.
pub async fn measure_roofline_async(dev: &Device) -> Result<Roofline, String> {
    let s = |e: flint_gpu::GpuError| e.to_string();
    let flops_per_run = flint_kernels::roofline::fma_flops(dev);
    let fma_ns = best(dev, &|rec| flint_kernels::roofline::fma_peak(dev, rec).map_err(s)).await?;
    let words = 16 << 20; // 64 MiB of f32
    let src = dev.empty("roofline src", &[words], DType::F32).map_err(s)?;
    let dst = dev.empty("roofline dst", &[words], DType::F32).map_err(s)?;
    let copy_ns = best(dev, &|rec| flint_kernels::roofline::copy(dev, rec, &src, &dst).map_err(s)).await?;
    let (src, dst) = (
        src.view(0, &[words], DType::U32).map_err(s)?,
        dev.empty("roofline sums", &[4 * 16384], DType::U32).map_err(s)?,
    );
    let read_ns = best(dev, &|rec| flint_kernels::roofline::read(dev, rec, &src, &dst).map_err(s)).await?;
    let (copy_gbs, read_gbs) = ((2 * 4 * words) as f64 / copy_ns, (4 * words) as f64 / read_ns);
    Ok(Roofline {
        gflops: flops_per_run / fma_ns,
        gbs: copy_gbs.max(read_gbs),
        source: format!(
            "measured (flint roofline kernels: FMA chains; memory the better of a 64 MiB vec4 copy, {copy_gbs:.1} GB/s, \
             and a load-only vec4<u32> reduction over 64 MiB, {read_gbs:.1} GB/s)"
        ),
    })
}

/// The fastest of three runs of what `record` records, in nanoseconds (GPU time where the
/// adapter has timestamps, else wall time from submit to completion).
async fn best(dev: &Device, record: &dyn Fn(&mut Recorder) -> Result<(), String>) -> Result<f64, String> {
    let mut b = f64::MAX;
    for _ in 0..3 {
        let mut rec = Recorder::new(dev).timed(true);
        record(&mut rec)?;
        let timed = rec.is_timed();
        let t0 = web_time::Instant::now();
        let times = rec.submit().map_err(|e| e.to_string())?.finished().await.map_err(|e| e.to_string())?;
        b = b.min(if timed { times.iter().map(|t| t.ns).sum() } else { t0.elapsed().as_secs_f64() * 1e9 });
    }
    Ok(b)
}

/// A GPU error carried through [`flint_gpu::block_on`] as the harness's string errors.
struct Failed(String);

impl From<flint_gpu::GpuError> for Failed {
    fn from(e: flint_gpu::GpuError) -> Failed {
        Failed(e.to_string())
    }
}

/// Drive one of the harness's awaitable calls to completion (natively; in the browser it
/// refuses, saying to await the call instead).
fn block_on<T>(f: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    flint_gpu::block_on("a conformance run", async { f.await.map_err(Failed) }).map_err(|Failed(s)| s)
}
