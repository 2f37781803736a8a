//! Row normalisations: RMSNorm (optionally with Gemma's `(1 + w)` weight) and LayerNorm with
//! weight and bias. Each of `rows` rows of length `dim` is normalised independently.

use crate::{ParamError, check_len};

/// Which normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `x / sqrt(mean(x^2) + eps) * w`.
    Rms,
    /// `x / sqrt(mean(x^2) + eps) * (1 + w)`, as Gemma stores its weights.
    RmsUnitOffset,
    /// `(x - mean) / sqrt(var + eps) * w + b`, biased (population) variance.
    Layer,
}

impl NormKind {
    /// Lowercase name, as in case names.
    pub fn name(self) -> &'static str {
        match self {
            NormKind::Rms => "rmsnorm",
            NormKind::RmsUnitOffset => "rmsnorm_gemma",
            NormKind::Layer => "layernorm",
        }
    }
}

/// Shape of a normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormParams {
    /// Which normalisation.
    pub kind: NormKind,
    /// Number of rows.
    pub rows: usize,
    /// Row length.
    pub dim: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl NormParams {
    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.rows == 0 || self.dim == 0 || self.rows * self.dim > u32::MAX as usize {
            return Err(ParamError::new("norm", format!("bad shape rows={} dim={}", self.rows, self.dim)));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(ParamError::new("norm", format!("eps {} must be finite and non-negative", self.eps)));
        }
        Ok(())
    }

    /// Floating point operations.
    pub fn flops(&self) -> f64 {
        let per = if self.kind == NormKind::Layer { 7.0 } else { 4.0 };
        per * (self.rows * self.dim) as f64
    }

    /// Bytes read and written for element size `t` (weights counted once).
    pub fn bytes(&self, t: usize) -> f64 {
        let params = (if self.kind == NormKind::Layer { 2 } else { 1 }) * self.dim;
        ((2 * self.rows * self.dim + params) * t) as f64
    }
}

/// Reference normalisation. `bias` is required for LayerNorm and refused otherwise.
pub fn norm(p: &NormParams, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("norm", "x", x, p.rows * p.dim)?;
    check_len("norm", "weight", weight, p.dim)?;
    match (p.kind, bias) {
        (NormKind::Layer, Some(b)) => check_len("norm", "bias", b, p.dim)?,
        (NormKind::Layer, None) => return Err(ParamError::new("norm", "layernorm needs a bias")),
        (_, Some(_)) => return Err(ParamError::new("norm", "rmsnorm takes no bias")),
        (_, None) => {}
    }
    let d = p.dim as f64;
    let eps = f64::from(p.eps);
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(p.dim) {
        match p.kind {
            NormKind::Rms | NormKind::RmsUnitOffset => {
                let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d;
                let inv = 1.0 / (ms + eps).sqrt();
                let offset = if p.kind == NormKind::RmsUnitOffset { 1.0 } else { 0.0 };
                out.extend(
                    row.iter().zip(weight).map(|(&v, &w)| (f64::from(v) * inv * (offset + f64::from(w))) as f32),
                );
            }
            NormKind::Layer => {
                let bias = bias.unwrap_or(&[]);
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d;
                let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / d;
                let inv = 1.0 / (var + eps).sqrt();
                out.extend(
                    row.iter()
                        .zip(weight.iter().zip(bias))
                        .map(|(&v, (&w, &b))| ((f64::from(v) - mean) * inv * f64::from(w) + f64::from(b)) as f32),
                );
            }
        }
    }
    Ok(out)
}

/// Shape of the fused residual step between decoder blocks: `x += y` (or `x += rmsnorm(y,
/// post)` with a post-norm), then `out = rmsnorm(x, w)`; `x` is updated in place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddNormParams {
    /// Rows.
    pub rows: usize,
    /// Row length.
    pub dim: usize,
    /// RMSNorm epsilon (of both norms).
    pub eps: f32,
    /// Whether `y` is normalised by a post-norm weight before the add (Gemma 3).
    pub post_norm: bool,
    /// Whether there is a `y` at all (false: only `out = rmsnorm(x, w)`).
    pub add: bool,
}

impl AddNormParams {
    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        NormParams { kind: NormKind::Rms, rows: self.rows, dim: self.dim, eps: self.eps }.validate()?;
        if self.post_norm && !self.add {
            return Err(ParamError::new("add_norm", "a post-norm needs a y to add"));
        }
        Ok(())
    }
}

/// Reference of the fused residual step: returns `(new x, out)`.
pub fn add_norm(
    p: &AddNormParams,
    x: &[f32],
    y: Option<&[f32]>,
    post: Option<&[f32]>,
    w: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), ParamError> {
    p.validate()?;
    let n = p.rows * p.dim;
    check_len("add_norm", "x", x, n)?;
    let rms = NormParams { kind: NormKind::Rms, rows: p.rows, dim: p.dim, eps: p.eps };
    let mut x2 = x.to_vec();
    if p.add {
        let y = y.ok_or_else(|| ParamError::new("add_norm", "params ask for a y"))?;
        check_len("add_norm", "y", y, n)?;
        let y = if p.post_norm {
            norm(&rms, y, post.ok_or_else(|| ParamError::new("add_norm", "params ask for a post-norm weight"))?, None)?
        } else {
            y.to_vec()
        };
        // The GPU rounds the sum to f32 before normalising it; so does this.
        for (a, b) in x2.iter_mut().zip(&y) {
            *a = (f64::from(*a) + f64::from(*b)) as f32;
        }
    }
    let out = norm(&rms, &x2, w, None)?;
    Ok((x2, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_and_layer() {
        let p = NormParams { kind: NormKind::Rms, rows: 1, dim: 2, eps: 0.0 };
        let y = norm(&p, &[3.0, 4.0], &[1.0, 2.0], None).unwrap();
        let r = (12.5f64).sqrt();
        assert_eq!(y, vec![(3.0 / r) as f32, (8.0 / r) as f32]);
        let p = NormParams { kind: NormKind::RmsUnitOffset, ..p };
        let y = norm(&p, &[3.0, 4.0], &[0.0, 1.0], None).unwrap();
        assert_eq!(y, vec![(3.0 / r) as f32, (8.0 / r) as f32]);
        let p = NormParams { kind: NormKind::Layer, rows: 1, dim: 2, eps: 0.0 };
        let y = norm(&p, &[1.0, 3.0], &[1.0, 1.0], Some(&[0.5, 0.5])).unwrap();
        assert_eq!(y, vec![-0.5, 1.5]);
        assert!(norm(&p, &[1.0, 3.0], &[1.0, 1.0], None).is_err());
    }
}
