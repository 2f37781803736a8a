//! A Hugging Face directory on arbitrary bytes (`config.json` and `model.safetensors`, split by
//! the first two bytes): the safetensors header, the Llama and Idefics3 decoder and vision
//! configs, every small tensor's values. The body is `flint_runtime::fuzz::safetensors_config`,
//! which the tests replay over fuzz/corpus/safetensors_config.
//!
//! cargo fuzz run safetensors_config fuzz/corpus/safetensors_config -- -max_len=4096

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::safetensors_config(data);
});
