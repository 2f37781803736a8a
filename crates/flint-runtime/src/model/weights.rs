//! Model weights on the GPU: linear layers that stay in their file's block format (or dense f32),
//! norm vectors, embedding tables.

use flint_gpu::{DType, Device, Recorder, Tensor};
use flint_kernels::quant::{self, QuantWeight};
use flint_ref::embed::EmbedParams;
use flint_ref::matmul::MatmulParams;
use flint_ref::quant::QuantMatmulParams;

use crate::gguf::{Gguf, TensorInfo, TensorType};
use crate::{Result, RuntimeError};

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
        let mm = MatmulParams::new(m, self.n(), self.k());
        match self {
            Linear::Quant(q) => quant::quant_matmul(dev, rec, &QuantMatmulParams { mm, format: q.format }, x, q, out)?,
            Linear::Dense { w, .. } => flint_kernels::matmul::matmul(dev, rec, &mm, x, w, None, out)?,
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

/// Upload a 1-D f32 vector of length `len` (norm weights).
pub fn vector(dev: &Device, g: &Gguf, name: &str, len: usize) -> Result<Tensor> {
    let info = g.require_dims(name, &[len])?;
    let values = g.to_f32(info)?;
    Ok(dev.upload_f32(name, &values, &[len], DType::F32)?)
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
