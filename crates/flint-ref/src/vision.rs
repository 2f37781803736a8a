//! Vision-encoder data movement: patch extraction for the stride = patch convolution (an im2col,
//! so the patch embedding is one matmul against the conv weight flattened to
//! `[dim, channels * patch * patch]`), and the Idefics3 connector's pixel shuffle.

use crate::{ParamError, check_len};

/// Shape of a patch extraction: `images` images of `channels x height x width` (NCHW), cut into
/// non-overlapping `patch x patch` squares in row-major patch order; each patch becomes one row
/// of `channels * patch * patch` values in (channel, row, column) order, as a conv weight
/// `[dim, channels, patch, patch]` is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchParams {
    /// Images.
    pub images: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// Image height (a multiple of `patch`).
    pub height: usize,
    /// Image width (a multiple of `patch`).
    pub width: usize,
    /// Patch side.
    pub patch: usize,
}

impl PatchParams {
    /// Patches per image.
    pub fn patches(&self) -> usize {
        (self.height / self.patch.max(1)) * (self.width / self.patch.max(1))
    }

    /// Values per patch row.
    pub fn row(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.images == 0 || self.channels == 0 || self.patch == 0 || self.height == 0 || self.width == 0 {
            return Err(ParamError::new("patches", format!("empty shape {self:?}")));
        }
        if !self.height.is_multiple_of(self.patch) || !self.width.is_multiple_of(self.patch) {
            return Err(ParamError::new(
                "patches",
                format!("{}x{} images do not divide into {}-pixel patches", self.height, self.width, self.patch),
            ));
        }
        if self.images * self.channels * self.height * self.width > u32::MAX as usize {
            return Err(ParamError::new("patches", "too many pixels"));
        }
        Ok(())
    }
}

/// Reference patch extraction: `[images * patches, channels * patch * patch]`.
pub fn patches(p: &PatchParams, pixels: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("patches", "pixels", pixels, p.images * p.channels * p.height * p.width)?;
    let (per_row, ps) = (p.width / p.patch, p.patch);
    let mut out = Vec::with_capacity(p.images * p.patches() * p.row());
    for img in 0..p.images {
        for patch in 0..p.patches() {
            let (py, px) = (patch / per_row, patch % per_row);
            for c in 0..p.channels {
                for y in 0..ps {
                    for x in 0..ps {
                        out.push(pixels[((img * p.channels + c) * p.height + py * ps + y) * p.width + px * ps + x]);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Shape of a pixel shuffle: each of `images` grids of `side x side` tokens of `dim` becomes a
/// grid of `(side / scale)^2` tokens of `dim * scale^2`: output token `(i, j)` holds, for
/// `a, b < scale`, input token `(i * scale + a, j * scale + b)` at offset `(a * scale + b) * dim`
/// (transformers' Idefics3Connector.pixel_shuffle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShuffleParams {
    /// Images.
    pub images: usize,
    /// Tokens per side of an image's grid.
    pub side: usize,
    /// Token width.
    pub dim: usize,
    /// Scale factor (divides `side`).
    pub scale: usize,
}

impl ShuffleParams {
    /// Output tokens per image.
    pub fn tokens_out(&self) -> usize {
        (self.side / self.scale.max(1)).pow(2)
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.images == 0 || self.side == 0 || self.dim == 0 || self.scale == 0 {
            return Err(ParamError::new("pixel_shuffle", format!("empty shape {self:?}")));
        }
        if !self.side.is_multiple_of(self.scale) {
            return Err(ParamError::new(
                "pixel_shuffle",
                format!("a grid of {} tokens per side does not divide by the scale factor {}", self.side, self.scale),
            ));
        }
        if self.images * self.side * self.side * self.dim > u32::MAX as usize {
            return Err(ParamError::new("pixel_shuffle", "too many elements"));
        }
        Ok(())
    }
}

/// Reference pixel shuffle, written as transformers writes it: view, permute, reshape, permute,
/// reshape of `[images, side * side, dim]` into `[images, (side / scale)^2, dim * scale^2]`.
pub fn pixel_shuffle(p: &ShuffleParams, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    let (s, d, r) = (p.side, p.dim, p.scale);
    check_len("pixel_shuffle", "x", x, p.images * s * s * d)?;
    let mut out = Vec::with_capacity(x.len());
    for img in 0..p.images {
        let x = &x[img * s * s * d..][..s * s * d];
        // x.view(h, w / r, d * r): element (h, w2, j) = x[h][w2 * r + j / d][j % d].
        let v1 = |h: usize, w2: usize, j: usize| x[(h * s + w2 * r + j / d) * d + j % d];
        // permute -> (w / r, h, d r); reshape -> (w / r, h / r, d r^2): (w2, h2, k) is the
        // element at flat (h, j) = divmod(h2 * d r^2 + k, d r) of row w2.
        let v2 = |w2: usize, h2: usize, k: usize| {
            let flat = h2 * d * r * r + k;
            v1(flat / (d * r), w2, flat % (d * r))
        };
        // permute -> (h / r, w / r, d r^2); reshape -> (s^2 / r^2, d r^2).
        for h2 in 0..s / r {
            for w2 in 0..s / r {
                for k in 0..d * r * r {
                    out.push(v2(w2, h2, k));
                }
            }
        }
    }
    Ok(out)
}

/// Reference average pool, as torch's `AvgPool2d(scale, stride=scale)` over each image's token
/// grid `[images, side * side, dim]` viewed as `[images, dim, side, side]`: `[images, (side /
/// scale)^2, dim]`, each the mean of its `scale x scale` square (summed in f64).
pub fn avg_pool(p: &ShuffleParams, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    let (s, d, r) = (p.side, p.dim, p.scale);
    check_len("avg_pool", "x", x, p.images * s * s * d)?;
    let mut out = Vec::with_capacity(p.images * p.tokens_out() * d);
    for img in 0..p.images {
        for ty in 0..s / r {
            for tx in 0..s / r {
                for c in 0..d {
                    let mut sum = 0f64;
                    for y in 0..r {
                        for x0 in 0..r {
                            sum += f64::from(x[((img * s + ty * r + y) * s + tx * r + x0) * d + c]);
                        }
                    }
                    out.push((sum / (r * r) as f64) as f32);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_follow_the_conv_weight_layout() {
        // One 2-channel 4x4 image, patches of 2: patch 1 is the top-right square.
        let p = PatchParams { images: 1, channels: 2, height: 4, width: 4, patch: 2 };
        let px: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let out = patches(&p, &px).unwrap();
        assert_eq!(out.len(), 4 * 8);
        assert_eq!(&out[8..16], &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
        assert!(patches(&PatchParams { height: 5, ..p }, &px).is_err());
    }

    #[test]
    fn shuffle_gathers_scale_by_scale_blocks() {
        // A 4x4 grid of 1-wide tokens numbered row-major, scale 2: output token 0 gathers the
        // top-left 2x2 block in (a, b) order.
        let p = ShuffleParams { images: 1, side: 4, dim: 1, scale: 2 };
        let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let out = pixel_shuffle(&p, &x).unwrap();
        assert_eq!(&out[..4], &[0.0, 1.0, 4.0, 5.0]);
        assert_eq!(&out[4..8], &[2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&out[12..], &[10.0, 11.0, 14.0, 15.0]);
        assert!(pixel_shuffle(&ShuffleParams { scale: 3, ..p }, &x).is_err());
    }
}
