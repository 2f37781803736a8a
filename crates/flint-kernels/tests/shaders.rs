//! Every kernel variant flint can build goes through naga's parser and validator, on every
//! platform, without a GPU.

use naga::valid::{Capabilities, ValidationFlags, Validator};

#[test]
fn every_variant_validates() {
    let variants = flint_kernels::all_variants();
    assert!(variants.len() > 50, "the variant table looks truncated: {}", variants.len());
    let mut failures = Vec::new();
    for v in &variants {
        let src = match v.key.source(flint_kernels::registry()) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: preprocess: {e}", v.name));
                continue;
            }
        };
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: parse: {}", v.name, e.emit_to_string(&src)));
                continue;
            }
        };
        // pack/unpack2x16float are core WGSL; naga asks for this flag, which wgpu grants on every
        // adapter that passes WebGPU's downlevel checks.
        let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        caps.set(Capabilities::SHADER_FLOAT16, v.needs.f16);
        caps.set(Capabilities::SUBGROUP, v.needs.subgroups);
        if let Err(e) = Validator::new(ValidationFlags::all(), caps).validate(&module) {
            failures.push(format!("{}: validate: {}", v.name, e.emit_to_string(&src)));
            continue;
        }
        if !module.entry_points.iter().any(|ep| ep.name == v.key.entry) {
            failures.push(format!("{}: no entry point {}", v.name, v.key.entry));
        }
    }
    assert!(failures.is_empty(), "{} of {} variants failed:\n{}", failures.len(), variants.len(), failures.join("\n"));
}

#[test]
fn variant_names_are_unique() {
    let variants = flint_kernels::all_variants();
    let mut names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "duplicate variant names");
}
