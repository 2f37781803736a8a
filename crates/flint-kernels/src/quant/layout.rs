//! flint's GPU layout for GGUF block formats, made once at load from the file's blocks (which stay
//! the source of truth: the CPU reference dequantizes the GGUF bytes).
//!
//! A GGUF block packs scales and quants together in 18, 20, 22, 34, 144, 176 or 210 bytes, so
//! most of its words sit at 2-byte offsets and a kernel needs two loads and a realignment per
//! word. Here a matrix's blocks are split into three row-major regions of one buffer of
//! `vec4<u32>`:
//!
//! - **quants**: [`Layout::qv`] vec4s per block. Every 32-value sub-block's low four bits are one
//!   vec4 in one order for all formats (byte `i` holds value `i` in its low nibble and value
//!   `i + 16` in its high one, as Q4_0 has it); q8_0's bytes are two vec4s; the 5- and 6-bit
//!   formats add their high bits as whole words (q5_k: one word per sub-block, bit `i` for value
//!   `i`; q6_k: two words per sub-block, two bits per value) after the low nibbles.
//! - **meta**: [`Layout::meta_bytes`] per block: the f16 scales (q8_0, q4_0, q5_0: d; q4_1: d
//!   and m), or the k-quants' 16-byte header (d, dmin and the 12 bytes of 6-bit scales; q6_k's 16
//!   signed scales). Each row is padded to 16 bytes.
//! - **aux**: [`Layout::aux_bytes`] per block: q5_0's 32 high bits, q6_k's d widened to f32
//!   (exactly). Each row is padded to 16 bytes.
//!
//! Every load a kernel makes is then one aligned vec4. Lanes that walk a row (the CPU matvec)
//! stream its quants and take a meta vec4 once per [`Layout::group`] blocks; lanes of a subgroup
//! that split a row (the GPU matvec) read neighbouring vec4s. Sizes stay those of the file but
//! for the row padding of meta and aux, and q5_0's and q6_k's scales (q5_0: 24 bytes a block
//! instead of 22; q6_k: 212 instead of 210).

use flint_ref::quant::BlockFormat;

/// How one format lies in the GPU layout (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// vec4s of quants per block.
    pub qv: usize,
    /// Meta bytes per block.
    pub meta_bytes: usize,
    /// Aux bytes per block.
    pub aux_bytes: usize,
    /// Blocks whose meta and aux each lie in one vec4 (the CPU matvec's blocks per trip).
    pub group: usize,
}

/// The layout of `f`.
pub fn layout(f: BlockFormat) -> Layout {
    let (qv, meta_bytes, aux_bytes) = match f {
        BlockFormat::Q8_0 => (2, 2, 0),
        BlockFormat::Q4_0 => (1, 2, 0),
        BlockFormat::Q4_1 => (1, 4, 0),
        BlockFormat::Q5_0 => (1, 2, 4),
        BlockFormat::Q4_K => (8, 16, 0),
        BlockFormat::Q5_K => (10, 16, 0),
        BlockFormat::Q6_K => (12, 16, 4),
    };
    let per_vec = |b: usize| 16usize.checked_div(b).unwrap_or(usize::MAX);
    Layout { qv, meta_bytes, aux_bytes, group: per_vec(meta_bytes).min(per_vec(aux_bytes)) }
}

/// vec4s per row of each region for rows of `k` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowStrides {
    /// Quants.
    pub quants: usize,
    /// Meta.
    pub meta: usize,
    /// Aux.
    pub aux: usize,
}

impl RowStrides {
    /// The strides of `f` for rows of `k` values (a whole number of blocks).
    pub fn new(f: BlockFormat, k: usize) -> RowStrides {
        let l = layout(f);
        let nb = k / f.block_elems();
        RowStrides { quants: nb * l.qv, meta: (nb * l.meta_bytes).div_ceil(16), aux: (nb * l.aux_bytes).div_ceil(16) }
    }

    /// vec4s one row takes over the three regions.
    pub fn total(&self) -> usize {
        self.quants + self.meta + self.aux
    }
}

