//! The conformance suite: every test-tier case on every adapter present, one trial each, named
//! `[vulkan llvmpipe] matmul_tiled_f16_65x17x63`. Cases an adapter cannot run are listed as
//! ignored with the reason. `FLINT_ADAPTER=vulkan` restricts the adapters.

use std::sync::Arc;

use flint_conformance::{Status, Tier, cases::all_cases, run_case};
use flint_gpu::Device;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let selector = std::env::var("FLINT_ADAPTER").unwrap_or_default();
    let mut trials = Vec::new();
    let devices: Vec<_> = Device::open_all(&selector);
    if devices.is_empty() {
        trials.push(Trial::test("no GPU adapter found", move || {
            Err(Failed::from(format!("no adapter matches {selector:?}; install mesa-vulkan-drivers for lavapipe")))
        }));
    }
    let cases: Vec<Arc<dyn flint_conformance::Case>> =
        all_cases().into_iter().filter(|c| c.tier() == Tier::Test).map(Arc::from).collect();
    for dev in devices {
        let dev = match dev {
            Ok(d) => d,
            Err(e) => {
                let msg = e.to_string();
                trials.push(Trial::test(format!("open adapter: {msg}"), move || Err(Failed::from(msg.clone()))));
                continue;
            }
        };
        let label = dev.caps().short_label();
        for case in &cases {
            let name = format!("[{label}] {}", case.name());
            let skip = case.unsupported(dev.caps());
            let (dev, case) = (dev.clone(), case.clone());
            let trial = Trial::test(name, move || {
                let r = run_case(&dev, case.as_ref());
                match r.status {
                    Status::Pass => Ok(()),
                    Status::Skip => Err(Failed::from(format!("unexpected skip: {}", r.reason.unwrap_or_default()))),
                    Status::Fail => Err(Failed::from(r.reason.unwrap_or_default())),
                }
            });
            trials.push(match skip {
                Some(why) => trial.with_ignored_flag(true).with_kind(format!("skip: {why}")),
                None => trial,
            });
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
