//! Softmax over the last dimension: `y = exp(s x - max(s x)) / sum(...)` per row, with the
//! maximum subtracted so that large logits do not overflow.

use crate::{ParamError, check_len};

/// Shape of a row softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftmaxParams {
    /// Number of rows.
    pub rows: usize,
    /// Row length.
    pub dim: usize,
    /// Factor applied to the inputs first (an inverse temperature).
    pub scale: f32,
}

impl SoftmaxParams {
    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.rows == 0 || self.dim == 0 || self.rows * self.dim > u32::MAX as usize {
            return Err(ParamError::new("softmax", format!("bad shape rows={} dim={}", self.rows, self.dim)));
        }
        if !self.scale.is_finite() {
            return Err(ParamError::new("softmax", "scale must be finite"));
        }
        Ok(())
    }

    /// Floating point operations.
    pub fn flops(&self) -> f64 {
        5.0 * (self.rows * self.dim) as f64
    }

    /// Bytes read and written for element size `t`.
    pub fn bytes(&self, t: usize) -> f64 {
        (2 * self.rows * self.dim * t) as f64
    }
}

/// Reference row softmax. A row of all `-inf` gives NaN, as in PyTorch.
pub fn softmax(p: &SoftmaxParams, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("softmax", "x", x, p.rows * p.dim)?;
    let s = f64::from(p.scale);
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(p.dim) {
        let max = row.iter().map(|&v| s * f64::from(v)).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&v| (s * f64::from(v) - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / sum) as f32));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_logits_do_not_overflow() {
        let p = SoftmaxParams { rows: 1, dim: 2, scale: 1.0 };
        let y = softmax(&p, &[1000.0, 1000.0]).unwrap();
        assert_eq!(y, vec![0.5, 0.5]);
        let p = SoftmaxParams { rows: 2, dim: 3, scale: 2.0 };
        let y = softmax(&p, &[0.0, 0.0, 0.0, 0.0, 0.5, 0.0]).unwrap();
        assert!((y[0] - 1.0 / 3.0).abs() < 1e-7);
        let e = std::f64::consts::E;
        assert!((f64::from(y[4]) - e / (e + 2.0)).abs() < 1e-7);
    }
}