/// One block's parts: quant words, meta bytes and aux bytes.
struct BlockParts {
    quants: Vec<u32>,
    meta: Vec<u8>,
    aux: Vec<u8>,
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// 32 four-bit values as one vec4 in the common order: byte i = v[i] | v[i + 16] << 4.
fn nibbles(v: &[u8; 32]) -> [u32; 4] {
    let bytes: Vec<u8> = (0..16).map(|i| (v[i] & 15) | ((v[i + 16] & 15) << 4)).collect();
    let w = words(&bytes);
    [w[0], w[1], w[2], w[3]]
}

fn split_block(f: BlockFormat, b: &[u8]) -> BlockParts {
    let (quants, meta, aux): (Vec<u32>, &[u8], Vec<u8>) = match f {
        BlockFormat::Q8_0 => (words(&b[2..34]), &b[..2], vec![]),
        BlockFormat::Q4_0 => (words(&b[2..18]), &b[..2], vec![]),
        BlockFormat::Q4_1 => (words(&b[4..20]), &b[..4], vec![]),
        BlockFormat::Q5_0 => (words(&b[6..22]), &b[..2], b[2..6].to_vec()),
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let qs = if f == BlockFormat::Q4_K { &b[16..144] } else { &b[48..176] };
            let mut q = Vec::new();
            for s in 0..8 {
                let chunk = &qs[32 * (s / 2)..][..32];
                let v: [u8; 32] = std::array::from_fn(|l| (chunk[l] >> (4 * (s & 1))) & 15);
                q.extend(nibbles(&v));
            }
            if f == BlockFormat::Q5_K {
                let qh = &b[16..48];
                for s in 0..8 {
                    q.push((0..32).map(|l| u32::from((qh[l] >> s) & 1) << l).sum());
                }
            }
            (q, &b[..16], vec![])
        }
        BlockFormat::Q6_K => {
            let (ql, qh) = (&b[0..128], &b[128..192]);
            let mut lows: Vec<u32> = Vec::new();
            let mut highs: Vec<u32> = Vec::new();
            for s in 0..8 {
                let (half, t) = (s / 4, s % 4);
                let v: [u8; 32] = std::array::from_fn(|l| {
                    let lo = ql[64 * half + l + 32 * (t & 1)] >> (4 * (t / 2));
                    let hi = qh[32 * half + l] >> (2 * t);
                    (lo & 15) | ((hi & 3) << 4)
                });
                lows.extend(nibbles(&v));
                for part in v.chunks_exact(16) {
                    highs.push(part.iter().enumerate().map(|(i, &q)| u32::from(q >> 4) << (2 * i)).sum());
                }
            }
            lows.extend(highs);
            let d = flint_ref::quant::f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
            (lows, &b[192..208], d.to_le_bytes().to_vec())
        }
    };
    BlockParts { quants, meta: meta.to_vec(), aux }
}

