//! A chat template from a model file, rendered over a short conversation with bounded fuel and
//! output. The body is `flint_runtime::fuzz::chat_template`, which the tests replay over
//! fuzz/corpus/chat_template.
//!
//! cargo fuzz run chat_template fuzz/corpus/chat_template -- -max_len=2048 -dict=fuzz/jinja.dict

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::chat_template(data, 100_000);
});
