//! Every file of the GGUF fuzz corpus (fuzz/corpus/gguf: seeds from
//! xtask/scripts/gguf_fuzz_seeds.py and what `cargo fuzz run gguf` found worth keeping) goes
//! through what the fuzz target does, so the cases the fuzzer found stay fixed without the
//! fuzzer: each must parse or be refused with an error naming the file, never panic.

use flint_runtime::gguf::Gguf;

#[test]
fn the_fuzz_corpus_parses_or_is_refused_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("the corpus exists").map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 5, "the seeds are there");
    let (mut parsed, mut refused) = (0, 0);
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        match Gguf::from_bytes(path.file_name().unwrap(), bytes) {
            Ok(g) => {
                parsed += 1;
                let _ = flint_runtime::model::config::DecoderConfig::from_gguf(&g);
                let _ = flint_runtime::tokenizer::Tokenizer::from_gguf(&g);
                for t in &g.tensors {
                    let _ = g.data(t);
                    if t.numel() <= 1 << 16 {
                        let _ = g.to_f32(t);
                    }
                }
            }
            Err(e) => {
                refused += 1;
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                assert!(e.to_string().contains(&name), "the error names the file: {e}");
            }
        }
    }
    // The seeds are valid files.
    for seed in ["llama-q8_0.gguf", "llama-q4_1.gguf", "llama-q5_0.gguf", "gemma3-q4_k.gguf", "gemma3-q6_k.gguf"] {
        let g = Gguf::from_bytes(seed, std::fs::read(dir.join(seed)).unwrap()).unwrap();
        assert!(flint_runtime::model::config::DecoderConfig::from_gguf(&g).is_ok(), "{seed}");
    }
    eprintln!("{} corpus files: {parsed} parsed, {refused} refused", files.len());
}
