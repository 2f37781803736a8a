//! Every kernel variant flint can build goes through naga's parser and validator, on every
//! platform, without a GPU; and through the back ends wgpu translates WGSL with on each native
//! API (SPIR-V for Vulkan, MSL for Metal, HLSL for DX12, GLSL ES for GL), so that a translation
//! error shows here and not first on a Metal or DX12 user's machine.

use naga::valid::{Capabilities, ValidationFlags, Validator};

#[test]
fn every_variant_validates() {
    let variants = flint_kernels::all_variants();
    assert!(variants.len() > 50, "the variant table looks truncated: {}", variants.len());
    let mut failures = Vec::new();
    for v in &variants {
        match validated(v) {
            Err(e) => failures.push(format!("{}: {e}", v.name)),
            Ok((module, _)) if !module.entry_points.iter().any(|ep| ep.name == v.key.entry) => {
                failures.push(format!("{}: no entry point {}", v.name, v.key.entry));
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{} of {} variants failed:\n{}", failures.len(), variants.len(), failures.join("\n"));
}

/// A variant's validated module, or why it has none.
fn validated(v: &flint_kernels::Variant) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let src = v.key.source(flint_kernels::registry()).map_err(|e| format!("preprocess: {e}"))?;
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| format!("parse: {}", e.emit_to_string(&src)))?;
    // pack/unpack2x16float are core WGSL; naga asks for this flag, which wgpu grants on every
    // adapter that passes WebGPU's downlevel checks.
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    caps.set(Capabilities::SHADER_FLOAT16, v.needs.f16);
    caps.set(Capabilities::SUBGROUP, v.needs.subgroups);
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| format!("validate: {}", e.emit_to_string(&src)))?;
    Ok((module, info))
}

/// Translate every variant to SPIR-V (Vulkan), MSL 2.4 (Metal), HLSL shader model 6.2 (DX12:
/// the lowest with f16) and GLSL ES 3.10 (GL), failing on any back-end error and on empty
/// output. naga's back ends do not check the platform's own limits (an HLSL shader model too
/// old for f16 still translates), so this catches constructs a back end cannot express, not
/// what a driver refuses. GLSL has no f16, and wgpu's GL back end offers no SHADER_F16, so
/// f16 variants skip it (as the conformance table skips them on GL adapters).
#[test]
fn every_variant_translates_for_every_native_backend() {
    use naga::back::{glsl, hlsl, msl, spv};
    let variants = flint_kernels::all_variants();
    let (mut failures, mut translations) = (Vec::new(), 0usize);
    for v in &variants {
        let (module, info) = match validated(v) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: {e}", v.name));
                continue;
            }
        };
        let entry = v.key.entry.to_string();
        let stage = naga::ShaderStage::Compute;
        let spv_pipeline = spv::PipelineOptions { shader_stage: stage, entry_point: entry.clone() };
        match spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline)) {
            Ok(words) if words.len() > 5 => {}
            Ok(_) => failures.push(format!("{}: SPIR-V: empty module", v.name)),
            Err(e) => failures.push(format!("{}: SPIR-V: {e}", v.name)),
        }
        let msl_options = msl::Options { lang_version: (2, 4), ..Default::default() };
        let msl_pipeline = msl::PipelineOptions { entry_point: Some((stage, entry.clone())), ..Default::default() };
        match msl::write_string(&module, &info, &msl_options, &msl_pipeline) {
            Ok((text, _)) if text.contains("kernel void") => {}
            Ok(_) => failures.push(format!("{}: MSL: no kernel function", v.name)),
            Err(e) => failures.push(format!("{}: MSL: {e}", v.name)),
        }
        let hlsl_options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_2, ..Default::default() };
        let hlsl_pipeline = hlsl::PipelineOptions { entry_point: Some((stage, entry.clone())) };
        let mut hlsl_out = String::new();
        match hlsl::Writer::new(&mut hlsl_out, &hlsl_options, &hlsl_pipeline).write(&module, &info, None) {
            Ok(_) if hlsl_out.contains("[numthreads(") => {}
            Ok(_) => failures.push(format!("{}: HLSL: no compute entry point", v.name)),
            Err(e) => failures.push(format!("{}: HLSL: {e}", v.name)),
        }
        translations += 3;
        if !v.needs.f16 {
            let glsl_pipeline =
                glsl::PipelineOptions { shader_stage: stage, entry_point: entry.clone(), multiview: None };
            let mut glsl_out = String::new();
            let policies = naga::proc::BoundsCheckPolicies::default();
            let written =
                glsl::Writer::new(&mut glsl_out, &module, &info, &glsl::Options::default(), &glsl_pipeline, policies)
                    .and_then(|mut w| w.write());
            match written {
                Ok(_) if glsl_out.contains("layout(local_size_x") => {}
                Ok(_) => failures.push(format!("{}: GLSL: no compute layout", v.name)),
                Err(e) => failures.push(format!("{}: GLSL: {e}", v.name)),
            }
            translations += 1;
        }
    }
    assert!(translations > 200, "only {translations} translations: the variant table looks truncated");
    assert!(failures.is_empty(), "{} of {translations} translations failed:\n{}", failures.len(), failures.join("\n"));
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

/// Every function-scope `var` spells its initial value. WGSL zero-initialises a `var` declared
/// without one each time the declaration runs, but Chromium's WebGPU on SwiftShader kept the
/// value of the last loop iteration instead (found by the browser's conformance run: attention
/// accumulated the previous tile's scores, NMSE 2.8 to 57), so flint never relies on it.
#[test]
fn function_variables_have_initializers() {
    let registry = flint_kernels::registry();
    let mut bare = Vec::new();
    for name in registry.names() {
        let src = registry.get(name).unwrap_or_default();
        for (i, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").trim();
            if let Some(rest) = code.strip_prefix("var ")
                && !rest.contains('=')
            {
                bare.push(format!("{name}:{}: {code}", i + 1));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "function variables without an initial value (write `var x = T();`):\n{}",
        bare.join("\n")
    );
}
