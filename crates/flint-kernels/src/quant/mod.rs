//! Matmul and embedding gather against block-quantized weights (`shaders/quant.wgsl`). The
//! weights are repacked at load from the file's blocks into flint's GPU layout ([`layout`]); a
//! matrix larger than one storage binding is split into parts of whole rows, each its own buffer.

pub mod layout;

use flint_gpu::{DType, Device, GpuError, PipelineKey, Recorder, Result, Tensor};
use flint_ref::elementwise::EltOp;
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::quant::{BlockFormat, FusedQuantParams, QuantEpilogue, QuantMatmulParams};
use flint_ref::rope::{RopeLayout, RopeQkvParams};

use crate::attention::{KvCache, PageTable};
use crate::{
    FLOATS, Variant, check_tensor, fixed_subgroup, needs_for, param_err, registry, require, typed_key, u32_of,
    wgsl_type,
};
use layout::RowStrides;

/// Most rows of A the matvec kernel takes; more run through `matmul_q` (or, without subgroups,
/// the matvec kernel on chunks of this many rows).
pub const MATVEC_MAX_ROWS: usize = 8;
const MATVEC_WG: u32 = 64;
/// Output columns per subgroup in matvec_q.
const MATVEC_NR: u32 = 4;
const MATMUL_WG: u32 = 64;
const MATMUL_RB: u32 = 2;
/// Rows of A per workgroup of matmul_t, and the 32-value sub-blocks of them staged per trip.
const TILED_TM: u32 = 16;
const TILED_ST: u32 = 4;
const EMBED_WG: u32 = 64;

/// One buffer of a [`QuantWeight`]: rows `row0 .. row0 + rows` in the GPU layout.
#[derive(Clone, Debug)]
struct Part {
    row0: usize,
    rows: usize,
    words: Tensor,
}

/// A quantized `[n, k]` weight matrix on the GPU, in flint's layout ([`layout`]), in parts of
/// whole rows.
#[derive(Clone, Debug)]
pub struct QuantWeight {
    parts: Vec<Part>,
    /// Block format.
    pub format: BlockFormat,
    /// Rows (output features).
    pub n: usize,
    /// Row length (input features), a multiple of the block size.
    pub k: usize,
    /// Rows are gate and up rows interleaved (`2j`: gate `j`, `2j + 1`: up `j`) for a GLU
    /// epilogue ([`QuantWeight::upload_glu`]).
    pub glu_pairs: bool,
}

impl QuantWeight {
    /// Repack `bytes` (the tensor's GGUF blocks, row-major `[n, k]`) and upload it in parts that
    /// each fit a binding.
    pub fn upload(
        dev: &Device,
        name: &str,
        bytes: &[u8],
        format: BlockFormat,
        n: usize,
        k: usize,
    ) -> Result<QuantWeight> {
        Self::upload_parts(dev, name, bytes, format, n, k, dev.caps().max_storage_binding as usize)
    }

