//! What the fixture test files share: every adapter present, NMSE, and a fixture directory
//! copied with its config edited. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every adapter `$FLINT_ADAPTER` matches (all of them when unset); at least one.
pub fn devices() -> Vec<flint_gpu::Device> {
    let sel = std::env::var("FLINT_ADAPTER").unwrap_or_default();
    let devs: Vec<_> = flint_gpu::Device::open_all(&sel).into_iter().filter_map(Result::ok).collect();
    assert!(!devs.is_empty(), "no adapter matches {sel:?}");
    devs
}

/// NMSE of `got` against `want`, failing on any non-finite value.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite values");
    let e: f64 = got.iter().zip(want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
    e / want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>()
}

/// A copy of `files` of the fixture directory `src`, with its config.json passed through
/// `edit`, under the system temp directory (named by `tag` and the process).
pub fn edited_copy(src: &Path, files: &[&str], tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flint-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in files {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}
