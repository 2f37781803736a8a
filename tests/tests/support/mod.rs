//! What the fixture test files share: every adapter present, NMSE, a fixture's expected
//! tensors, and a fixture directory copied with its config edited. Each test binary uses a part of it.
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

/// A fixture's `<name>.expected.safetensors`: f32 tensors, and ids stored as i64.
pub struct Expected(Vec<u8>);

impl Expected {
    /// Read the file at `path`.
    pub fn open(path: PathBuf) -> Expected {
        Expected(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    /// Tensor `k`'s bytes.
    pub fn bytes(&self, k: &str) -> Vec<u8> {
        safetensors::SafeTensors::deserialize(&self.0).unwrap().tensor(k).unwrap().data().to_vec()
    }

    /// Tensor `k` as f32s.
    pub fn f32s(&self, k: &str) -> Vec<f32> {
        self.bytes(k).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// Tensor `k` (i64) as token ids.
    pub fn ids(&self, k: &str) -> Vec<u32> {
        self.bytes(k).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
    }
}

/// A config edit for [`refused_by_name`]: a tag, the edit, and words the error must contain.
pub type ConfigEdit = (&'static str, fn(&mut serde_json::Value), &'static str);

/// Each edit of the fixture `src`'s config (over a copy of its `files`) makes
/// `Model::load` fail with an error that names the copy's directory and contains the edit's
/// words.
pub fn refused_by_name(src: &Path, files: &[&str], family: &str, cases: &[ConfigEdit]) {
    let dev = &devices()[0];
    for &(tag, edit, want) in cases {
        let dir = edited_copy(src, files, &format!("{family}-{tag}"), edit);
        let e = flint_runtime::model::Model::load(dev, &dir).unwrap_err().to_string();
        assert!(e.contains(&*dir.to_string_lossy()) && e.contains(want), "{tag}: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Run `engine` until it is idle and return request `id`'s branches' tokens.
pub fn run_branches(engine: &mut flint_runtime::Engine, id: flint_runtime::RequestId) -> Vec<Vec<u32>> {
    let mut branches = Vec::new();
    engine
        .run(|e| {
            if let flint_runtime::Event::Finished { request, output } = e
                && request == id
            {
                branches = output.branches.iter().map(|b| b.tokens.clone()).collect();
            }
        })
        .unwrap();
    branches
}