    /// [`QuantWeight::upload`] with parts of at most `max_part_bytes` (tests use small parts to
    /// exercise the split that large embeddings need).
    pub fn upload_parts(
        dev: &Device,
        name: &str,
        bytes: &[u8],
        format: BlockFormat,
        n: usize,
        k: usize,
        max_part_bytes: usize,
    ) -> Result<QuantWeight> {
        let shape_err = |message: String| GpuError::Shape { what: format!("quantized weight {name}"), message };
        if n == 0 || k == 0 || !k.is_multiple_of(format.block_elems()) {
            return Err(shape_err(format!("{n} rows of {k} is not whole {} blocks", format.name())));
        }
        let row_bytes = format.bytes_for(k);
        if n.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(shape_err(format!(
                "{} bytes, expected {n} rows of {row_bytes} bytes ({n} x {k} {})",
                bytes.len(),
                format.name()
            )));
        }
        let gpu_row = Self::row_bytes(format, k);
        let limit = max_part_bytes.min(dev.caps().max_storage_binding as usize);
        if gpu_row > limit {
            return Err(GpuError::TooLarge {
                what: format!("one row of quantized weight {name}"),
                bytes: gpu_row as u64,
                limit_name: "max_storage_buffer_binding_size",
                limit: limit as u64,
                adapter: dev.caps().short_label(),
            });
        }
        let rows_per_part = (limit / gpu_row).clamp(1, n);
        let mut parts = Vec::new();
        for row0 in (0..n).step_by(rows_per_part) {
            let rows = rows_per_part.min(n - row0);
            let words = layout::repack(format, &bytes[row0 * row_bytes..(row0 + rows) * row_bytes], rows, k);
            let words = dev.upload_u32(&format!("{name} rows {row0}.."), &words, &[words.len()])?;
            parts.push(Part { row0, rows, words });
        }
        Ok(QuantWeight { parts, format, n, k, glu_pairs: false })
    }

    /// A gate and an up projection stacked in `bytes` (`n / 2` rows each, gate first, as the
    /// file has them), uploaded with their rows interleaved for a GLU epilogue
    /// ([`quant_matvec_fused`] with [`QuantEpilogue::Glu`]); parts hold whole pairs.
    pub fn upload_glu(
        dev: &Device,
        name: &str,
        bytes: &[u8],
        format: BlockFormat,
        n: usize,
        k: usize,
    ) -> Result<QuantWeight> {
        let row_bytes = format.bytes_for(k);
        if !n.is_multiple_of(2) || n.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(GpuError::Shape {
                what: format!("quantized weight {name}"),
                message: format!("{} bytes for a gate and an up projection of {n} rows of {k} in all", bytes.len()),
            });
        }
        let half = n / 2;
        let mut interleaved = Vec::with_capacity(bytes.len());
        for j in 0..half {
            interleaved.extend_from_slice(&bytes[j * row_bytes..(j + 1) * row_bytes]);
            interleaved.extend_from_slice(&bytes[(half + j) * row_bytes..(half + j + 1) * row_bytes]);
        }
        let gpu_row = Self::row_bytes(format, k);
        let limit = (dev.caps().max_storage_binding as usize / gpu_row / 2 * 2).max(2) * gpu_row;
        let mut w = Self::upload_parts(dev, name, &interleaved, format, n, k, limit)?;
        w.glu_pairs = true;
        Ok(w)
    }

    /// Bytes one row of `k` values of `format` takes in the GPU layout.
    pub fn row_bytes(format: BlockFormat, k: usize) -> usize {
        RowStrides::new(format, k).total() * 16
    }

    /// Number of buffers the matrix spans.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Bytes the matrix takes on the GPU (what one pass over it reads).
    pub fn bytes(&self) -> usize {
        self.n * RowStrides::new(self.format, self.k).total() * 16
    }

    /// Bytes of the file's blocks it was made from.
    pub fn file_bytes(&self) -> usize {
        self.format.bytes_for(self.n * self.k)
    }

    /// An error naming `what` unless this weight is the `[n, k]` matrix of format `p` says.
    fn check_matches(&self, what: &str, p: &QuantMatmulParams) -> Result<()> {
        if (self.format, self.n, self.k) == (p.format, p.mm.n, p.mm.k) {
            return Ok(());
        }
        Err(GpuError::Shape {
            what: what.into(),
            message: format!(
                "weight is {} {}x{}, params say {} {}x{}",
                self.format.name(),
                self.n,
                self.k,
                p.format.name(),
                p.mm.n,
                p.mm.k
            ),
        })
    }

    /// The uniform of a dispatch over part `part`.
    fn uniform(&self, part: &Part, m: usize, ldc: usize, col: usize, scale: f32) -> Uniform {
        self.uniform_eps(part, m, ldc, col, scale, 0.0)
    }

    fn uniform_eps(&self, part: &Part, m: usize, ldc: usize, col: usize, scale: f32, eps: f32) -> Uniform {
        let st = RowStrides::new(self.format, self.k);
        Uniform {
            m: u32_of(m),
            n: u32_of(part.rows),
            k: u32_of(self.k),
            ldc: u32_of(ldc),
            n_off: u32_of(col + part.row0),
            meta_off: u32_of(part.rows * st.quants),
            aux_off: u32_of(part.rows * (st.quants + st.meta)),
            qstride: u32_of(st.quants),
            mstride: u32_of(st.meta),
            astride: u32_of(st.aux),
            scale,
            eps,
        }
    }
}

/// [`Uniform`] with the RoPE and cache geometry of a ROPE_KV epilogue.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RopeUniform {
    base: Uniform,
    heads: u32,
    kv_heads: u32,
    d: u32,
    page_size: u32,
    max_pages: u32,
    log2_theta: f32,
    freq_scale: f32,
    row0: u32,
}

/// [`Uniform`] with the first tile of a part's argmax-tile epilogue (TOP).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TopUniform {
    base: Uniform,
    tile0: u32,
    tiles: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    m: u32,
    n: u32,
    k: u32,
    ldc: u32,
    n_off: u32,
    meta_off: u32,
    aux_off: u32,
    qstride: u32,
    mstride: u32,
    astride: u32,
    scale: f32,
    eps: f32,
}

fn fmt_code(f: BlockFormat) -> u32 {
    match f {
        BlockFormat::Q8_0 => 0,
        BlockFormat::Q4_0 => 1,
        BlockFormat::Q4_1 => 2,
        BlockFormat::Q5_0 => 3,
        BlockFormat::Q4_K => 4,
        BlockFormat::Q6_K => 5,
        BlockFormat::Q5_K => 6,
    }
}

/// What a matvec folds in: RMSNorm of its input, and its epilogue (with `rope_kv`, the K/V
/// cache's dtype: RoPE and the K/V append of a QKV projection instead of the store; with
/// `top`, each workgroup's argmax tile instead of the products, see [`quant_head_tiles`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fusion {
    norm: bool,
    epilogue: QuantEpilogue,
    rope_kv: Option<DType>,
    top: bool,
}

const PLAIN: Fusion = Fusion { norm: false, epilogue: QuantEpilogue::Store, rope_kv: None, top: false };

impl Fusion {
    fn apply(self, key: PipelineKey) -> PipelineKey {
        let (glu, gelu) = match self.epilogue {
            QuantEpilogue::Glu(op) => (true, op == EltOp::GeGlu),
            _ => (false, false),
        };
        let key = key
            .flag("NORM", self.norm)
            .flag("RESIDUAL", self.epilogue == QuantEpilogue::Residual)
            .flag("GLU", glu)
            .flag("GELU", gelu)
            .flag("TOP", self.top);
        match self.rope_kv {
            Some(kv) => key.flag("ROPE_KV", true).define("TKV", wgsl_type(kv)).flag("ENABLE_F16", kv == DType::F16),
            None => key,
        }
    }

    fn name(self) -> String {
        let epi = match self.epilogue {
            QuantEpilogue::Store => "",
            QuantEpilogue::Residual => " +residual",
            QuantEpilogue::Glu(EltOp::GeGlu) => " +geglu",
            QuantEpilogue::Glu(_) => " +swiglu",
        };
        let rope = match self.rope_kv {
            Some(kv) => format!(" +rope/kv {kv}"),
            None => String::new(),
        };
        let top = if self.top { " +argmax tiles" } else { "" };
        format!("{}{epi}{rope}{top}", if self.norm { " norm+" } else { "" })
    }

