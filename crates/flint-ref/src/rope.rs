//! Rotary position embedding over `[tokens, heads, head_dim]` with one position per token.
//! Pair `i` of `rot_dim / 2` rotates by `pos * freq_scale * theta^(-2i / rot_dim)`; dimensions
//! past `rot_dim` pass through unchanged.

use crate::{ParamError, check_len};

/// Which elements form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Pairs `(i, i + rot_dim/2)`: Hugging Face Llama's `rotate_half`.
    RotateHalf,
    /// Pairs `(2i, 2i + 1)`: llama.cpp's default (GGUF) layout.
    Interleaved,
}

impl RopeLayout {
    /// Lowercase name, as in case names.
    pub fn name(self) -> &'static str {
        match self {
            RopeLayout::RotateHalf => "half",
            RopeLayout::Interleaved => "interleaved",
        }
    }
}

/// Shape and constants of a RoPE application.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Tokens (rows of the position buffer).
    pub tokens: usize,
    /// Heads per token.
    pub heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Rotated elements per head (even, at most `head_dim`).
    pub rot_dim: usize,
    /// Base of the frequencies.
    pub theta: f32,
    /// Positions are multiplied by this (1 / the linear scaling factor).
    pub freq_scale: f32,
    /// Which elements pair up.
    pub layout: RopeLayout,
}

impl RopeParams {
    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.tokens == 0 || self.heads == 0 || self.head_dim == 0 {
            return Err(ParamError::new("rope", format!("empty shape {self:?}")));
        }
        if self.rot_dim == 0 || !self.rot_dim.is_multiple_of(2) || self.rot_dim > self.head_dim {
            return Err(ParamError::new(
                "rope",
                format!("rot_dim {} must be even and in 2..={}", self.rot_dim, self.head_dim),
            ));
        }
        if !(self.theta > 1.0 && self.theta.is_finite() && self.freq_scale.is_finite()) {
            return Err(ParamError::new("rope", format!("theta {} must be > 1 and finite", self.theta)));
        }
        if self.numel() > u32::MAX as usize {
            return Err(ParamError::new("rope", "too many elements"));
        }
        Ok(())
    }

    /// Elements of the input and output.
    pub fn numel(&self) -> usize {
        self.tokens * self.heads * self.head_dim
    }

    /// Floating point operations (two sin/cos counted as one each).
    pub fn flops(&self) -> f64 {
        (self.tokens * self.heads * self.rot_dim / 2) as f64 * 8.0
    }

    /// Bytes read and written for element size `t`.
    pub fn bytes(&self, t: usize) -> f64 {
        (2 * self.numel() * t + 4 * self.tokens) as f64
    }
}

/// Reference RoPE.
pub fn rope(p: &RopeParams, x: &[f32], positions: &[u32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("rope", "x", x, p.numel())?;
    if positions.len() != p.tokens {
        return Err(ParamError::new("rope", format!("{} positions for {} tokens", positions.len(), p.tokens)));
    }
    Ok(rotate(p, p.heads * p.head_dim, x, |t, i| {
        let freq = f64::from(p.theta).powf(-2.0 * i as f64 / p.rot_dim as f64);
        f64::from(positions[t]) * f64::from(p.freq_scale) * freq
    }))
}

/// Reference RoPE with each token's angles given: pair `j` of token `t` rotates by
/// `angles[t * rot_dim / 2 + j]` (`theta` and `freq_scale` are not used).
pub fn rope_angles(p: &RopeParams, x: &[f32], angles: &[f32]) -> Result<Vec<f32>, ParamError> {
    rope_angles_rows(p, p.heads * p.head_dim, x, angles)
}

/// [`rope_angles`] over heads that lead rows of `row` elements (`x` `[tokens, row]`); the
/// elements past the heads pass through.
pub fn rope_angles_rows(p: &RopeParams, row: usize, x: &[f32], angles: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    if row < p.heads * p.head_dim {
        return Err(ParamError::new("rope", format!("rows of {row} cannot hold {} heads of {}", p.heads, p.head_dim)));
    }
    check_len("rope", "x", x, p.tokens * row)?;
    let half = p.rot_dim / 2;
    check_len("rope", "angles", angles, p.tokens * half)?;
    Ok(rotate(p, row, x, |t, i| f64::from(angles[t * half + i])))
}

/// Rotate pair `i` of every head of token `t` (heads leading rows of `row` elements) by
/// `angle(t, i)`, in f64; the rest of `x` passes through.
fn rotate(p: &RopeParams, row: usize, x: &[f32], angle: impl Fn(usize, usize) -> f64) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = p.rot_dim / 2;
    for t in 0..p.tokens {
        for h in 0..p.heads {
            let base = t * row + h * p.head_dim;
            for i in 0..half {
                let (sin, cos) = angle(t, i).sin_cos();
                let (i0, i1) = match p.layout {
                    RopeLayout::RotateHalf => (i, i + half),
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (f64::from(x[base + i0]), f64::from(x[base + i1]));
                out[base + i0] = (x0 * cos - x1 * sin) as f32;
                out[base + i1] = (x1 * cos + x0 * sin) as f32;
            }
        }
    }
    out
}

/// Shape of the step between the QKV projection and attention: rows of `tokens` are
/// `[q heads | k heads | v heads]`, each `head_dim` wide; Q and K get an optional per-head RMSNorm
/// (`qk_norm_eps`), then RoPE over the whole head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeQkvParams {
    /// Tokens.
    pub tokens: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head (even).
    pub head_dim: usize,
    /// RoPE base.
    pub theta: f32,
    /// Positions are multiplied by this.
    pub freq_scale: f32,
    /// Pairing.
    pub layout: RopeLayout,
    /// Epsilon of the per-head RMSNorm of Q and K, when there is one.
    pub qk_norm_eps: Option<f32>,
}

