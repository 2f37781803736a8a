//! Embedding gather: row `ids[t]` of a `[vocab, dim]` table, times `scale` (Gemma multiplies its
//! embeddings by `sqrt(dim)`).

use crate::{ParamError, check_len};

/// Shape of an embedding lookup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmbedParams {
    /// Number of token ids.
    pub tokens: usize,
    /// Rows of the table.
    pub vocab: usize,
    /// Row length.
    pub dim: usize,
    /// Factor applied to the gathered rows.
    pub scale: f32,
}

impl EmbedParams {
    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.tokens == 0 || self.vocab == 0 || self.dim == 0 {
            return Err(ParamError::new("embed", format!("empty shape {self:?}")));
        }
        if self.vocab * self.dim > u32::MAX as usize || self.tokens * self.dim > u32::MAX as usize {
            return Err(ParamError::new("embed", "too many elements"));
        }
        Ok(())
    }

    /// Bytes read and written for element size `t`.
    pub fn bytes(&self, t: usize) -> f64 {
        (2 * self.tokens * self.dim * t + 4 * self.tokens) as f64
    }

    /// Floating point operations (the scale).
    pub fn flops(&self) -> f64 {
        (self.tokens * self.dim) as f64
    }
}

/// Reference gather; an id outside the vocabulary is an error.
pub fn embed(p: &EmbedParams, table: &[f32], ids: &[u32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("embed", "table", table, p.vocab * p.dim)?;
    if ids.len() != p.tokens {
        return Err(ParamError::new("embed", format!("{} ids for {} tokens", ids.len(), p.tokens)));
    }
    let mut out = Vec::with_capacity(p.tokens * p.dim);
    for &id in ids {
        let id = id as usize;
        if id >= p.vocab {
            return Err(ParamError::new("embed", format!("token id {id} is outside the vocabulary of {}", p.vocab)));
        }
        out.extend(table[id * p.dim..][..p.dim].iter().map(|&v| (f64::from(v) * f64::from(p.scale)) as f32));
    }
    Ok(out)
}