    /// Every fusion a decode step uses.
    const DECODE: [Fusion; 8] = [
        Fusion { norm: true, epilogue: QuantEpilogue::Store, rope_kv: None, top: false },
        Fusion { norm: true, epilogue: QuantEpilogue::Store, rope_kv: Some(DType::F32), top: false },
        Fusion { norm: true, epilogue: QuantEpilogue::Store, rope_kv: Some(DType::F16), top: false },
        Fusion { norm: false, epilogue: QuantEpilogue::Residual, rope_kv: None, top: false },
        Fusion { norm: true, epilogue: QuantEpilogue::Glu(EltOp::SwiGlu), rope_kv: None, top: false },
        Fusion { norm: true, epilogue: QuantEpilogue::Glu(EltOp::GeGlu), rope_kv: None, top: false },
        Fusion { norm: true, epilogue: QuantEpilogue::Store, rope_kv: None, top: true },
        Fusion { norm: false, epilogue: QuantEpilogue::Store, rope_kv: None, top: true },
    ];

    fn needs(self, subgroups: bool) -> crate::Needs {
        needs_for(self.rope_kv.as_slice(), subgroups)
    }
}

fn matvec_key(f: BlockFormat, rows: u32, subgroups: bool, fusion: Fusion) -> PipelineKey {
    fusion.apply(
        typed_key("quant.wgsl", "matvec_q", MATVEC_WG, &[])
            .define("FMT", fmt_code(f))
            .define("MR", rows)
            .define("NR", MATVEC_NR)
            .flag("MATVEC", true)
            .flag("SUBGROUPS", subgroups),
    )
}

/// Weight rows per invocation in matvec_rows, most first; fewer when the matrix is short, so
/// that the work still spreads over several workgroups.
const ROWS_NR: [u32; 3] = [8, 4, 2];
const ROWS_WG: u32 = 64;
/// Workgroups matvec_rows aims for on a CPU adapter (a few per core).
const ROWS_MIN_GROUPS: u32 = 8;
/// matvec_rows compiles the row length in (fully unrolled, so every activation index is a
/// constant) while rows of A times 32-value sub-blocks per row is at most this: with a loop
/// counter in the index, a CPU adapter loads the activations per lane instead of once for all
/// lanes. On lavapipe, SmolLM2's 49152x576 q8_0 head went from 19.9 to 14.1 ms with it (best of
/// 10). The bound keeps compile times down: lavapipe took 5 to 10 s to compile a 5-row kernel
/// over 18 blocks, and 0.1 to 0.5 s for one row.
const ROWS_UNROLL_SUBS: usize = 48;

/// The unrolled row length (in blocks) of matvec_rows for `rows` rows of A and rows of `k`, when
/// it is unrolled (the activations must come through a uniform binding).
fn rows_unroll(f: BlockFormat, rows: usize, k: usize, ubo: bool) -> Option<u32> {
    (ubo && rows * (k / 32) <= ROWS_UNROLL_SUBS).then(|| u32_of(k / f.block_elems()))
}

/// Rows of A per dispatch when `rows` of them should go through matvec_rows in chunks: on CPU
/// adapters, where matvec_rows would loop at `rows` (every activation load a per-lane gather
/// there: 4 rows of SmolLM2's 576 cost 5x one) but has the row length compiled in for chunks
/// of fewer, and every chunk's rows of A and C start at a binding offset the adapter accepts.
fn rows_chunk(dev: &Device, p: &QuantMatmulParams, a: &Tensor, c: &Tensor, out: Out<'_>, rows: usize) -> Option<usize> {
    let caps = dev.caps();
    let by_rows = out.how.by_rows(caps);
    let ubo = |n: usize| (n * p.mm.k * 4) as u64 <= caps.max_uniform_binding;
    if !by_rows || rows <= 1 || rows > MATVEC_MAX_ROWS || rows_unroll(p.format, rows, p.mm.k, ubo(rows)).is_some() {
        return None;
    }
    let chunk = (1..rows).rev().find(|&n| rows_unroll(p.format, n, p.mm.k, ubo(n)).is_some())?;
    let (ua, sa) = (u64::from(caps.uniform_offset_alignment.max(1)), u64::from(caps.storage_offset_alignment.max(1)));
    let aligned = (0..rows).step_by(chunk).all(|r| {
        let (ao, co) = (a.offset() + (r * p.mm.k * 4) as u64, c.offset() + (r * out.ldc * 4) as u64);
        ao.is_multiple_of(ua) && ao.is_multiple_of(sa) && co.is_multiple_of(sa)
    });
    aligned.then_some(chunk)
}

/// Weight rows per invocation of matvec_rows over a weight of `n` rows.
fn rows_nr(n: usize) -> u32 {
    ROWS_NR
        .into_iter()
        .find(|&nr| u32_of(n).div_ceil(ROWS_WG * nr) >= ROWS_MIN_GROUPS)
        .unwrap_or(ROWS_NR[ROWS_NR.len() - 1])
}

/// Weight rows per workgroup of the matvec `how` picks on an adapter with `caps`, over a weight
/// of `n` rows: what one workgroup writes, and one argmax tile.
fn matvec_tile(caps: &flint_gpu::Caps, n: usize, how: Matvec) -> u32 {
    if how.by_rows(caps) {
        ROWS_WG * rows_nr(n)
    } else if caps.subgroups {
        MATVEC_NR * (MATVEC_WG / caps.subgroup_max_size.max(1)).max(1)
    } else {
        MATVEC_NR
    }
}

