//! A WAV file through decoding (header limits, formats, channels mixed to mono) and resampling
//! to 16 kHz. The body is `flint_runtime::fuzz::wav`, which the tests replay over
//! fuzz/corpus/wav.
//!
//! cargo fuzz run wav fuzz/corpus/wav -- -max_len=8192

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::wav(data, 1 << 16);
});
