//! Criterion benches of the bench-tier conformance cases on one adapter (`FLINT_ADAPTER`,
//! default: the preferred one), timed with GPU timestamps where the adapter has them.
//!
//! `cargo bench -p flint-benches -- matmul` runs the matmul cases.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flint_conformance::{Tier, cases::all_cases};
use flint_gpu::{Device, Recorder, Tensor};

fn kernels(c: &mut Criterion) {
    let selector = std::env::var("FLINT_ADAPTER").unwrap_or_default();
    let dev = match Device::open(&selector) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("no adapter, nothing to bench: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group(dev.caps().short_label());
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for case in all_cases().into_iter().filter(|c| c.tier() == Tier::Bench) {
        if case.unsupported(dev.caps()).is_some() {
            continue;
        }
        let inputs: Vec<Tensor> = case.inputs().iter().map(|i| i.upload(&dev).expect("upload")).collect();
        let (shape, dtype) = case.output();
        let out = match case.in_place() {
            Some(i) => inputs[i].clone(),
            None => dev.empty("out", &shape, dtype).expect("output"),
        };
        group.throughput(Throughput::Bytes(case.bytes() as u64));
        group.bench_function(case.name(), |b| {
            b.iter_custom(|iters| {
                let mut rec = Recorder::new(&dev).timed(true);
                for _ in 0..iters {
                    case.launch(&dev, &mut rec, &inputs, &out).expect("launch");
                }
                let timed = rec.is_timed();
                let t0 = std::time::Instant::now();
                let times = rec.submit().and_then(|s| s.wait()).expect("run");
                if timed { Duration::from_nanos(times.iter().map(|t| t.ns).sum::<f64>() as u64) } else { t0.elapsed() }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
