//! Matrix multiplication against transposed weights: `C[b] = A[b] x B[b]^T (+ bias)`, with A
//! `[batch, m, k]` activations, B `[batch or 1, n, k]` weights (row n holds output n's weights,
//! as in PyTorch's Linear and GGUF) and C `[batch, m, n]`.

use crate::{ParamError, check_len};

/// Shape of a matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulParams {
    /// Independent products.
    pub batch: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Rows of B, columns of C.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
    /// B has one matrix per batch (true) or one shared by all (false, the weights case).
    pub b_batched: bool,
    /// A bias of length n is added to every row.
    pub bias: bool,
}

impl MatmulParams {
    /// A single unbatched product without bias.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        MatmulParams { batch: 1, m, n, k, b_batched: false, bias: false }
    }

    /// Check the shape is usable: every dimension at least 1 and element counts within u32.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.batch == 0 || self.m == 0 || self.n == 0 || self.k == 0 {
            return Err(ParamError::new("matmul", format!("empty shape {self:?}")));
        }
        for (what, len) in [("A", self.a_len()), ("B", self.b_len()), ("C", self.c_len())] {
            if len > u32::MAX as usize {
                return Err(ParamError::new(
                    "matmul",
                    format!("{what} has {len} elements, more than u32 indexing allows"),
                ));
            }
        }
        Ok(())
    }

    /// Elements of A.
    pub fn a_len(&self) -> usize {
        self.batch * self.m * self.k
    }

    /// Elements of B.
    pub fn b_len(&self) -> usize {
        (if self.b_batched { self.batch } else { 1 }) * self.n * self.k
    }

    /// Elements of C.
    pub fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// Floating point operations (a multiply-add counts two).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64 + if self.bias { self.c_len() as f64 } else { 0.0 }
    }

    /// Bytes read and written once each, for element sizes of A, B and C.
    pub fn bytes(&self, a: usize, b: usize, c: usize) -> f64 {
        (self.a_len() * a + self.b_len() * b + self.c_len() * c + if self.bias { self.n * b } else { 0 }) as f64
    }
}

/// Reference matmul with f64 accumulation.
pub fn matmul(p: &MatmulParams, a: &[f32], b: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("matmul", "A", a, p.a_len())?;
    check_len("matmul", "B", b, p.b_len())?;
    match (p.bias, bias) {
        (true, Some(bias)) => check_len("matmul", "bias", bias, p.n)?,
        (false, None) => {}
        (true, None) => return Err(ParamError::new("matmul", "params ask for a bias but none was given")),
        (false, Some(_)) => return Err(ParamError::new("matmul", "a bias was given but params have bias = false")),
    }
    let (m, n, k) = (p.m, p.n, p.k);
    let mut c = vec![0f32; p.c_len()];
    for bi in 0..p.batch {
        let a = &a[bi * m * k..][..m * k];
        let b = if p.b_batched { &b[bi * n * k..][..n * k] } else { &b[..n * k] };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for kk in 0..k {
                    acc += f64::from(a[i * k + kk]) * f64::from(b[j * k + kk]);
                }
                if let Some(bias) = bias {
                    acc += f64::from(bias[j]);
                }
                c[(bi * m + i) * n + j] = acc as f32;
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_with_bias_and_batch() {
        // A = [[1,2],[3,4]], B = [[1,0],[0,1],[1,1]] -> A B^T = [[1,2,3],[3,4,7]]
        let p = MatmulParams { batch: 2, m: 2, n: 3, k: 2, b_batched: false, bias: true };
        let a = [1., 2., 3., 4., 1., 2., 3., 4.];
        let b = [1., 0., 0., 1., 1., 1.];
        let c = matmul(&p, &a, &b, Some(&[0.5, 0., -1.])).unwrap();
        assert_eq!(c, vec![1.5, 2., 2., 3.5, 4., 6., 1.5, 2., 2., 3.5, 4., 6.]);
    }

    #[test]
    fn rejects_wrong_lengths() {
        let p = MatmulParams::new(2, 2, 2);
        assert!(matmul(&p, &[0.; 3], &[0.; 4], None).is_err());
        assert!(matmul(&p, &[0.; 4], &[0.; 4], Some(&[0.; 2])).is_err());
        assert!(MatmulParams::new(0, 1, 1).validate().is_err());
    }
}
