//! Elementwise ops: add, mul, scale, silu, gelu (erf and tanh forms), swiglu and the in-place
//! residual add. Binary ops broadcast `b` over `a` when `b_len` divides `n` (`b[i % b_len]`).

use crate::{ParamError, check_len};

/// Which elementwise function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EltOp {
    /// `a + b`.
    Add,
    /// `a * b`.
    Mul,
    /// `a * scale`.
    Scale,
    /// `a * sigmoid(a)`.
    Silu,
    /// `0.5 a (1 + erf(a / sqrt 2))`, PyTorch's exact GELU.
    GeluErf,
    /// `0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))`, `gelu_pytorch_tanh`.
    GeluTanh,
    /// `silu(a) * b`, the gated MLP of Llama-family models.
    SwiGlu,
    /// `gelu_tanh(a) * b`, Gemma's gated MLP.
    GeGlu,
    /// `a += b` in place (the residual stream).
    ResidualAdd,
}

impl EltOp {
    /// Every op, for tables.
    pub const ALL: [EltOp; 9] = [
        EltOp::Add,
        EltOp::Mul,
        EltOp::Scale,
        EltOp::Silu,
        EltOp::GeluErf,
        EltOp::GeluTanh,
        EltOp::SwiGlu,
        EltOp::GeGlu,
        EltOp::ResidualAdd,
    ];

    /// Lowercase name, as in case names.
    pub fn name(self) -> &'static str {
        match self {
            EltOp::Add => "add",
            EltOp::Mul => "mul",
            EltOp::Scale => "scale",
            EltOp::Silu => "silu",
            EltOp::GeluErf => "gelu_erf",
            EltOp::GeluTanh => "gelu_tanh",
            EltOp::SwiGlu => "swiglu",
            EltOp::GeGlu => "geglu",
            EltOp::ResidualAdd => "residual_add",
        }
    }

    /// Whether the op reads a second operand `b`.
    pub fn is_binary(self) -> bool {
        matches!(self, EltOp::Add | EltOp::Mul | EltOp::SwiGlu | EltOp::GeGlu | EltOp::ResidualAdd)
    }

    /// Floating point operations per element (for roofline reports; transcendental functions
    /// count as one).
    pub fn flops_per_element(self) -> f64 {
        match self {
            EltOp::Add | EltOp::Mul | EltOp::Scale | EltOp::ResidualAdd => 1.0,
            EltOp::Silu => 4.0,
            EltOp::SwiGlu => 5.0,
            EltOp::GeluErf => 8.0,
            EltOp::GeluTanh => 9.0,
            EltOp::GeGlu => 10.0,
        }
    }
}

/// Shape of an elementwise op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EltParams {
    /// The function.
    pub op: EltOp,
    /// Elements of `a` and of the output.
    pub n: usize,
    /// Elements of `b` (binary ops); must divide `n`, and equal it for swiglu.
    pub b_len: usize,
    /// The factor of [`EltOp::Scale`].
    pub scale: f32,
}

impl EltParams {
    /// A unary op over `n` elements.
    pub fn unary(op: EltOp, n: usize) -> Self {
        EltParams { op, n, b_len: 0, scale: 1.0 }
    }

    /// A binary op over `n` elements with `b` of `b_len` elements.
    pub fn binary(op: EltOp, n: usize, b_len: usize) -> Self {
        EltParams { op, n, b_len, scale: 1.0 }
    }

    /// Check the shape.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.n == 0 || self.n > u32::MAX as usize {
            return Err(ParamError::new("elementwise", format!("{} elements is out of range", self.n)));
        }
        if self.op.is_binary() {
            if self.b_len == 0 || !self.n.is_multiple_of(self.b_len) {
                return Err(ParamError::new(
                    "elementwise",
                    format!("{}: b has {} elements, which must divide a's {}", self.op.name(), self.b_len, self.n),
                ));
            }
            if matches!(self.op, EltOp::SwiGlu | EltOp::GeGlu) && self.b_len != self.n {
                return Err(ParamError::new(
                    "elementwise",
                    format!("{} needs a and b of the same length", self.op.name()),
                ));
            }
        }
        Ok(())
    }

    /// Floating point operations.
    pub fn flops(&self) -> f64 {
        self.n as f64 * self.op.flops_per_element()
    }

    /// Bytes read and written for element size `t`.
    pub fn bytes(&self, t: usize) -> f64 {
        let b = if self.op.is_binary() { self.b_len } else { 0 };
        ((2 * self.n + b) * t) as f64
    }
}