/// The activations of matvec_rows go through a uniform binding of `xn` vec4s, when one fits.
fn matvec_rows_key(
    f: BlockFormat,
    rows: u32,
    nr: u32,
    xn: Option<u32>,
    kb: Option<u32>,
    fusion: Fusion,
) -> PipelineKey {
    let key = fusion
        .apply(typed_key("quant.wgsl", "matvec_rows", ROWS_WG, &[]))
        .define("FMT", fmt_code(f))
        .define("MR", rows)
        .define("NR", nr)
        .flag("MATVEC_ROWS", true);
    let key = match kb {
        Some(kb) => key.define("KB", kb),
        None => key,
    };
    match xn {
        Some(xn) => key.flag("XUBO", true).define("XN", xn).define("XROW", xn / rows),
        None => key,
    }
}

fn matmul_key(f: BlockFormat, sg: u32) -> PipelineKey {
    typed_key("quant.wgsl", "matmul_q", MATMUL_WG.max(sg), &[])
        .define("FMT", fmt_code(f))
        .define("SG", sg)
        .define("RB", MATMUL_RB)
        .flag("MATMUL", true)
}

fn tiled_key(f: BlockFormat) -> PipelineKey {
    typed_key("quant.wgsl", "matmul_t", MATMUL_WG, &[])
        .define("FMT", fmt_code(f))
        .define("TM", TILED_TM)
        .define("ST", TILED_ST)
        .flag("MATMUL_TILED", true)
}

fn embed_key(f: BlockFormat, slots: bool) -> PipelineKey {
    typed_key("quant.wgsl", "embed_q", EMBED_WG, &[])
        .define("FMT", fmt_code(f))
        .flag("EMBED", true)
        .flag("SLOTS", slots)
}

/// Every quantized-weight variant.
pub fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for f in BlockFormat::ALL {
        for rows in 1..=MATVEC_MAX_ROWS as u32 {
            for sub in [false, true] {
                out.push(Variant {
                    name: format!("quant/matvec {} rows{rows}{}", f.name(), if sub { " subgroups" } else { "" }),
                    key: matvec_key(f, rows, sub, PLAIN),
                    needs: needs_for(&[], sub),
                });
                if rows == 1 || rows == 4 {
                    for fusion in Fusion::DECODE {
                        out.push(Variant {
                            name: format!(
                                "quant/matvec {} rows{rows}{}{}",
                                f.name(),
                                if sub { " subgroups" } else { "" },
                                fusion.name()
                            ),
                            key: matvec_key(f, rows, sub, fusion),
                            needs: fusion.needs(sub),
                        });
                    }
                }
            }
        }
        for rows in 1..=MATVEC_MAX_ROWS as u32 {
            for nr in ROWS_NR {
                // Row lengths: unrolled ones of 1, 3 and 9 blocks (a tail after whole groups) and
                // SmolLM2's 576 values, and the loop.
                let k576 = if f.block_elems() == 32 { 576 } else { 512 };
                let ks =
                    [None, Some(f.block_elems()), Some(3 * f.block_elems()), Some(9 * f.block_elems()), Some(k576)];
                for k in ks {
                    let xn = k.map(|k| u32_of(rows as usize * k / 4)).or(Some(rows * 576 / 4));
                    for xn in [None, xn] {
                        let kb = k.and_then(|k| rows_unroll(f, rows as usize, k, xn.is_some()));
                        if k.is_some() && kb.is_none() {
                            continue;
                        }
                        out.push(Variant {
                            name: format!(
                                "quant/matvec_rows {} rows{rows} nr{nr}{}{}",
                                f.name(),
                                if xn.is_some() { " ubo" } else { "" },
                                kb.map(|b| format!(" unrolled {b} blocks")).unwrap_or_default()
                            ),
                            key: matvec_rows_key(f, rows, nr, xn, kb, PLAIN),
                            needs: needs_for(&[], false),
                        });
                        if (rows == 1 || rows == 4) && nr == 2 && (kb.is_none() || k == Some(k576)) {
                            for fusion in Fusion::DECODE {
                                out.push(Variant {
                                    name: format!(
                                        "quant/matvec_rows {} rows{rows} nr{nr}{}{}{}",
                                        f.name(),
                                        if xn.is_some() { " ubo" } else { "" },
                                        kb.map(|b| format!(" unrolled {b} blocks")).unwrap_or_default(),
                                        fusion.name()
                                    ),
                                    key: matvec_rows_key(f, rows, nr, xn, kb, fusion),
                                    needs: fusion.needs(false),
                                });
                            }
                        }
                    }
                }
            }
        }
        for sg in [8, 32] {
            out.push(Variant {
                name: format!("quant/matmul {} sg{sg}", f.name()),
                key: matmul_key(f, sg),
                needs: needs_for(&[], true),
            });
        }
        out.push(Variant {
            name: format!("quant/matmul {} tiled", f.name()),
            key: tiled_key(f),
            needs: needs_for(&[], false),
        });
        for slots in [false, true] {
            out.push(Variant {
                name: format!("quant/embed {}{}", f.name(), if slots { " slots" } else { "" }),
                key: embed_key(f, slots),
                needs: needs_for(&[], false),
            });
        }
    }
    out
}

