//! `cargo xtask <task>`: the chores contributors repeat.
//!
//! - `ci`: what CI runs: rustfmt check, clippy with warnings denied, the whole test suite (the
//!   conformance suite runs on every adapter present), and rustdoc with warnings denied.
//! - `shaders [DIR]`: write every kernel variant's preprocessed WGSL to DIR (default
//!   `target/shaders`) for reading or for external tools.

use std::path::PathBuf;

mod fuzz_seeds;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("shaders") => shaders(args.get(1).map(PathBuf::from)),
        Some("fuzz-seeds") => fuzz_seeds::run(&PathBuf::from(args.get(1).map_or("fuzz/corpus", String::as_str))),
        _ => {
            eprintln!("usage: cargo xtask <ci | shaders [DIR] | fuzz-seeds [DIR]>");
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

fn ci() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(&cargo, &["fmt", "--all", "--", "--check"], &[])?;
    run(&cargo, &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"], &[])?;
    run(&cargo, &["test", "--workspace", "--locked"], &[])?;
    run(&cargo, &["doc", "--workspace", "--no-deps", "--locked"], &[("RUSTDOCFLAGS", "-D warnings")])?;
    eprintln!("ci: all green");
    Ok(())
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
