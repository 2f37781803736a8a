//! The GGUF reader on arbitrary bytes: parsing, then everything a loader asks of a parsed file
//! (the decoder config, the tokenizer, every tensor's data and its f32 conversion) must return
//! a value or an error, never panic, hang or allocate without bound.
//!
//! cargo fuzz run gguf fuzz/corpus/gguf -- -max_len=4096

#![no_main]

use flint_runtime::gguf::Gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let _ = flint_runtime::model::config::DecoderConfig::from_gguf(&g);
    let _ = flint_runtime::tokenizer::Tokenizer::from_gguf(&g);
    for t in &g.tensors {
        let _ = g.data(t);
        if t.numel() <= 1 << 16 {
            let _ = g.to_f32(t);
        }
    }
});
