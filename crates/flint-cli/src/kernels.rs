//! The kernel commands: `devices`, `conformance`, `bench`.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use flint_conformance::{CaseReport, Roofline, Status, Tier, bench_case, cases::all_cases, measure_roofline, run_case};
use flint_gpu::Device;

pub fn devices(json: bool) -> Result<ExitCode> {
    let adapters = flint_gpu::adapters();
    if json {
        let list: Vec<serde_json::Value> = adapters
            .iter()
            .map(|a| {
                let c = &a.caps;
                serde_json::json!({
                    "index": a.index, "backend": c.backend, "name": c.name, "driver": c.driver,
                    "device_type": c.device_type, "f16": c.f16, "subgroups": c.subgroups,
                    "subgroup_size": [c.subgroup_min_size, c.subgroup_max_size], "timestamps": c.timestamps,
                    "max_storage_binding": c.max_storage_binding, "max_buffer": c.max_buffer,
                    "max_workgroup_storage": c.max_workgroup_storage, "max_invocations": c.max_invocations,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if adapters.is_empty() {
        println!("no adapters (on Linux without a GPU, install mesa-vulkan-drivers for lavapipe)");
    } else {
        println!(
            "{:<3} {:<8} {:<36} {:<9} {:<4} {:<9} {:<5} {:>13}",
            "#", "backend", "name", "type", "f16", "subgroup", "time", "max binding"
        );
        for a in &adapters {
            let c = &a.caps;
            let sg = if c.subgroups { format!("{}-{}", c.subgroup_min_size, c.subgroup_max_size) } else { "no".into() };
            println!(
                "{:<3} {:<8} {:<36} {:<9} {:<4} {:<9} {:<5} {:>10} MiB",
                a.index,
                c.backend,
                c.name,
                c.device_type,
                if c.f16 { "yes" } else { "no" },
                sg,
                if c.timestamps { "yes" } else { "no" },
                c.max_storage_binding >> 20
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn open_devices(adapter: &str) -> Result<Vec<Device>> {
    let devices = Device::open_all(adapter);
    if devices.is_empty() {
        let available: Vec<String> = flint_gpu::adapters().iter().map(|a| a.caps.label()).collect();
        bail!(
            "no adapter matches {adapter:?}; available: {}",
            if available.is_empty() { "none".into() } else { available.join(", ") }
        );
    }
    devices.into_iter().map(|d| d.context("opening adapter")).collect()
}

fn matches(case: &dyn flint_conformance::Case, filter: &str) -> bool {
    filter.is_empty() || case.op().starts_with(filter) || case.name().starts_with(filter)
}

pub fn conformance(adapter: &str, op: &str, bench_cases: bool, json: bool) -> Result<ExitCode> {
    let devices = open_devices(adapter)?;
    let cases: Vec<_> = all_cases()
        .into_iter()
        .filter(|c| (bench_cases || c.tier() == Tier::Test) && matches(c.as_ref(), op))
        .collect();
    if cases.is_empty() {
        bail!("no case matches --op {op:?}");
    }
    if !json {
        println!(
            "{:<46} {:<12} {:<8} {:<16} {:<6} {:>10} {:>10} {:>9} {:>7}  reason",
            "case", "op", "dtype", "adapter", "status", "nmse", "max_abs", "tol", "seconds"
        );
    }
    let (mut failed, mut passed, mut skipped) = (0, 0, 0);
    for dev in &devices {
        for case in &cases {
            let r = run_case(dev, case.as_ref());
            match r.status {
                Status::Pass => passed += 1,
                Status::Fail => failed += 1,
                Status::Skip => skipped += 1,
            }
            print_report(&r, json)?;
        }
    }
    if !json {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_report(r: &CaseReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2e}"));
    let status = match r.status {
        Status::Pass => "pass",
        Status::Fail => "FAIL",
        Status::Skip => "skip",
    };
    println!(
        "{:<46} {:<12} {:<8} {:<16} {:<6} {:>10} {:>10} {:>9.0e} {:>7.2}  {}",
        r.case,
        r.op,
        r.dtype,
        r.adapter,
        status,
        num(r.nmse),
        num(r.max_abs),
        r.tolerance.nmse,
        r.seconds,
        r.reason.as_deref().unwrap_or("")
    );
    Ok(())
}

/// Options of `flint bench`.
pub struct BenchOpts {
    /// Launches timed per case.
    pub iters: usize,
    /// Include test-tier cases.
    pub all: bool,
    /// Given peak GFLOP/s.
    pub peak_gflops: Option<f64>,
    /// Given peak GB/s.
    pub peak_gbs: Option<f64>,
    /// Print each dispatch.
    pub dispatches: bool,
    /// JSON lines.
    pub json: bool,
}

pub fn bench(adapter: &str, op: &str, opts: &BenchOpts) -> Result<ExitCode> {
    let &BenchOpts { iters, all, peak_gflops, peak_gbs, dispatches, json } = opts;
    let devices = open_devices(adapter)?;
    let cases: Vec<_> =
        all_cases().into_iter().filter(|c| (all || c.tier() == Tier::Bench) && matches(c.as_ref(), op)).collect();
    if cases.is_empty() {
        bail!("no case matches --op {op:?}");
    }
    let mut failed = false;
    for dev in &devices {
        let roofline = match (peak_gflops, peak_gbs) {
            (Some(gflops), Some(gbs)) => Roofline { gflops, gbs, source: "given".into() },
            (f, b) => {
                let m = measure_roofline(dev).map_err(anyhow::Error::msg).context("measuring the roofline")?;
                Roofline {
                    gflops: f.unwrap_or(m.gflops),
                    gbs: b.unwrap_or(m.gbs),
                    source: if f.is_some() || b.is_some() {
                        format!("partly given, rest {}", m.source)
                    } else {
                        m.source
                    },
                }
            }
        };
        let caps = dev.caps();
        if json {
            println!(
                "{}",
                serde_json::json!({"adapter": caps.short_label(), "driver": caps.driver, "roofline": roofline})
            );
        } else {
            println!("# {} [{}]", caps.short_label(), caps.driver);
            println!("# roofline: {:.1} GFLOP/s, {:.1} GB/s ({})", roofline.gflops, roofline.gbs, roofline.source);
            println!(
                "{:<46} {:<8} {:>11} {:>11} {:>9} {:>9} {:>8} {:>5}",
                "case", "dtype", "median us", "min us", "GFLOP/s", "GB/s", "roofline", "timer"
            );
        }
        for case in &cases {
            match bench_case(dev, case.as_ref(), iters, &roofline) {
                Ok(r) if json => println!("{}", serde_json::to_string(&r)?),
                Ok(r) => {
                    println!(
                        "{:<46} {:<8} {:>11.1} {:>11.1} {:>9.2} {:>9.2} {:>7.1}% {:>5}",
                        r.case,
                        r.dtype,
                        r.median_us,
                        r.min_us,
                        r.gflops,
                        r.gbs,
                        100.0 * r.roofline_fraction,
                        r.timer
                    );
                    if dispatches {
                        for (label, us) in &r.dispatches {
                            println!("    {label:<50} {us:>11.1} us");
                        }
                    }
                }
                Err(e) if e.starts_with("skipped") => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"case": case.name(), "adapter": caps.short_label(), "skipped": e})
                        );
                    } else {
                        println!("{:<46} {e}", case.name());
                    }
                }
                Err(e) => {
                    failed = true;
                    eprintln!("{}: {e}", case.name());
                }
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