/// Which kernel runs a quantized product. Up to [`MATVEC_MAX_ROWS`] rows of A, a matvec: the
/// adapter's choice is [`Matvec::Rows`] on CPU adapters and [`Matvec::Split`] elsewhere. More
/// rows: the adapter's choice is `matmul_q` where it has subgroups and [`Matvec::Tiled`] where
/// not; [`Matvec::Rows`] and [`Matvec::Split`] run that matvec over chunks of
/// [`MATVEC_MAX_ROWS`] rows instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Matvec {
    /// The adapter's choice.
    #[default]
    Auto,
    /// `matvec_rows`: lanes own whole weight rows.
    Rows,
    /// `matvec_q`: lanes of a subgroup (or workgroup) split each row.
    Split,
    /// `matmul_t`, at any row count: rows of A staged in workgroup memory, no subgroups needed
    /// (no fused norm or epilogue).
    Tiled,
}

impl Matvec {
    /// Whether this choice is `matvec_rows` on an adapter with `caps`.
    fn by_rows(self, caps: &flint_gpu::Caps) -> bool {
        match self {
            Matvec::Auto => caps.device_type == "cpu",
            Matvec::Rows => true,
            Matvec::Split | Matvec::Tiled => false,
        }
    }
}

/// Record `c = a x w^T` for f32 `a` `[m, k]` and `c` `[m, n]`.
pub fn quant_matmul(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
) -> Result<()> {
    quant_matmul_into(dev, rec, p, a, w, c, p.mm.n, 0)
}

/// [`quant_matmul`] with the matvec kernel chosen by the caller (conformance runs both).
pub fn quant_matmul_with(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
    how: Matvec,
) -> Result<()> {
    record_matmul(
        dev,
        rec,
        p,
        a,
        w,
        c,
        Out { ldc: p.mm.n, col: 0, how, fusion: PLAIN, norm: None, rope: None, row0: 0 },
    )
}

/// [`quant_matmul`] writing columns `col .. col + n` of `c`, whose rows are `ldc` wide (several
/// weight matrices filling one output, like Q, K and V side by side).
#[allow(clippy::too_many_arguments)]
pub fn quant_matmul_into(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
    ldc: usize,
    col: usize,
) -> Result<()> {
    record_matmul(
        dev,
        rec,
        p,
        a,
        w,
        c,
        Out { ldc, col, how: Matvec::Auto, fusion: PLAIN, norm: None, rope: None, row0: 0 },
    )
}

fn record_matmul(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
    out: Out<'_>,
) -> Result<()> {
    let (ldc, col) = (out.ldc, out.col);
    p.validate().map_err(param_err)?;
    if p.mm.batch != 1 || p.mm.bias {
        return Err(GpuError::Shape { what: "quant matmul".into(), message: "one batch and no bias".into() });
    }
    w.check_matches("quant matmul", p)?;
    check_tensor("quant matmul", "A", a, p.mm.a_len(), &[DType::F32])?;
    if col + p.mm.n > ldc {
        return Err(GpuError::Shape {
            what: "quant matmul".into(),
            message: format!("columns {col}..{} of rows {ldc} wide", col + p.mm.n),
        });
    }
    check_tensor("quant matmul", "C", c, p.mm.m * ldc, &[DType::F32])?;
    record_parts(dev, rec, p, a, w, c, out, 0, p.mm.m)
}

/// Where a matmul writes: rows `ldc` wide, from column `col`; the matvec kernel; what it folds
/// in (with the norm's weights and eps).
#[derive(Clone, Copy)]
struct Out<'a> {
    ldc: usize,
    col: usize,
    how: Matvec,
    fusion: Fusion,
    norm: Option<(&'a Tensor, f32)>,
    rope: Option<(&'a RopeQkvParams, QkvDest<'a>)>,
    /// Row of the whole step that row 0 of A is (where the RoPE positions and destinations of
    /// a chunk of rows start).
    row0: usize,
}