/// `x * sigmoid(x)` in f64.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// PyTorch's exact GELU in f64.
pub fn gelu_erf(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The tanh approximation of GELU in f64.
pub fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// Reference elementwise op; returns the output (for [`EltOp::ResidualAdd`], the updated `a`).
pub fn elementwise(p: &EltParams, a: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>, ParamError> {
    p.validate()?;
    check_len("elementwise", "a", a, p.n)?;
    let b = match (p.op.is_binary(), b) {
        (true, Some(b)) => {
            check_len("elementwise", "b", b, p.b_len)?;
            b
        }
        (false, None) => &[][..],
        (true, None) => return Err(ParamError::new("elementwise", format!("{} needs b", p.op.name()))),
        (false, Some(_)) => return Err(ParamError::new("elementwise", format!("{} takes no b", p.op.name()))),
    };
    Ok(a.iter()
        .enumerate()
        .map(|(i, &x)| {
            let x = f64::from(x);
            let y = || f64::from(b[i % p.b_len]);
            let r = match p.op {
                EltOp::Add | EltOp::ResidualAdd => x + y(),
                EltOp::Mul => x * y(),
                EltOp::Scale => x * f64::from(p.scale),
                EltOp::Silu => silu(x),
                EltOp::GeluErf => gelu_erf(x),
                EltOp::GeluTanh => gelu_tanh(x),
                EltOp::SwiGlu => silu(x) * y(),
                EltOp::GeGlu => gelu_tanh(x) * y(),
            };
            r as f32
        })
        .collect())
}

/// Reference of a gated unit over paired rows: `x` is `[rows, 2f]`, each row the gate's `f`
/// values then the up projection's; the result is `[rows, f]` of `act(gate) * up` (`op` is
/// [`EltOp::SwiGlu`] or [`EltOp::GeGlu`]).
pub fn glu_pair(op: EltOp, rows: usize, f: usize, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    let act = match op {
        EltOp::SwiGlu => silu,
        EltOp::GeGlu => gelu_tanh,
        other => return Err(ParamError::new("glu_pair", format!("{} is not a gated unit", other.name()))),
    };
    if rows == 0 || f == 0 {
        return Err(ParamError::new("glu_pair", "empty shape"));
    }
    check_len("glu_pair", "x", x, rows * 2 * f)?;
    Ok(x.chunks_exact(2 * f)
        .flat_map(|row| (0..f).map(move |j| (act(f64::from(row[j])) * f64::from(row[f + j])) as f32))
        .collect())
}

/// [`glu_pair`] over rows whose gate and up values alternate: `[g0, u0, g1, u1, ...]`.
pub fn glu_interleaved(op: EltOp, rows: usize, f: usize, x: &[f32]) -> Result<Vec<f32>, ParamError> {
    check_len("glu_pair", "x", x, rows * 2 * f)?;
    let split: Vec<f32> = x
        .chunks_exact(2 * f)
        .flat_map(|row| row.iter().step_by(2).chain(row.iter().skip(1).step_by(2)).copied().collect::<Vec<_>>())
        .collect();
    glu_pair(op, rows, f, &split)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((gelu_erf(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((gelu_tanh(1.0) - 0.841_191_990_607_477_2).abs() < 1e-12);
        assert!((silu(2.0) - 1.761_594_155_955_764_9).abs() < 1e-15);
        let p = EltParams::binary(EltOp::Add, 4, 2);
        assert_eq!(elementwise(&p, &[1., 2., 3., 4.], Some(&[10., 20.])).unwrap(), vec![11., 22., 13., 24.]);
    }

    #[test]
    fn broadcast_must_divide() {
        assert!(EltParams::binary(EltOp::Mul, 5, 2).validate().is_err());
        assert!(EltParams::binary(EltOp::SwiGlu, 4, 2).validate().is_err());
        assert!(elementwise(&EltParams::unary(EltOp::Silu, 2), &[1., 2.], Some(&[1.])).is_err());
    }
}
