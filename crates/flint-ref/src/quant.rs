//! GGUF block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K): their layouts, CPU dequantization,
//! and the Params of a matmul whose B operand stays in blocks. Layouts are those of ggml: every
//! value is little-endian, scales are f16.

use crate::{ParamError, matmul::MatmulParams};

/// A block-quantized weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum BlockFormat {
    /// 32 values: f16 scale d, 32 x i8; `x = q d`.
    Q8_0,
    /// 32 values: f16 d, 16 bytes of nibbles; `x = (q - 8) d`.
    Q4_0,
    /// 32 values: f16 d, f16 m, 16 bytes of nibbles; `x = q d + m`.
    Q4_1,
    /// 32 values: f16 d, 32 high bits, 16 bytes of low nibbles; `x = (q - 16) d`.
    Q5_0,
    /// 256 values in 8 groups of 32: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128
    /// bytes of nibbles; `x = d sc q - dmin m`.
    Q4_K,
    /// 256 values in 8 groups of 32: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 32
    /// bytes of high bits, 128 bytes of low nibbles; `x = d sc q - dmin m`, q of 5 bits.
    Q5_K,
    /// 256 values in 16 groups of 16: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 i8
    /// scales, f16 d; `x = d sc (q - 32)`.
    Q6_K,
}

impl BlockFormat {
    /// Every format.
    pub const ALL: [BlockFormat; 7] = [
        BlockFormat::Q8_0,
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q4_K,
        BlockFormat::Q5_K,
        BlockFormat::Q6_K,
    ];

    /// The ggml type id.
    pub fn ggml_type(self) -> u32 {
        match self {
            BlockFormat::Q4_0 => 2,
            BlockFormat::Q4_1 => 3,
            BlockFormat::Q5_0 => 6,
            BlockFormat::Q8_0 => 8,
            BlockFormat::Q4_K => 12,
            BlockFormat::Q5_K => 13,
            BlockFormat::Q6_K => 14,
        }
    }

    /// The format of a ggml type id, if flint supports it.
    pub fn from_ggml_type(id: u32) -> Option<BlockFormat> {
        BlockFormat::ALL.into_iter().find(|f| f.ggml_type() == id)
    }

    /// ggml's name (`q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Q8_0 => "q8_0",
            BlockFormat::Q4_0 => "q4_0",
            BlockFormat::Q4_1 => "q4_1",
            BlockFormat::Q5_0 => "q5_0",
            BlockFormat::Q4_K => "q4_k",
            BlockFormat::Q5_K => "q5_k",
            BlockFormat::Q6_K => "q6_k",
        }
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q4_K => 144,
            BlockFormat::Q5_K => 176,
            BlockFormat::Q6_K => 210,
        }
    }

    /// Bytes holding `n` values (`n` a multiple of the block size).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }

    /// Byte offsets of the f16 scales in a block, for making test data with finite scales.
    pub fn scale_offsets(self) -> &'static [usize] {
        match self {
            BlockFormat::Q8_0 | BlockFormat::Q4_0 | BlockFormat::Q5_0 => &[0],
            BlockFormat::Q4_1 | BlockFormat::Q4_K | BlockFormat::Q5_K => &[0, 2],
            BlockFormat::Q6_K => &[208],
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// IEEE half to single, written out so the reference depends on nothing.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// The 6-bit scale and min of group `j` (0..8) of a Q4_K block's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Dequantize one block into `out` (`block_elems` values).
pub fn dequantize_block(fmt: BlockFormat, b: &[u8], out: &mut [f32]) {
    match fmt {
        BlockFormat::Q8_0 => {
            let d = f16_at(b, 0);
            for (i, o) in out.iter_mut().enumerate().take(32) {
                *o = f32::from(b[2 + i] as i8) * d;
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let d = f16_at(b, 0);
            let (m, qs) = if fmt == BlockFormat::Q4_1 { (f16_at(b, 2), &b[4..20]) } else { (-8.0 * d, &b[2..18]) };
            for j in 0..16 {
                out[j] = f32::from(qs[j] & 0xf) * d + m;
                out[j + 16] = f32::from(qs[j] >> 4) * d + m;
            }
        }
        BlockFormat::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                out[j] = (((u32::from(qs[j]) & 0xf) | h0) as f32 - 16.0) * d;
                out[j + 16] = (((u32::from(qs[j]) >> 4) | h1) as f32 - 16.0) * d;
            }
        }
        BlockFormat::Q4_K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qs = &b[16..144];
            for pair in 0..4 {
                let (s0, m0) = scale_min_k4(2 * pair, scales);
                let (s1, m1) = scale_min_k4(2 * pair + 1, scales);
                let q = &qs[32 * pair..][..32];
                for l in 0..32 {
                    out[64 * pair + l] = d * f32::from(s0) * f32::from(q[l] & 0xf) - dmin * f32::from(m0);
                    out[64 * pair + 32 + l] = d * f32::from(s1) * f32::from(q[l] >> 4) - dmin * f32::from(m1);
                }
            }
        }
        BlockFormat::Q5_K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for pair in 0..4 {
                let (s0, m0) = scale_min_k4(2 * pair, scales);
                let (s1, m1) = scale_min_k4(2 * pair + 1, scales);
                let q = &qs[32 * pair..][..32];
                for l in 0..32 {
                    let h0 = (qh[l] >> (2 * pair)) & 1;
                    let h1 = (qh[l] >> (2 * pair + 1)) & 1;
                    out[64 * pair + l] = d * f32::from(s0) * f32::from((q[l] & 0xf) | (h0 << 4)) - dmin * f32::from(m0);
                    out[64 * pair + 32 + l] =
                        d * f32::from(s1) * f32::from((q[l] >> 4) | (h1 << 4)) - dmin * f32::from(m1);
                }
            }
        }
        BlockFormat::Q6_K => {
            let d = f16_at(b, 208);
            for half in 0..2 {
                let ql = &b[64 * half..];
                let qh = &b[128 + 32 * half..];
                let sc = &b[192 + 8 * half..];
                let y = &mut out[128 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = i32::from((ql[l] & 0xf) | ((qh[l] & 3) << 4)) - 32;
                    let q2 = i32::from((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    let s = |k: usize| f32::from(sc[is + k] as i8);
                    y[l] = d * s(0) * q1 as f32;
                    y[l + 32] = d * s(2) * q2 as f32;
                    y[l + 64] = d * s(4) * q3 as f32;
                    y[l + 96] = d * s(6) * q4 as f32;
                }
            }
        }
    }
}

