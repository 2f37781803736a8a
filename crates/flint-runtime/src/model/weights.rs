//! Model weights on the GPU: linear layers that stay in their file's block format (or dense f32),
//! norm vectors, embedding tables.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::quant::{self, QuantWeight};
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::quant::QuantMatmulParams;

use crate::gguf::{Gguf, TensorInfo, TensorType};
use crate::hf::HfDir;
use crate::{Result, RuntimeError};

/// Where a decoder's weights come from, addressed by their GGUF names (`blk.3.attn_q.weight`):
/// a GGUF file, or a Hugging Face directory through its family's name map.
pub trait WeightSource {
    /// Whether the source holds `name`.
    fn has(&self, name: &str) -> bool;
    /// `name` as a `[n, k]` matrix.
    fn linear(&self, dev: &Device, name: &str, n: usize, k: usize) -> Result<Linear>;
    /// Matrices `[n_i, k]` sharing their input, stacked by rows.
    fn stacked(&self, dev: &Device, names: &[(&str, usize)], k: usize) -> Result<Stacked>;
    /// The values of a 1-D tensor of `len` (norm weights, biases) on the host.
    fn values(&self, name: &str, len: usize) -> Result<Vec<f32>>;
    /// A 1-D f32 vector of `len` (norm weights, biases) on the GPU.
    fn vector(&self, dev: &Device, name: &str, len: usize) -> Result<Tensor> {
        Ok(dev.upload_f32(name, &self.values(name, len)?, &[len], DType::F32)?)
    }
    /// A gate and an up projection (`[n, k]` each) as one quantized matrix with their rows
    /// interleaved (for a GLU epilogue), when both are quantized in one format; else None.
    fn glu_pairs(&self, dev: &Device, gate: &str, up: &str, n: usize, k: usize) -> Result<Option<QuantWeight>>;
}

impl WeightSource for Gguf {
    fn has(&self, name: &str) -> bool {
        self.tensor(name).is_some()
    }
    fn linear(&self, dev: &Device, name: &str, n: usize, k: usize) -> Result<Linear> {
        linear(dev, self, name, n, k)
    }
    fn stacked(&self, dev: &Device, names: &[(&str, usize)], k: usize) -> Result<Stacked> {
        Stacked::load(dev, self, names, k)
    }
    fn values(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let info = self.require_dims(name, &[len])?;
        Ok(self.to_f32(info)?)
    }
    fn glu_pairs(&self, dev: &Device, gate: &str, up: &str, n: usize, k: usize) -> Result<Option<QuantWeight>> {
        let (g, u) = (self.require(gate)?, self.require(up)?);
        for t in [g, u] {
            if t.dims != [k, n] {
                return Err(self
                    .error(format!("tensor {:?} has dims {:?}, expected [{k}, {n}]", t.name, t.dims))
                    .into());
            }
        }
        match (g.ty, u.ty) {
            (TensorType::Quant(f), TensorType::Quant(fu)) if f == fu => {
                let bytes = [self.data(g), self.data(u)].concat();
                Ok(Some(QuantWeight::upload_glu(dev, &format!("{gate}+{up}"), &bytes, f, 2 * n, k)?))
            }
            _ => Ok(None),
        }
    }
}

/// A decoder's weights in a Hugging Face directory, under `prefix` (`model.` for
/// LlamaForCausalLM, `model.text_model.` for Idefics3), named by the family's table.
pub(crate) struct HfWeights<'a> {
    /// The directory.
    pub dir: &'a HfDir,
    /// Prefix of the decoder's tensors.
    pub prefix: &'a str,
    /// The family's name table: the transformers name of a GGUF tensor name under a prefix
    /// (see [`super::arch::llama::hf_name`]).
    pub names: fn(prefix: &str, gguf: &str) -> String,
    /// Added to every norm weight as it loads (not to biases): 1 for Gemma, whose RMSNorm scales by `1 + w`
    /// (GGUF files store `1 + w` already), else 0.
    pub norm_shift: f32,
}

impl HfWeights<'_> {
    /// The transformers name of a GGUF tensor name.
    pub fn name(&self, gguf: &str) -> String {
        (self.names)(self.prefix, gguf)
    }
}

