//! The error metric: normalised mean squared error plus the largest absolute difference, with
//! non-finite values treated as failures unless the reference has the same.

/// Accepted error of a case.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Tolerance {
    /// Largest accepted `sum((gpu - ref)^2) / sum(ref^2)`.
    pub nmse: f64,
    /// Largest accepted `|gpu - ref|`, as a fraction of `max |ref|`.
    pub max_abs_rel: f64,
}

/// The outcome of comparing a GPU output with the reference.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Normalised mean squared error (absolute squared error when the reference is all zero).
    pub nmse: f64,
    /// Largest absolute difference over finite pairs.
    pub max_abs: f64,
    /// `max |ref|`.
    pub ref_max: f64,
    /// Why the output is wrong regardless of the numbers (non-finite mismatch, length), if so.
    pub defect: Option<String>,
}

impl Comparison {
    /// Whether the output is within `tol`.
    pub fn passes(&self, tol: &Tolerance) -> bool {
        self.defect.is_none()
            && self.nmse <= tol.nmse
            && self.max_abs <= tol.max_abs_rel * self.ref_max.max(f64::MIN_POSITIVE)
    }
}

/// Compare `got` with `want`.
pub fn compare(got: &[f32], want: &[f32]) -> Comparison {
    if got.len() != want.len() {
        return Comparison {
            nmse: f64::INFINITY,
            max_abs: f64::INFINITY,
            ref_max: 0.0,
            defect: Some(format!("{} outputs, expected {}", got.len(), want.len())),
        };
    }
    let (mut err, mut norm, mut max_abs, mut ref_max) = (0f64, 0f64, 0f64, 0f64);
    let mut defect = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (f64::from(g), f64::from(w));
        if !w.is_finite() || !g.is_finite() {
            let same = (w.is_nan() && g.is_nan()) || (w.is_infinite() && g == w);
            if !same && defect.is_none() {
                defect = Some(format!("element {i}: got {g}, reference {w}"));
            }
            continue;
        }
        err += (g - w) * (g - w);
        norm += w * w;
        max_abs = max_abs.max((g - w).abs());
        ref_max = ref_max.max(w.abs());
    }
    let nmse = if norm > 0.0 { err / norm } else { err };
    Comparison { nmse, max_abs, ref_max, defect }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance { nmse: 1e-6, max_abs_rel: 1e-3 };

    #[test]
    fn exact_passes_and_small_noise_is_measured() {
        let want = [1.0, -2.0, 3.0];
        assert!(compare(&want, &want).passes(&TOL));
        let c = compare(&[1.0, -2.0, 3.001], &want);
        assert!((c.nmse - 1e-6 / 14.0).abs() < 1e-9 && (c.max_abs - 0.001).abs() < 1e-6);
    }

    #[test]
    fn nan_or_inf_where_reference_is_finite_fails() {
        assert!(!compare(&[1.0, f32::NAN], &[1.0, 2.0]).passes(&TOL));
        assert!(!compare(&[1.0, f32::INFINITY], &[1.0, 2.0]).passes(&TOL));
        assert!(compare(&[1.0, f32::NAN], &[1.0, f32::NAN]).passes(&TOL));
        assert!(!compare(&[1.0, f32::NEG_INFINITY], &[1.0, f32::INFINITY]).passes(&TOL));
    }

    #[test]
    fn large_error_fails_either_metric() {
        assert!(!compare(&[1.1, 2.0], &[1.0, 2.0]).passes(&TOL));
        // One outlier among many: small NMSE but a large max-abs.
        let mut got = vec![1.0f32; 10_000];
        let want = got.clone();
        got[5] = 1.01;
        let c = compare(&got, &want);
        assert!(c.nmse < 1e-6 && !c.passes(&TOL));
        assert!(!compare(&[1.0], &[1.0, 2.0]).passes(&TOL));
    }
}
