//! A CTranslate2 model.bin through the checked reader: every variable's floats, every scalar.
//! The body is `flint_runtime::fuzz::ct2`, which the tests replay over fuzz/corpus/ct2.
//!
//! cargo fuzz run ct2 fuzz/corpus/ct2 -- -max_len=4096

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flint_runtime::fuzz::ct2(data);
});