/// Dequantize `n` values (a whole number of blocks) from `bytes`.
pub fn dequantize(fmt: BlockFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>, ParamError> {
    let be = fmt.block_elems();
    if !n.is_multiple_of(be) {
        return Err(ParamError::new(
            "dequantize",
            format!("{n} values is not a whole number of {} blocks of {be}", fmt.name()),
        ));
    }
    if bytes.len() != fmt.bytes_for(n) {
        return Err(ParamError::new(
            "dequantize",
            format!("{} bytes for {n} {} values, expected {}", bytes.len(), fmt.name(), fmt.bytes_for(n)),
        ));
    }
    let mut out = vec![0f32; n];
    for (block, chunk) in bytes.chunks_exact(fmt.block_bytes()).zip(out.chunks_exact_mut(be)) {
        dequantize_block(fmt, block, chunk);
    }
    Ok(out)
}

/// A matmul whose B (`[n, k]`, row-major, each row a whole number of blocks) is block-quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantMatmulParams {
    /// The shape (B unbatched).
    pub mm: MatmulParams,
    /// B's format.
    pub format: BlockFormat,
}

impl QuantMatmulParams {
    /// Check the shape: rows of B must be whole blocks and B shared by every batch.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.mm.validate()?;
        if !self.mm.k.is_multiple_of(self.format.block_elems()) {
            return Err(ParamError::new(
                "quant matmul",
                format!(
                    "k = {} is not a multiple of the {} block size {}",
                    self.mm.k,
                    self.format.name(),
                    self.format.block_elems()
                ),
            ));
        }
        if self.mm.b_batched {
            return Err(ParamError::new("quant matmul", "quantized weights are shared by every batch"));
        }
        Ok(())
    }

    /// Bytes of B.
    pub fn b_bytes(&self) -> usize {
        self.format.bytes_for(self.mm.n * self.mm.k)
    }

    /// Bytes moved: A, B's blocks, C (f32 activations).
    pub fn bytes(&self) -> f64 {
        (4 * (self.mm.a_len() + self.mm.c_len()) + self.b_bytes()) as f64
    }
}

