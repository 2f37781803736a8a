//! One line of a `flint generate --prompts` file, parsed and checked. The body is
//! `flint_runtime::fuzz::request_line`, which the tests replay over fuzz/corpus/request_line.
//!
//! cargo fuzz run request_line fuzz/corpus/request_line -- -max_len=1024

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::request_line(data);
});
