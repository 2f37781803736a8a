//! `cargo xtask <task>`: the chores contributors repeat.
//!
//! - `ci`: what CI runs: rustfmt check, clippy with warnings denied, the whole test suite (the
//!   conformance suite runs on every adapter present), and rustdoc with warnings denied.
//! - `web [--port N]`: build flint for the browser (wasm32, bound by wasm-bindgen) and serve its
//!   pages on localhost; `web-test`: the same, with the page tests run in headless Chromium.
//! - `shaders [DIR]`: write every kernel variant's preprocessed WGSL to DIR (default
//!   `target/shaders`) for reading or for external tools.

use std::path::PathBuf;

mod fuzz_seeds;
mod web;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("web") => web::serve_site(&cargo(), &args[1..]),
        Some("web-test") => web::test(&cargo()),
        Some("shaders") => shaders(args.get(1).map(PathBuf::from)),
        Some("fuzz-seeds") => fuzz_seeds::run(&PathBuf::from(args.get(1).map_or("fuzz/corpus", String::as_str))),
        _ => {
            eprintln!("usage: cargo xtask <ci | web [--port N] | web-test | shaders [DIR] | fuzz-seeds [DIR]>");
            bail!("unknown or missing task")
        }
    }
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn ci() -> Result<()> {
    let cargo = cargo();
    run(&cargo, &["fmt", "--all", "--", "--check"], &[])?;
    run(&cargo, &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"], &[])?;
    run(&cargo, &["test", "--workspace", "--locked"], &[])?;
    run(&cargo, &["doc", "--workspace", "--no-deps", "--locked"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    wasm_check(&cargo)?;
    match web::test_missing() {
        None => web::test(&cargo)?,
        Some(why) => eprintln!("ci: skipped the browser tests: {why}"),
    }
    eprintln!("ci: all green");
    Ok(())
}

/// The browser build: the GPU layer, the kernels, the references and the runtime compile for
/// wasm32-unknown-unknown (the target WebGPU pages run). Skipped, saying so, where the target's
/// standard library is not installed (`rustup target add wasm32-unknown-unknown`).
fn wasm_check(cargo: &str) -> Result<()> {
    const TARGET: &str = "wasm32-unknown-unknown";
    let installed = target_installed(TARGET);
    if !installed {
        eprintln!("ci: skipped the {TARGET} build check: the target is not installed (rustup target add {TARGET})");
        return Ok(());
    }
    let crates =
        ["-p", "flint-gpu", "-p", "flint-kernels", "-p", "flint-ref", "-p", "flint-runtime", "-p", "flint-web"];
    let mut args = vec!["check", "--target", TARGET, "--locked"];
    args.extend(crates);
    run(cargo, &args, &[])
}

/// Whether rustc has the standard library of `target`.
fn target_installed(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(&rustc).args(["--print", "target-libdir", "--target", target]).output();
    libdir.ok().filter(|o| o.status.success()).is_some_and(|o| {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        std::fs::read_dir(&dir)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore"))))
    })
}

fn shaders(dir: Option<PathBuf>) -> Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("target/shaders"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let variants = flint_kernels::all_variants();
    for v in &variants {
        let src = v.key.source(flint_kernels::registry()).with_context(|| v.name.clone())?;
        let file: String = v.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::write(dir.join(format!("{file}.wgsl")), src)?;
    }
    eprintln!("wrote {} variants to {}", variants.len(), dir.display());
    Ok(())
}