impl WeightSource for HfWeights<'_> {
    fn has(&self, name: &str) -> bool {
        self.dir.has(&self.name(name))
    }
    fn linear(&self, dev: &Device, name: &str, n: usize, k: usize) -> Result<Linear> {
        let hf = self.name(name);
        let w = dev.upload_f32(&hf, &self.dir.f32(&hf, &[n, k])?, &[n, k], DType::F32)?;
        Ok(Linear::Dense { w, n, k })
    }
    fn stacked(&self, dev: &Device, names: &[(&str, usize)], k: usize) -> Result<Stacked> {
        let mut values = Vec::new();
        let mut label = Vec::new();
        for &(name, n) in names {
            let hf = self.name(name);
            values.extend(self.dir.f32(&hf, &[n, k])?);
            label.push(hf);
        }
        let n: usize = names.iter().map(|(_, n)| n).sum();
        let w = dev.upload_f32(&label.join("+"), &values, &[n, k], DType::F32)?;
        Ok(Stacked { runs: vec![(Linear::Dense { w, n, k }, 0)], n })
    }
    fn values(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut v = self.dir.f32(&self.name(name), &[len])?;
        // The shift is the norms' (every GGUF norm name holds "norm"), not the biases'.
        if self.norm_shift != 0.0 && name.contains("norm") {
            v.iter_mut().for_each(|x| *x += self.norm_shift);
        }
        Ok(v)
    }
    fn glu_pairs(&self, _: &Device, _: &str, _: &str, _: usize, _: usize) -> Result<Option<QuantWeight>> {
        Ok(None)
    }
}

/// A `[n, k]` weight matrix.
#[derive(Clone, Debug)]
pub enum Linear {
    /// Blocks, as stored in the file.
    Quant(QuantWeight),
    /// Dense f32 `[n, k]`.
    Dense {
        /// The matrix.
        w: Tensor,
        /// Rows.
        n: usize,
        /// Row length.
        k: usize,
    },
}

impl Linear {
    /// Upload tensor `info` of `g` as a `[n, k]` matrix (ggml dims `[k, n]`).
    pub fn from_gguf(dev: &Device, g: &Gguf, info: &TensorInfo, n: usize, k: usize) -> Result<Linear> {
        if info.dims != [k, n] {
            return Err(g
                .error(format!("tensor {:?} has dims {:?}, expected [{k}, {n}]", info.name, info.dims))
                .into());
        }
        Ok(match info.ty {
            TensorType::Quant(f) => Linear::Quant(QuantWeight::upload(dev, &info.name, g.data(info), f, n, k)?),
            _ => Linear::Dense { w: dev.upload_f32(&info.name, &g.to_f32(info)?, &[n, k], DType::F32)?, n, k },
        })
    }

    /// Rows (output features).
    pub fn n(&self) -> usize {
        match self {
            Linear::Quant(q) => q.n,
            Linear::Dense { n, .. } => *n,
        }
    }

    /// Row length (input features).
    pub fn k(&self) -> usize {
        match self {
            Linear::Quant(q) => q.k,
            Linear::Dense { k, .. } => *k,
        }
    }

    /// Bytes of weights one matmul reads.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Quant(q) => q.bytes(),
            Linear::Dense { n, k, .. } => 4 * n * k,
        }
    }

    /// Record `out[m, n] = x[m, k] W^T`.
    pub fn forward(&self, dev: &Device, rec: &mut Recorder, x: &Tensor, m: usize, out: &Tensor) -> Result<()> {
        self.forward_into(dev, rec, x, m, out, self.n(), 0)
    }

    /// Record `x[m, k] W^T` into columns `col .. col + n` of `out`, whose rows are `ldc` wide.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into(
        &self,
        dev: &Device,
        rec: &mut Recorder,
        x: &Tensor,
        m: usize,
        out: &Tensor,
        ldc: usize,
        col: usize,
    ) -> Result<()> {
        let mm = MatmulParams::new(m, self.n(), self.k());
        match self {
            Linear::Quant(q) => {
                quant::quant_matmul_into(dev, rec, &QuantMatmulParams { mm, format: q.format }, x, q, out, ldc, col)?
            }
            Linear::Dense { w, .. } if col == 0 && ldc == self.n() => {
                flint_kernels::matmul::matmul(dev, rec, &mm, x, w, None, out)?
            }
            Linear::Dense { .. } => {
                // Stacked::load never makes such a run; this names the layer if a caller does.
                return Err(RuntimeError::Model(format!(
                    "a dense [{}, {}] layer cannot write columns {col}..{} of a {ldc}-wide output: dense \
                     layers are stacked into one matrix at load",
                    self.n(),
                    self.k(),
                    col + self.n()
                )));
            }
        }
        Ok(())
    }
}

/// A token embedding table `[vocab, dim]`.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table, as a matrix (it doubles as a tied output head).
    pub table: Linear,
}

impl Embedding {
    /// Record `out[t] = table[ids[t]] * scale` for `tokens` ids.
    pub fn forward(
        &self,
        dev: &Device,
        rec: &mut Recorder,
        ids: &Tensor,
        tokens: usize,
        scale: f32,
        out: &Tensor,
    ) -> Result<()> {
        let p = EmbedParams { tokens, vocab: self.table.n(), dim: self.table.k(), scale };
        match &self.table {
            Linear::Quant(q) => quant::embed_q(dev, rec, &p, q, ids, out)?,
            Linear::Dense { w, .. } => flint_kernels::embed::embed(dev, rec, &p, w, ids, out)?,
        }
        Ok(())
    }
}