impl RopeQkvParams {
    /// Elements of one token's row.
    pub fn row(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Q, K and V as the reference returns them.
pub type QkvRef = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Reference: `(q, k, v)` as `[tokens, heads, d]`, `[tokens, kv_heads, d]`, `[tokens, kv_heads, d]`.
pub fn rope_qkv(
    p: &RopeQkvParams,
    qkv: &[f32],
    positions: &[u32],
    norms: Option<(&[f32], &[f32])>,
) -> Result<QkvRef, ParamError> {
    let d = p.head_dim;
    check_len("rope_qkv", "qkv", qkv, p.tokens * p.row())?;
    let split = |first: usize, count: usize| -> Vec<f32> {
        qkv.chunks_exact(p.row()).flat_map(|row| row[first * d..(first + count) * d].to_vec()).collect()
    };
    let (mut q, mut k, v) = (split(0, p.heads), split(p.heads, p.kv_heads), split(p.heads + p.kv_heads, p.kv_heads));
    if let Some(eps) = p.qk_norm_eps {
        let (qn, kn) = norms.ok_or_else(|| ParamError::new("rope_qkv", "params ask for QK norms"))?;
        let rms = |rows| crate::norm::NormParams { kind: crate::norm::NormKind::Rms, rows, dim: d, eps };
        q = crate::norm::norm(&rms(p.tokens * p.heads), &q, qn, None)?;
        k = crate::norm::norm(&rms(p.tokens * p.kv_heads), &k, kn, None)?;
    }
    let rp = |heads| RopeParams {
        tokens: p.tokens,
        heads,
        head_dim: d,
        rot_dim: d,
        theta: p.theta,
        freq_scale: p.freq_scale,
        layout: p.layout,
    };
    Ok((rope(&rp(p.heads), &q, positions)?, rope(&rp(p.kv_heads), &k, positions)?, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarter_turn_and_passthrough() {
        // theta^0 = 1 for pair 0, so position pi/2 rotates pair 0 by a quarter turn.
        let p = RopeParams {
            tokens: 1,
            heads: 1,
            head_dim: 6,
            rot_dim: 4,
            theta: 10000.0,
            freq_scale: 1.0,
            layout: RopeLayout::Interleaved,
        };
        let x = [1.0, 0.0, 1.0, 0.0, 7.0, 8.0];
        // A position must be an integer; use freq_scale to reach pi/2.
        let p = RopeParams { freq_scale: std::f32::consts::FRAC_PI_2, ..p };
        let y = rope(&p, &x, &[1]).unwrap();
        assert!(y[0].abs() < 1e-6 && (y[1] - 1.0).abs() < 1e-6);
        assert_eq!(&y[4..], &[7.0, 8.0]);
        let p = RopeParams { layout: RopeLayout::RotateHalf, ..p };
        let y = rope(&p, &[1.0, 0.0, 0.0, 0.0, 7.0, 8.0], &[1]).unwrap();
        assert!(y[0].abs() < 1e-6 && (y[2] - 1.0).abs() < 1e-6);
    }
}