#[allow(clippy::too_many_arguments)]
fn record_parts(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
    out: Out<'_>,
    r0: usize,
    rows: usize,
) -> Result<()> {
    let caps = dev.caps();
    let sg = fixed_subgroup(caps);
    // Past MATVEC_MAX_ROWS rows the adapter's choice is matmul_q, or matmul_t without subgroups:
    // on Chromium's SwiftShader matmul_t took 65-83 ms for 64x1536x576 Q4_1 against 91-131 ms
    // for the split matvec over chunks of 8 rows that ran before (a 64-token prefill 1.9-2.9x
    // faster), and on lavapipe and GL without subgroups it was about as fast as the matvec_rows
    // chunks (BENCHMARKS.md); on a GPU it reads the weights once per 16 rows of A, not per 8.
    let tiled = out.how == Matvec::Tiled || (rows > MATVEC_MAX_ROWS && out.how == Matvec::Auto && sg.is_none());
    let chunk = if tiled {
        None
    } else if rows > MATVEC_MAX_ROWS {
        // The matvec over up to MATVEC_MAX_ROWS rows at a time, where the caller chose it.
        (out.how != Matvec::Auto).then_some(MATVEC_MAX_ROWS)
    } else {
        rows_chunk(dev, p, a, c, out, rows)
    };
    if let Some(chunk) = chunk {
        // A few rows of A at a time, over views of A and C (matvec_rows with the row length
        // compiled in, see rows_chunk); a row's arithmetic is the same in any chunk, so results
        // stay batch-invariant.
        let align = u64::from(caps.storage_offset_alignment.max(1));
        for r in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - r);
            let av = a.view((r * p.mm.k * 4) as u64, &[n, p.mm.k], DType::F32)?;
            let cv = c.view((r * out.ldc * 4) as u64, &[n, out.ldc], DType::F32)?;
            let sub = Out { row0: out.row0 + r, ..out };
            if av.offset().is_multiple_of(align) && cv.offset().is_multiple_of(align) {
                record_parts(dev, rec, p, &av, w, &cv, sub, r0 + r, n)?;
            } else {
                // The adapter binds storage only at coarser offsets (256 bytes on WebGPU): the
                // chunk's rows go through scratch tensors, C's too since the epilogue may add
                // to it.
                let (sa, sc) = (
                    dev.empty("quant rows of A", &[n, p.mm.k], DType::F32)?,
                    dev.empty("quant rows of C", &[n, out.ldc], DType::F32)?,
                );
                rec.copy(&av, &sa)?;
                rec.copy(&cv, &sc)?;
                record_parts(dev, rec, p, &sa, w, &sc, sub, r0 + r, n)?;
                rec.copy(&sc, &cv)?;
            }
        }
        return Ok(());
    }
    if tiled && out.fusion != PLAIN {
        return Err(GpuError::Shape {
            what: "quant matmul".into(),
            message: format!("the tiled matmul folds nothing in, asked for{}", out.fusion.name()),
        });
    }
    let matvec = rows <= MATVEC_MAX_ROWS && !tiled;
    // On CPU adapters lanes own whole weight rows (see matvec_rows); GPUs split k across lanes.
    let by_rows = matvec && out.how.by_rows(caps);
    let nr = rows_nr(w.n);
    let tile = matvec_tile(caps, w.n, out.how);
    let mut tile0 = 0;
    let x_bytes = (rows * p.mm.k * 4) as u64;
    let xn = (x_bytes <= caps.max_uniform_binding
        && a.offset().is_multiple_of(u64::from(caps.uniform_offset_alignment.max(1))))
    .then(|| u32_of(rows * p.mm.k / 4));
    let key = if by_rows {
        let kb = rows_unroll(p.format, rows, p.mm.k, xn.is_some());
        matvec_rows_key(p.format, u32_of(rows), nr, xn, kb, out.fusion)
    } else if matvec {
        matvec_key(p.format, u32_of(rows), caps.subgroups, out.fusion)
    } else if tiled {
        tiled_key(p.format)
    } else {
        matmul_key(p.format, sg.unwrap_or(8))
    };
    // matvec_rows and matmul_t need nothing; matvec_q uses subgroups where they exist; matmul_q
    // needs them.
    let uses_subgroups = !by_rows && !tiled && (caps.subgroups || !matvec);
    require(dev, out.fusion.needs(uses_subgroups), "quant matmul")?;
    let kernel = dev.kernel(registry(), &key)?;
    for part in &w.parts {
        let n = part.rows;
        let base = w.uniform_eps(part, rows, out.ldc, out.col, 1.0, out.norm.map_or(0.0, |(_, e)| e));
        let groups = if matvec {
            // One workgroup per tile of weight rows.
            dev.grid(u32_of(n).div_ceil(tile))
        } else if tiled {
            [u32_of(n).div_ceil(MATMUL_WG * 4), u32_of(rows).div_ceil(TILED_TM), 1]
        } else {
            let sg = sg.unwrap_or(8);
            [u32_of(n).div_ceil(MATMUL_WG.max(sg) * 4), u32_of(rows).div_ceil(sg * MATMUL_RB), 1]
        };
        let label = format!(
            "qmatmul {} {}x{}x{}{}",
            p.format.name(),
            rows,
            n,
            p.mm.k,
            if r0 > 0 { format!(" @{r0}") } else { String::new() }
        );
        let mut tensors = vec![(1, a), (2, &part.words), (3, c)];
        if let Some((nw, _)) = out.norm {
            tensors.push((4, nw));
        }
        match out.rope {
            None if out.fusion.top => {
                let tiles = n.div_ceil(tile as usize);
                let uniform = TopUniform { base, tile0: u32_of(tile0), tiles: u32_of(tiles), pad: [0; 2] };
                tile0 += tiles;
                rec.dispatch_at(&label, &kernel, &uniform, &tensors, groups)?
            }
            None => rec.dispatch_at(&label, &kernel, &base, &tensors, groups)?,
            Some((rp, kv)) => {
                let uniform = RopeUniform {
                    base,
                    heads: u32_of(rp.heads),
                    kv_heads: u32_of(rp.kv_heads),
                    d: u32_of(rp.head_dim),
                    page_size: u32_of(kv.cache.page_size),
                    max_pages: u32_of(kv.table.max_pages()),
                    log2_theta: rp.theta.log2(),
                    freq_scale: rp.freq_scale,
                    row0: u32_of(out.row0),
                };
                tensors.extend([
                    (5, kv.positions),
                    (6, kv.dest),
                    (7, kv.table.tensor()),
                    (8, &kv.cache.k),
                    (9, &kv.cache.v),
                ]);
                rec.dispatch_at(&label, &kernel, &uniform, &tensors, groups)?;
            }
        }
    }
    Ok(())
}

