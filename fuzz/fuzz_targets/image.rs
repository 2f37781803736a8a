//! An image file through decoding (format guessed from the bytes, size checked from the header)
//! and a small Idefics3 processor. The body is `flint_runtime::fuzz::image`, which the tests
//! replay over fuzz/corpus/image.
//!
//! cargo fuzz run image fuzz/corpus/image -- -max_len=8192

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::image(data, 1 << 20);
});
