//! Matmul and embedding gather against block-quantized weights (`shaders/quant.wgsl`). The
//! weights are the file's blocks, uploaded as they are; a matrix larger than one storage binding
//! is split into parts of whole rows, each its own buffer.

use flint_gpu::{DType, Device, GpuError, PipelineKey, Recorder, Result, Tensor};
use flint_ref::embed::EmbedParams;
use flint_ref::quant::{BlockFormat, QuantMatmulParams};

use crate::{Variant, check_tensor, fixed_subgroup, needs_for, param_err, registry, require, typed_key, u32_of};

/// Most rows of A the matvec kernel takes; more run through `matmul_q` (or, without subgroups,
/// the matvec kernel on chunks of this many rows).
pub const MATVEC_MAX_ROWS: usize = 8;
const MATVEC_WG: u32 = 64;
/// Output columns per subgroup in matvec_q.
const MATVEC_NR: u32 = 4;
const MATMUL_WG: u32 = 64;
const MATMUL_RB: u32 = 2;
const EMBED_WG: u32 = 64;

/// A quantized `[n, k]` weight matrix on the GPU, in parts of whole rows.
#[derive(Clone, Debug)]
pub struct QuantWeight {
    parts: Vec<(usize, Tensor)>,
    /// Block format.
    pub format: BlockFormat,
    /// Rows (output features).
    pub n: usize,
    /// Row length (input features), a multiple of the block size.
    pub k: usize,
}

impl QuantWeight {
    /// Upload `bytes` (the tensor's blocks, row-major `[n, k]`) as parts that each fit a binding.
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
        if bytes.len() != n * row_bytes {
            return Err(shape_err(format!(
                "{} bytes, expected {} for {n} x {k} {}",
                bytes.len(),
                n * row_bytes,
                format.name()
            )));
        }
        // Rows per part: as many as fit in a binding, a multiple of 4 so parts start on words.
        let limit = max_part_bytes.min(dev.caps().max_storage_binding as usize);
        let rows_per_part = (limit / row_bytes / 4 * 4).max(1).min(n);
        if row_bytes > limit {
            return Err(GpuError::TooLarge {
                what: format!("one row of quantized weight {name}"),
                bytes: row_bytes as u64,
                limit_name: "max_storage_buffer_binding_size",
                limit: limit as u64,
                adapter: dev.caps().short_label(),
            });
        }
        let mut parts = Vec::new();
        for start in (0..n).step_by(rows_per_part) {
            let rows = rows_per_part.min(n - start);
            let mut chunk = bytes[start * row_bytes..(start + rows) * row_bytes].to_vec();
            chunk.resize(chunk.len().div_ceil(4) * 4, 0);
            let words = chunk.len() / 4;
            parts.push((start, dev.upload_bytes(&format!("{name} rows {start}.."), &chunk, &[words], DType::U32)?));
        }
        Ok(QuantWeight { parts, format, n, k })
    }

    /// Number of buffers the matrix spans.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// Bytes of blocks.
    pub fn bytes(&self) -> usize {
        self.format.bytes_for(self.n * self.k)
    }

    fn part_rows(&self, i: usize) -> usize {
        let start = self.parts[i].0;
        self.parts.get(i + 1).map_or(self.n, |p| p.0) - start
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    m: u32,
    n: u32,
    k: u32,
    row_bytes: u32,
    ldc: u32,
    n_off: u32,
    scale: f32,
    pad: u32,
}

fn fmt_code(f: BlockFormat) -> u32 {
    match f {
        BlockFormat::Q8_0 => 0,
        BlockFormat::Q4_0 => 1,
        BlockFormat::Q4_1 => 2,
        BlockFormat::Q5_0 => 3,
        BlockFormat::Q4_K => 4,
        BlockFormat::Q6_K => 5,
    }
}

fn matvec_key(f: BlockFormat, rows: u32, subgroups: bool) -> PipelineKey {
    typed_key("quant.wgsl", "matvec_q", MATVEC_WG, &[])
        .define("FMT", fmt_code(f))
        .define("MR", rows)
        .define("NR", MATVEC_NR)
        .flag("MATVEC", true)
        .flag("SUBGROUPS", subgroups)
}