/// Rows `[rows, k]` of `f`'s GGUF blocks in the GPU layout: the words of the quants region, then
/// the meta region, then the aux region (see [`RowStrides`]). `bytes` must hold exactly the rows'
/// blocks and `k` be a whole number of blocks (the caller checks both).
pub fn repack(f: BlockFormat, bytes: &[u8], rows: usize, k: usize) -> Vec<u32> {
    let st = RowStrides::new(f, k);
    let nb = k / f.block_elems();
    let mut quants = Vec::with_capacity(rows * st.quants * 4);
    let mut meta = vec![0u8; rows * st.meta * 16];
    let mut aux = vec![0u8; rows * st.aux * 16];
    for (r, row) in bytes.chunks_exact(nb * f.block_bytes()).take(rows).enumerate() {
        let (mut mo, mut ao) = (r * st.meta * 16, r * st.aux * 16);
        for block in row.chunks_exact(f.block_bytes()) {
            let parts = split_block(f, block);
            quants.extend(parts.quants);
            meta[mo..mo + parts.meta.len()].copy_from_slice(&parts.meta);
            aux[ao..ao + parts.aux.len()].copy_from_slice(&parts.aux);
            mo += parts.meta.len();
            ao += parts.aux.len();
        }
    }
    quants.extend(words(&meta));
    quants.extend(words(&aux));
    quants
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_ref::quant::{dequantize, f16_to_f32};

    /// Decode the GPU layout on the CPU, as the kernels do (the layout's executable description).
    fn decode(f: BlockFormat, w: &[u32], rows: usize, k: usize) -> Vec<f32> {
        let st = RowStrides::new(f, k);
        let l = layout(f);
        let nb = k / f.block_elems();
        let byte = |word: usize, i: usize| ((w[word + i / 4] >> (8 * (i % 4))) & 0xff) as u8;
        let (meta0, aux0) = (rows * st.quants * 4, rows * (st.quants + st.meta) * 4);
        let half = |word: usize, i: usize| f16_to_f32(u16::from_le_bytes([byte(word, 2 * i), byte(word, 2 * i + 1)]));
        let mut out = Vec::new();
        for r in 0..rows {
            for b in 0..nb {
                let q = (r * st.quants + b * l.qv) * 4;
                let m = meta0 + r * st.meta * 4 + b * l.meta_bytes / 4;
                let mh = meta0 * 2 + r * st.meta * 8 + b * l.meta_bytes / 2; // in halfs
                let a = aux0 + r * st.aux * 4 + b * l.aux_bytes / 4;
                let nib = |sub: usize, i: usize| (byte(q + 4 * sub, i % 16) >> (4 * (i / 16))) & 15;
                match f {
                    BlockFormat::Q8_0 => out.extend((0..32).map(|i| f32::from(byte(q, i) as i8) * half(0, mh))),
                    BlockFormat::Q4_0 => {
                        out.extend((0..32).map(|i| f32::from(nib(0, i)) * half(0, mh) + -8.0 * half(0, mh)))
                    }
                    BlockFormat::Q4_1 => {
                        out.extend((0..32).map(|i| f32::from(nib(0, i)) * half(0, mh) + half(0, mh + 1)))
                    }
                    BlockFormat::Q5_0 => out.extend((0..32).map(|i| {
                        let h = ((w[a] >> i) & 1) as u8;
                        (f32::from(nib(0, i) | (h << 4)) - 16.0) * half(0, mh)
                    })),
                    BlockFormat::Q4_K | BlockFormat::Q5_K => {
                        let sc: Vec<u8> = (4..16).map(|i| byte(m, i)).collect();
                        let (d, dmin) = (half(m, 0), half(m, 1));
                        for s in 0..8 {
                            let (sv, mv) = if s < 4 {
                                (sc[s] & 63, sc[s + 4] & 63)
                            } else {
                                ((sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4), (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4))
                            };
                            out.extend((0..32).map(|i| {
                                let h = if f == BlockFormat::Q5_K { ((w[q + 32 + s] >> i) & 1) as u8 } else { 0 };
                                d * f32::from(sv) * f32::from(nib(s, i) | (h << 4)) - dmin * f32::from(mv)
                            }));
                        }
                    }
                    BlockFormat::Q6_K => {
                        let d = f32::from_bits(w[a]);
                        for s in 0..8 {
                            out.extend((0..32).map(|i| {
                                let h = (w[q + 32 + 2 * s + i / 16] >> (2 * (i % 16))) & 3;
                                let sc = f32::from(byte(m, 2 * s + i / 16) as i8);
                                d * sc * (f32::from(nib(s, i) | ((h as u8) << 4)) - 32.0)
                            }));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn repacked_blocks_decode_to_the_files_values() {
        let mut seed = 0x1234_5678u32;
        for f in BlockFormat::ALL {
            for (rows, k) in [(3, f.block_elems() * 3), (5, f.block_elems() * 9), (1, f.block_elems())] {
                let mut bytes: Vec<u8> = (0..rows * f.bytes_for(k))
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (seed >> 24) as u8
                    })
                    .collect();
                // Finite scales: clear the f16 exponents' top bit.
                for block in bytes.chunks_exact_mut(f.block_bytes()) {
                    for &off in f.scale_offsets() {
                        block[off + 1] &= 0x3b;
                    }
                }
                let w = repack(f, &bytes, rows, k);
                assert_eq!(w.len(), rows * RowStrides::new(f, k).total() * 4, "{}", f.name());
                let want = dequantize(f, &bytes, rows * k).unwrap();
                let got = decode(f, &w, rows, k);
                assert_eq!(got, want, "{} {rows}x{k}", f.name());
            }
        }
    }
}