/// Record a decode step's matvec with what it folds in (`p`: the RMSNorm of A's rows with
/// weights `norm_w` on the way in, and the epilogue) for 1 to [`MATVEC_MAX_ROWS`] rows of A:
/// `c` `[m, p.out_cols()]` takes the products, or adds them (residual), or for a GLU takes
/// `act(gate) * up` of a weight uploaded with [`QuantWeight::upload_glu`].
#[allow(clippy::too_many_arguments)]
pub fn quant_matvec_fused(
    dev: &Device,
    rec: &mut Recorder,
    p: &FusedQuantParams,
    a: &Tensor,
    w: &QuantWeight,
    norm_w: Option<&Tensor>,
    c: &Tensor,
    how: Matvec,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    let q = &p.q;
    let err = |message: String| GpuError::Shape { what: "fused quant matvec".into(), message };
    if q.mm.m > MATVEC_MAX_ROWS || q.mm.batch != 1 || q.mm.bias {
        return Err(err(format!("{} rows (at most {MATVEC_MAX_ROWS}), one batch, no bias", q.mm.m)));
    }
    w.check_matches("fused quant matvec", q)?;
    let glu = matches!(p.epilogue, QuantEpilogue::Glu(_));
    if glu != w.glu_pairs {
        return Err(err("a GLU epilogue goes with a weight uploaded as gate/up pairs, and only with it".into()));
    }
    check_tensor("fused quant matvec", "A", a, q.mm.a_len(), &[DType::F32])?;
    check_tensor("fused quant matvec", "C", c, q.mm.m * p.out_cols(), &[DType::F32])?;
    let norm = norm_in("fused quant matvec", p.norm_eps, norm_w, q.mm.k)?;
    let fusion = Fusion { norm: norm.is_some(), epilogue: p.epilogue, rope_kv: None, top: false };
    // C's rows are p.out_cols() wide; a GLU writes pair j of weight rows to column j.
    let out = Out { ldc: p.out_cols(), col: 0, how, fusion, norm, rope: None, row0: 0 };
    record_parts(dev, rec, q, a, w, c, out, 0, q.mm.m)
}

/// Entries per row of A that [`quant_head_tiles`] writes for `w` with the matvec `how`: one per
/// workgroup of weight rows, summed over the weight's parts.
pub fn head_tiles(dev: &Device, w: &QuantWeight, how: Matvec) -> usize {
    let tile = matvec_tile(dev.caps(), w.n, how) as usize;
    w.parts.iter().map(|p| p.rows.div_ceil(tile)).sum()
}

/// Record the output head of a greedy decode step, 1 to [`MATVEC_MAX_ROWS`] rows of A (with
/// RMSNorm on the way in when `norm_w` is given, eps `norm_eps`), writing not the logits but
/// one entry per workgroup's tile of weight rows: `tiles` f32 `[m, head_tiles(..), 4]` takes
/// (largest logit, its row as f32 (the lowest on a tie), sum of exp(logit - largest), 0), which
/// [`crate::sample::sample_tiles`] merges into the greedy pick and its log-probability. The
/// vocabulary's logits are never written.
#[allow(clippy::too_many_arguments)]
pub fn quant_head_tiles(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    norm_eps: Option<f32>,
    a: &Tensor,
    w: &QuantWeight,
    norm_w: Option<&Tensor>,
    tiles: &Tensor,
    how: Matvec,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    let err = |message: String| GpuError::Shape { what: "quant head tiles".into(), message };
    if p.mm.m > MATVEC_MAX_ROWS || p.mm.batch != 1 || p.mm.bias || how == Matvec::Tiled {
        return Err(err(format!("{} rows (at most {MATVEC_MAX_ROWS}) through a matvec, one batch, no bias", p.mm.m)));
    }
    w.check_matches("quant head tiles", p)?;
    if w.glu_pairs {
        return Err(err("a head over a weight uploaded as gate/up pairs".into()));
    }
    check_tensor("quant head tiles", "A", a, p.mm.a_len(), &[DType::F32])?;
    let count = head_tiles(dev, w, how);
    check_tensor("quant head tiles", "tiles", tiles, p.mm.m * count * 4, &[DType::F32])?;
    let norm = norm_in("quant head tiles", norm_eps, norm_w, p.mm.k)?;
    let fusion = Fusion { norm: norm.is_some(), epilogue: QuantEpilogue::Store, rope_kv: None, top: true };
    let out = Out { ldc: count * 4, col: 0, how, fusion, norm, rope: None, row0: 0 };
    record_parts(dev, rec, p, a, w, tiles, out, 0, p.mm.m)
}

/// The RMSNorm a matvec `op` folds in, checked: its eps and weights (`k` f32) go together.
fn norm_in<'a>(op: &str, eps: Option<f32>, w: Option<&'a Tensor>, k: usize) -> Result<Option<(&'a Tensor, f32)>> {
    match (eps, w) {
        (Some(eps), Some(t)) => {
            check_tensor(op, "norm weights", t, k, &[DType::F32])?;
            Ok(Some((t, eps)))
        }
        (None, None) => Ok(None),
        _ => Err(GpuError::Shape { what: op.into(), message: "norm weights and norm_eps go together".into() }),
    }
}

/// Where [`quant_matvec_qkv_rope`] puts K and V: row `r` of A is the token at position
/// `positions[r]` (u32 `[m]`), its K/V going to `dest[r]` (u32 `[m, 2]`: row of `table`,
/// position in that sequence) of `cache`.
#[derive(Clone, Copy)]
pub struct QkvDest<'a> {
    /// RoPE positions.
    pub positions: &'a Tensor,
    /// Table row and position of each row's K/V.
    pub dest: &'a Tensor,
    /// The cache.
    pub cache: &'a KvCache,
    /// The page table the destinations index.
    pub table: &'a PageTable,
}

/// Whether [`quant_matvec_qkv_rope`] can run `rope` with a `kv`-typed cache on this device:
/// pairs (2i, 2i + 1) (GGUF's Llama), no QK norm, and nine storage bindings per stage.
pub fn qkv_rope_fits(dev: &Device, rope: &RopeQkvParams, kv: DType) -> bool {
    let caps = dev.caps();
    rope.layout == RopeLayout::Interleaved
        && rope.qk_norm_eps.is_none()
        && caps.max_storage_buffers >= 9
        && (kv != DType::F16 || caps.f16)
}