impl Embedding {
    /// [`Embedding::forward`] for ids at `ids[slots[t]]` (where a sampler left them).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_slots(
        &self,
        dev: &Device,
        rec: &mut Recorder,
        ids: &Tensor,
        slots: &Tensor,
        tokens: usize,
        scale: f32,
        out: &Tensor,
    ) -> Result<()> {
        let p = EmbedParams { tokens, vocab: self.table.n(), dim: self.table.k(), scale };
        match &self.table {
            Linear::Quant(q) => quant::embed_q_slots(dev, rec, &p, q, ids, slots, out)?,
            Linear::Dense { w, .. } => flint_kernels::embed::embed_slots(dev, rec, &p, w, ids, slots, out)?,
        }
        Ok(())
    }
}

/// Matrices that share their input, stacked: rows of several `[n_i, k]` tensors, uploaded as
/// one matrix per run of equal storage type, each filling its own columns of the shared output.
#[derive(Clone, Debug)]
pub struct Stacked {
    /// `(matrix, first output column)` per run.
    pub runs: Vec<(Linear, usize)>,
    /// Total output columns.
    pub n: usize,
}

impl Stacked {
    /// Load `names` (each `[n_i, k]`) of `g`.
    pub fn load(dev: &Device, g: &Gguf, names: &[(&str, usize)], k: usize) -> Result<Stacked> {
        let mut infos = Vec::new();
        for &(name, n) in names {
            let info = g.require(name)?;
            if info.dims != [k, n] {
                return Err(g.error(format!("tensor {name:?} has dims {:?}, expected [{k}, {n}]", info.dims)).into());
            }
            infos.push((info, n));
        }
        // Runs of one quantized format each, or of dense (f32/f16/bf16) matrices. Quantized
        // matmuls write into any columns, the dense one only whole rows: so when a dense matrix
        // sits beside quantized ones (an f32 attn_q with Q4_1 attn_k, say), the whole stack is
        // loaded dense, dequantized once here.
        let format = |ty: TensorType| match ty {
            TensorType::Quant(f) => Some(f),
            _ => None,
        };
        let all_dense = infos.iter().any(|(t, _)| format(t.ty).is_none());
        // Each matrix's run: its quantized format, or None (dense) for all when any is dense.
        let run_of = |ty: TensorType| if all_dense { None } else { format(ty) };
        let mut runs = Vec::new();
        let mut col = 0;
        let mut i = 0;
        while i < infos.len() {
            let ty = run_of(infos[i].0.ty);
            let mut j = i;
            while j < infos.len() && run_of(infos[j].0.ty) == ty {
                j += 1;
            }
            let rows: usize = infos[i..j].iter().map(|(_, n)| n).sum();
            let name = infos[i..j].iter().map(|(t, _)| t.name.as_str()).collect::<Vec<_>>().join("+");
            let linear = match ty {
                Some(f) => {
                    let bytes: Vec<u8> = infos[i..j].iter().flat_map(|(t, _)| g.data(t).iter().copied()).collect();
                    Linear::Quant(QuantWeight::upload(dev, &name, &bytes, f, rows, k)?)
                }
                None => {
                    let mut values = Vec::with_capacity(rows * k);
                    for (t, _) in &infos[i..j] {
                        values.extend(g.to_f32(t)?);
                    }
                    Linear::Dense { w: dev.upload_f32(&name, &values, &[rows, k], DType::F32)?, n: rows, k }
                }
            };
            runs.push((linear, col));
            col += rows;
            i = j;
        }
        Ok(Stacked { runs, n: col })
    }

    /// Record `x[m, k]` through every run into `out` `[m, n]`.
    pub fn forward(&self, dev: &Device, rec: &mut Recorder, x: &Tensor, m: usize, out: &Tensor) -> Result<()> {
        for (w, col) in &self.runs {
            w.forward_into(dev, rec, x, m, out, self.n, *col)?;
        }
        Ok(())
    }

    /// Bytes of weights one pass reads.
    pub fn bytes(&self) -> usize {
        self.runs.iter().map(|(w, _)| w.bytes()).sum()
    }
}

/// The tensor `name` of `g` as a `[n, k]` linear layer.
pub fn linear(dev: &Device, g: &Gguf, name: &str, n: usize, k: usize) -> Result<Linear> {
    let info = g.require(name)?;
    Linear::from_gguf(dev, g, info, n, k)
}

impl From<String> for RuntimeError {
    fn from(s: String) -> Self {
        RuntimeError::Model(s)
    }
}
