//! The GGUF reader on arbitrary bytes: parsing, then everything a loader asks of a parsed file
//! (the decoder config and its tensor check, the tokenizer, every tensor's data and its f32
//! conversion) must return a value or an error, never panic, hang or allocate without bound.
//! The body is `flint_runtime::fuzz::gguf`, which the tests replay over fuzz/corpus/gguf.
//!
//! cargo fuzz run gguf fuzz/corpus/gguf -- -max_len=4096

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::gguf(data);
});