/// Weight rows per invocation in matvec_rows, most first; fewer when the matrix is short, so
/// that the work still spreads over several workgroups.
const ROWS_NR: [u32; 3] = [8, 4, 2];
const ROWS_WG: u32 = 64;
/// Workgroups matvec_rows aims for on a CPU adapter (a few per core).
const ROWS_MIN_GROUPS: u32 = 8;

/// The activations of matvec_rows go through a uniform binding of `xn` vec4s, when one fits.
fn matvec_rows_key(f: BlockFormat, rows: u32, nr: u32, xn: Option<u32>) -> PipelineKey {
    let key = typed_key("quant.wgsl", "matvec_rows", ROWS_WG, &[])
        .define("FMT", fmt_code(f))
        .define("MR", rows)
        .define("NR", nr)
        .flag("MATVEC_ROWS", true);
    match xn {
        Some(xn) => key.flag("XUBO", true).define("XN", xn),
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

fn embed_key(f: BlockFormat) -> PipelineKey {
    typed_key("quant.wgsl", "embed_q", EMBED_WG, &[]).define("FMT", fmt_code(f)).flag("EMBED", true)
}

/// Every quantized-weight variant.
pub fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for f in BlockFormat::ALL {
        for rows in 1..=MATVEC_MAX_ROWS as u32 {
            for sub in [false, true] {
                out.push(Variant {
                    name: format!("quant/matvec {} rows{rows}{}", f.name(), if sub { " subgroups" } else { "" }),
                    key: matvec_key(f, rows, sub),
                    needs: needs_for(&[], sub),
                });
            }
        }
        for rows in 1..=MATVEC_MAX_ROWS as u32 {
            for nr in ROWS_NR {
                for xn in [None, Some(rows * 576 / 4)] {
                    out.push(Variant {
                        name: format!(
                            "quant/matvec_rows {} rows{rows} nr{nr}{}",
                            f.name(),
                            if xn.is_some() { " ubo" } else { "" }
                        ),
                        key: matvec_rows_key(f, rows, nr, xn),
                        needs: needs_for(&[], false),
                    });
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
            name: format!("quant/embed {}", f.name()),
            key: embed_key(f),
            needs: needs_for(&[], false),
        });
    }
    out
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
    p.validate().map_err(param_err)?;
    if p.mm.batch != 1 || p.mm.bias {
        return Err(GpuError::Shape { what: "quant matmul".into(), message: "one batch and no bias".into() });
    }
    if (w.format, w.n, w.k) != (p.format, p.mm.n, p.mm.k) {
        return Err(GpuError::Shape {
            what: "quant matmul".into(),
            message: format!(
                "weight is {} {}x{}, params say {} {}x{}",
                w.format.name(),
                w.n,
                w.k,
                p.format.name(),
                p.mm.n,
                p.mm.k
            ),
        });
    }
    check_tensor("quant matmul", "A", a, p.mm.a_len(), &[DType::F32])?;
    if col + p.mm.n > ldc {
        return Err(GpuError::Shape {
            what: "quant matmul".into(),
            message: format!("columns {col}..{} of rows {ldc} wide", col + p.mm.n),
        });
    }
    check_tensor("quant matmul", "C", c, p.mm.m * ldc, &[DType::F32])?;
    let m = p.mm.m;
    let sg = fixed_subgroup(dev.caps());
    let out = Out { ldc, col };
    if m > MATVEC_MAX_ROWS && sg.is_some() {
        return record_parts(dev, rec, p, a, w, c, out, 0, m);
    }
    // Matvec, in chunks of up to 8 rows when there are more.
    for r0 in (0..m).step_by(MATVEC_MAX_ROWS) {
        let rows = MATVEC_MAX_ROWS.min(m - r0);
        let sub = |t: &Tensor, width: usize| t.view((r0 * width * 4) as u64, &[rows, width], DType::F32);
        let (ar, cr) = if m <= MATVEC_MAX_ROWS { (a.clone(), c.clone()) } else { (sub(a, p.mm.k)?, sub(c, ldc)?) };
        record_parts(dev, rec, p, &ar, w, &cr, out, r0, rows)?;
    }
    Ok(())
}

/// Where a matmul writes: rows `ldc` wide, from column `col`.
#[derive(Clone, Copy)]
struct Out {
    ldc: usize,
    col: usize,
}

#[allow(clippy::too_many_arguments)]
fn record_parts(
    dev: &Device,
    rec: &mut Recorder,
    p: &QuantMatmulParams,
    a: &Tensor,
    w: &QuantWeight,
    c: &Tensor,
    out: Out,
    r0: usize,
    rows: usize,
) -> Result<()> {
    let caps = dev.caps();
    let sg = fixed_subgroup(caps);
    let matvec = rows <= MATVEC_MAX_ROWS;
    // On CPU adapters lanes own whole weight rows (see matvec_rows); GPUs split k across lanes.
    let by_rows = matvec && caps.device_type == "cpu";
    let nr = ROWS_NR
        .into_iter()
        .find(|&nr| u32_of(w.n).div_ceil(ROWS_WG * nr) >= ROWS_MIN_GROUPS)
        .unwrap_or(ROWS_NR[ROWS_NR.len() - 1]);
    let x_bytes = (rows * p.mm.k * 4) as u64;
    let xn = (x_bytes <= caps.max_uniform_binding
        && a.offset().is_multiple_of(u64::from(caps.uniform_offset_alignment.max(1))))
    .then(|| u32_of(rows * p.mm.k / 4));
    let key = if by_rows {
        matvec_rows_key(p.format, u32_of(rows), nr, xn)
    } else if matvec {
        matvec_key(p.format, u32_of(rows), caps.subgroups)
    } else {
        matmul_key(p.format, sg.unwrap_or(8))
    };
    // matvec_rows needs nothing; matvec_q uses subgroups where they exist; matmul_q needs them.
    let uses_subgroups = !by_rows && (caps.subgroups || !matvec);
    require(dev, needs_for(&[], uses_subgroups), "quant matmul")?;
    let kernel = dev.kernel(registry(), &key)?;
    let row_bytes = p.format.bytes_for(p.mm.k);
    for (i, (start, part)) in w.parts.iter().enumerate() {
        let n = w.part_rows(i);
        let uniform = Uniform {
            m: u32_of(rows),
            n: u32_of(n),
            k: u32_of(p.mm.k),
            row_bytes: u32_of(row_bytes),
            ldc: u32_of(out.ldc),
            n_off: u32_of(out.col + *start),
            scale: 1.0,
            pad: 0,
        };
        let groups = if by_rows {
            dev.grid(u32_of(n).div_ceil(ROWS_WG * nr))
        } else if matvec {
            let per_group =
                if caps.subgroups { MATVEC_NR * (MATVEC_WG / caps.subgroup_max_size.max(1)).max(1) } else { MATVEC_NR };
            dev.grid(u32_of(n).div_ceil(per_group))
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
        rec.dispatch(&label, &kernel, &uniform, &[a, part, c], groups)?;
    }
    Ok(())
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
    p.validate().map_err(param_err)?;
    if (table.n, table.k) != (p.vocab, p.dim) {
        return Err(GpuError::Shape {
            what: "embed_q".into(),
            message: format!("table is {}x{}, params say {}x{}", table.n, table.k, p.vocab, p.dim),
        });
    }
    check_tensor("embed_q", "ids", ids, p.tokens, &[DType::U32])?;
    check_tensor("embed_q", "out", out, p.tokens * p.dim, &[DType::F32])?;
    let kernel = dev.kernel(registry(), &embed_key(table.format))?;
    let row_bytes = table.format.bytes_for(p.dim);
    for (i, (start, part)) in table.parts.iter().enumerate() {
        let uniform = Uniform {
            m: u32_of(p.tokens),
            n: u32_of(table.part_rows(i)),
            k: u32_of(p.dim),
            row_bytes: u32_of(row_bytes),
            ldc: u32_of(p.dim),
            n_off: u32_of(*start),
            scale: p.scale,
            pad: 0,
        };
        let work = u32_of(p.tokens * p.dim / 32);
        rec.dispatch(
            &format!("embed_q {}", table.format.name()),
            &kernel,
            &uniform,
            &[ids, part, out],
            dev.grid(work.div_ceil(EMBED_WG)),
        )?;
    }
    Ok(())
}
