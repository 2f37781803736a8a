//! Every file of every fuzz corpus (fuzz/corpus/<target>: the seeds from
//! xtask/scripts/gguf_fuzz_seeds.py and `cargo xtask fuzz-seeds`, and what `cargo fuzz run`
//! found worth keeping) goes through its target's body (`flint_runtime::fuzz`), so the cases the
//! fuzzers found stay fixed without the fuzzers: each must give a value or an error, never
//! panic; the valid seeds must give values; and an error about a file names it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flint_runtime::fuzz;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{target}: the seeds are there");
    files
}

/// Run `body` over the corpus; each input must finish within a second (the fuzzers' slowest
/// units take milliseconds). Returns the accepted inputs' names and the refused ones' with
/// their errors.
type Replayed = (Vec<String>, Vec<(String, String)>);

fn replay<T>(target: &str, body: impl Fn(&[u8]) -> flint_runtime::Result<T>) -> Replayed {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for path in corpus(target) {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let t = Instant::now();
        match body(&bytes) {
            Ok(_) => ok.push(name.clone()),
            Err(e) => refused.push((name.clone(), e.to_string())),
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{target}/{name} took {:?}", t.elapsed());
    }
    eprintln!("{target}: {} inputs, {} accepted, {} refused", ok.len() + refused.len(), ok.len(), refused.len());
    (ok, refused)
}

#[test]
fn the_gguf_corpus_parses_or_is_refused_cleanly() {
    let (ok, refused) = replay("gguf", fuzz::gguf);
    for (_, e) in &refused {
        assert!(e.contains("fuzz.gguf"), "the error names the file: {e}");
    }
    for seed in ["llama-q8_0.gguf", "llama-q4_1.gguf", "llama-q5_0.gguf", "gemma3-q4_k.gguf", "gemma3-q6_k.gguf"] {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} is a valid file");
    }
}

#[test]
fn the_safetensors_config_corpus_loads_or_is_refused_cleanly() {
    let (ok, refused) = replay("safetensors_config", fuzz::safetensors_config);
    for (_, e) in &refused {
        assert!(e.contains("fuzz"), "the error names the file: {e}");
    }
    for seed in ["idefics3-tiny-a", "idefics3-tiny-b", "llama"] {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} is a valid directory");
    }
}

#[test]
fn the_chat_template_corpus_renders_or_is_refused_cleanly() {
    let (ok, refused) = replay("chat_template", |b| fuzz::chat_template(b, 100_000));
    for (_, e) in &refused {
        assert!(e.contains("chat template") || e.contains("fuzz"), "the error says what failed: {e}");
    }
    for seed in [
        "idefics3.jinja",
        "SmolLM2-135M-Instruct.Q4_1.gguf.jinja",
        "set.jinja",
        "methods.jinja",
        "loop.jinja",
        "macro.jinja",
    ] {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} renders");
    }
}

#[test]
fn the_image_corpus_decodes_or_is_refused_cleanly() {
    let (ok, refused) = replay("image", |b| fuzz::image(b, 1 << 20));
    for (_, e) in &refused {
        assert!(e.contains("fuzz"), "the error names the image: {e}");
    }
    for seed in
        ["rgb.png", "rgba.png", "gray.png", "rgb16.png", "rgb.jpg", "rgb.gif", "rgb.bmp", "rgba.webp", "strip.png"]
    {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} decodes");
    }
    // A GIF whose frame is far larger than its screen: the decoder asked for 8.4 GB.
    assert!(refused.iter().any(|(n, _)| n == "found-gif-frame-over-screen"), "{refused:?}");
}

#[test]
fn the_request_line_corpus_parses_or_is_refused_cleanly() {
    let (ok, _) = replay("request_line", fuzz::request_line);
    for seed in ["plain", "all", "think"] {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} parses");
    }
}

#[test]
fn the_wav_corpus_decodes_or_is_refused_cleanly() {
    let (ok, refused) = replay("wav", |b| fuzz::wav(b, 1 << 20));
    for (_, e) in &refused {
        assert!(e.contains("fuzz"), "the error names the file: {e}");
    }
    for seed in ["u8-mono.wav", "s16-stereo.wav", "s24-mono.wav", "s32-mono.wav", "f32-3ch.wav"] {
        assert!(ok.iter().any(|n| n == seed), "the seed {seed} decodes");
    }
    for bad in ["cut-data.wav", "zero-rate.wav", "f64.wav"] {
        assert!(refused.iter().any(|(n, _)| n == bad), "{bad} is refused: {refused:?}");
    }
}

#[test]
fn the_ct2_corpus_parses_or_is_refused_cleanly() {
    let (ok, refused) = replay("ct2", fuzz::ct2);
    for (_, e) in &refused {
        assert!(e.contains("fuzz.bin"), "the error names the file: {e}");
    }
    assert!(ok.iter().any(|n| n == "tiny.bin"), "the seed parses");
    for bad in ["cut.bin", "bad-bytes.bin", "bad-alias.bin"] {
        assert!(refused.iter().any(|(n, _)| n == bad), "{bad} is refused: {refused:?}");
    }
}
