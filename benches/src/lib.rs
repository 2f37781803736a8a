//! Criterion benches over flint's case table live in `benches/kernels.rs`; this library is empty.
