//! flint's dequantization against gguf-py's on random and real blocks of every format
//! (fixtures made by xtask/scripts/quant_fixtures.py).

use flint_ref::quant::{BlockFormat, dequantize};

#[test]
fn every_format_matches_gguf_py() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/quant");
    for fmt in BlockFormat::ALL {
        let bytes = std::fs::read(dir.join(format!("{}.bin", fmt.name()))).expect("fixture");
        let want: Vec<f32> = std::fs::read(dir.join(format!("{}.f32", fmt.name())))
            .expect("fixture")
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n = bytes.len() / fmt.block_bytes() * fmt.block_elems();
        assert_eq!(n, want.len(), "{}", fmt.name());
        let got = dequantize(fmt, &bytes, n).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{} element {i}: {g} vs gguf-py {w}", fmt.name());
        }
    }
}