/// Record a decode step's QKV projection with what follows it folded in: the RMSNorm of A's rows
/// on the way in (`norm_eps` with `norm_w`), then RoPE of the Q and K heads, Q into `q_out`
/// `[m, heads * head_dim]` and K and V into the cache at each row's destination: one dispatch
/// for [`quant_matmul`] then [`rope_qkv_planned`](crate::rope::rope_qkv_planned). `w` is the
/// stacked `[q | k | v]` projection, `rope.tokens` rows of A (at most [`MATVEC_MAX_ROWS`]); see
/// [`qkv_rope_fits`] for what it needs.
#[allow(clippy::too_many_arguments)]
pub fn quant_matvec_qkv_rope(
    dev: &Device,
    rec: &mut Recorder,
    rope: &RopeQkvParams,
    norm_eps: Option<f32>,
    a: &Tensor,
    w: &QuantWeight,
    norm_w: Option<&Tensor>,
    kv: QkvDest<'_>,
    q_out: &Tensor,
    how: Matvec,
) -> Result<()> {
    let err = |message: String| GpuError::Shape { what: "quant matvec qkv rope".into(), message };
    let (m, d) = (rope.tokens, rope.head_dim);
    if m == 0 || m > MATVEC_MAX_ROWS || d == 0 || !d.is_multiple_of(2) || rope.heads == 0 || rope.kv_heads == 0 {
        return Err(err(format!("{rope:?}: 1 to {MATVEC_MAX_ROWS} rows, heads of an even size")));
    }
    let kv_dtype = kv.cache.k.dtype();
    if !qkv_rope_fits(dev, rope, kv_dtype) {
        return Err(err(format!(
            "{rope:?} with a {kv_dtype} cache needs interleaved pairs, no QK norm and 9 storage bindings ({} has {})",
            dev.caps().short_label(),
            dev.caps().max_storage_buffers
        )));
    }
    if (w.n, w.glu_pairs) != (rope.row(), false) || w.parts.iter().any(|p| p.row0 % 2 != 0) {
        return Err(err(format!("weight is {}x{}, expected {} rows of q, k and v heads", w.n, w.k, rope.row())));
    }
    let q = QuantMatmulParams { mm: MatmulParams::new(m, w.n, w.k), format: w.format };
    q.validate().map_err(param_err)?;
    check_tensor("quant matvec qkv rope", "A", a, q.mm.a_len(), &[DType::F32])?;
    check_tensor("quant matvec qkv rope", "q out", q_out, m * rope.heads * d, &[DType::F32])?;
    check_tensor("quant matvec qkv rope", "positions", kv.positions, m, &[DType::U32])?;
    check_tensor("quant matvec qkv rope", "destinations", kv.dest, m * 2, &[DType::U32])?;
    let pool = kv.cache.num_pages * kv.cache.page_size * rope.kv_heads * d;
    check_tensor("quant matvec qkv rope", "k pool", &kv.cache.k, pool, FLOATS)?;
    check_tensor("quant matvec qkv rope", "v pool", &kv.cache.v, pool, &[kv_dtype])?;
    let norm = norm_in("quant matvec qkv rope", norm_eps, norm_w, q.mm.k)?;
    let fusion = Fusion { norm: norm.is_some(), epilogue: QuantEpilogue::Store, rope_kv: Some(kv_dtype), top: false };
    let out = Out { ldc: rope.heads * d, col: 0, how, fusion, norm, rope: Some((rope, kv)), row0: 0 };
    record_parts(dev, rec, &q, a, w, q_out, out, 0, m)
}

/// Record `out[t] = dequant(table[ids[t]]) * scale` for a quantized `[vocab, dim]` table. Ids
/// must be below `vocab` (the runtime checks them; the kernel skips others, leaving the row).
pub fn embed_q(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &QuantWeight,
    ids: &Tensor,
    out: &Tensor,
) -> Result<()> {
    check_tensor("embed_q", "ids", ids, p.tokens, &[DType::U32])?;
    record_embed(dev, rec, p, table, ids, None, out)
}

/// [`embed_q`] reading token `t`'s id at `ids[slots[t]]`, where a sampler left it.
pub fn embed_q_slots(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &QuantWeight,
    ids: &Tensor,
    slots: &Tensor,
    out: &Tensor,
) -> Result<()> {
    check_tensor("embed_q", "slots", slots, p.tokens, &[DType::U32])?;
    check_tensor("embed_q", "ids", ids, ids.numel(), &[DType::U32])?;
    record_embed(dev, rec, p, table, ids, Some(slots), out)
}

fn record_embed(
    dev: &Device,
    rec: &mut Recorder,
    p: &EmbedParams,
    table: &QuantWeight,
    ids: &Tensor,
    slots: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    p.validate().map_err(param_err)?;
    if (table.n, table.k) != (p.vocab, p.dim) {
        return Err(GpuError::Shape {
            what: "embed_q".into(),
            message: format!("table is {}x{}, params say {}x{}", table.n, table.k, p.vocab, p.dim),
        });
    }
    check_tensor("embed_q", "out", out, p.tokens * p.dim, &[DType::F32])?;
    let kernel = dev.kernel(registry(), &embed_key(table.format, slots.is_some()))?;
    for part in &table.parts {
        let uniform = table.uniform(part, p.tokens, p.dim, 0, p.scale);
        let work = u32_of(p.tokens * p.dim / 32);
        let mut tensors = vec![(1, ids), (2, &part.words), (3, out)];
        if let Some(s) = slots {
            tensors.push((4, s));
        }
        rec.dispatch_at(
            &format!("embed_q {}", table.format.name()),
            &kernel,
            &uniform,
            &tensors,
            dev.grid(work.div_ceil(EMBED_WG)),
        )?;
    }
    Ok(())
}