/// Reference: dequantize B, then the f64 matmul.
pub fn quant_matmul(p: &QuantMatmulParams, a: &[f32], b: &[u8], bias: Option<&[f32]>) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    let w = dequantize(p.format, b, p.mm.n * p.mm.k)?;
    crate::matmul::matmul(&p.mm, a, &w, bias)
}

/// What a decode-step matvec does around its products, folding the dispatches before and after
/// it into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantEpilogue {
    /// Write the products.
    Store,
    /// Add the products to C (the residual stream).
    Residual,
    /// B is a gate stacked on an up projection (`n / 2` rows each, in file order); C takes
    /// `act(gate) * up`, `[m, n / 2]`, with `op` one of [`EltOp::SwiGlu`](crate::elementwise::EltOp::SwiGlu), [`EltOp::GeGlu`](crate::elementwise::EltOp::GeGlu).
    Glu(crate::elementwise::EltOp),
}

/// A quantized matmul with RMSNorm of A's rows on the way in (`norm_eps`, weights given) and an
/// epilogue: what a decode step's projections do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedQuantParams {
    /// The matmul.
    pub q: QuantMatmulParams,
    /// RMSNorm of A's rows (its eps), when A comes in un-normalised.
    pub norm_eps: Option<f32>,
    /// What happens to the products.
    pub epilogue: QuantEpilogue,
}

impl FusedQuantParams {
    /// Columns of C.
    pub fn out_cols(&self) -> usize {
        match self.epilogue {
            QuantEpilogue::Glu(_) => self.q.mm.n / 2,
            _ => self.q.mm.n,
        }
    }

    /// Check the shape: a GLU needs an even `n`.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.q.validate()?;
        if let QuantEpilogue::Glu(op) = self.epilogue {
            if !self.q.mm.n.is_multiple_of(2) {
                return Err(ParamError::new("fused quant matmul", format!("a GLU over {} rows (odd)", self.q.mm.n)));
            }
            if !matches!(op, crate::elementwise::EltOp::SwiGlu | crate::elementwise::EltOp::GeGlu) {
                return Err(ParamError::new("fused quant matmul", format!("{} is not a gated unit", op.name())));
            }
        }
        Ok(())
    }
}

/// Reference of [`FusedQuantParams`]: the norm, the matmul and the epilogue composed from their
/// own references. `norm_w` is the norm's weights (`[k]`, with `norm_eps`); `c` is C before the
/// dispatch (read by [`QuantEpilogue::Residual`]).
pub fn fused_quant_matmul(
    p: &FusedQuantParams,
    a: &[f32],
    b: &[u8],
    norm_w: Option<&[f32]>,
    c: &[f32],
) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    let (m, k) = (p.q.mm.m, p.q.mm.k);
    let a = match (p.norm_eps, norm_w) {
        (Some(eps), Some(w)) => {
            let np = crate::norm::NormParams { kind: crate::norm::NormKind::Rms, rows: m, dim: k, eps };
            crate::norm::norm(&np, a, w, None)?
        }
        (None, None) => a.to_vec(),
        _ => return Err(ParamError::new("fused quant matmul", "norm weights and norm_eps go together")),
    };
    let y = quant_matmul(&p.q, &a, b, None)?;
    crate::check_len("fused quant matmul", "C", c, m * p.out_cols())?;
    Ok(match p.epilogue {
        QuantEpilogue::Store => y,
        QuantEpilogue::Residual => y.iter().zip(c).map(|(&y, &c)| (f64::from(c) + f64::from(y)) as f32).collect(),
        QuantEpilogue::Glu(op) => crate::elementwise::glu_pair(op, m, p.q.mm.n / 2, &y)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn q8_0_and_q4_1_by_hand() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // d = 0.5
        b[2] = 4;
        b[3] = 0xfe; // -2
        let v = dequantize(BlockFormat::Q8_0, &b, 32).unwrap();
        assert_eq!(&v[..3], &[2.0, -1.0, 0.0]);
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1
        b[2..4].copy_from_slice(&0xbc00u16.to_le_bytes()); // m = -1
        b[4] = 0x53; // element 0 -> 3, element 16 -> 5
        let v = dequantize(BlockFormat::Q4_1, &b, 32).unwrap();
        assert_eq!((v[0], v[16], v[1]), (2.0, 4.0, -1.0));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(dequantize(BlockFormat::Q4_K, &[0; 144], 32).is_err());
        assert!(dequantize(BlockFormat::Q4_0, &[0; 17], 32).is_err());
    }
}
