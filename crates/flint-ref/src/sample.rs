//! Token sampling: greedy, or temperature with top-k and top-p, driven by a seeded counter-based
//! generator so that a (seed, step) pair always draws the same number on CPU and GPU.

use crate::{ParamError, check_len};

/// How to pick a token from a row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleParams {
    /// Rows of logits (sequences).
    pub rows: usize,
    /// Row length.
    pub vocab: usize,
    /// 0 picks the largest logit (greedy); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: no limit, but at most [`MAX_CANDIDATES`]).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches this (1: all).
    pub top_p: f32,
}

/// Most candidates the sampler keeps after its first cut (the GPU sorts them in workgroup
/// memory). Tokens past the 1024th most likely are never drawn.
pub const MAX_CANDIDATES: usize = 1024;

impl SampleParams {
    /// Greedy over `rows` rows of `vocab`.
    pub fn greedy(rows: usize, vocab: usize) -> Self {
        SampleParams { rows, vocab, temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    /// Check the values.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.rows == 0 || self.vocab == 0 || self.rows * self.vocab > u32::MAX as usize {
            return Err(ParamError::new("sample", format!("bad shape {}x{}", self.rows, self.vocab)));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ParamError::new("sample", format!("temperature {} must be finite and >= 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ParamError::new("sample", format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }

    /// The number of candidates kept before top-p.
    pub fn k_eff(&self) -> usize {
        if self.top_k == 0 { MAX_CANDIDATES } else { self.top_k.min(MAX_CANDIDATES) }.min(self.vocab)
    }
}

/// PCG hash of one word (the same on GPU).
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The uniform number in [0, 1) drawn for `(seed, step)`: 24 bits of a double PCG hash.
pub fn uniform(seed: u32, step: u32) -> f32 {
    (pcg(seed ^ pcg(step)) >> 8) as f32 / 16_777_216.0
}

/// What the reference picked for one row: the token, its log-probability under the full softmax
/// of the raw logits, and the interval of cumulative probability it covers (for checking a GPU
/// choice against rounding at interval edges).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Token id.
    pub token: u32,
    /// `log softmax(logits)[token]` at temperature 1.
    pub logprob: f32,
    /// `[lo, hi)` of the draw that picks this token.
    pub interval: (f64, f64),
}

/// Reference sampler: exact top-k (ties broken by lower id) and top-p in f64.
pub fn sample(p: &SampleParams, logits: &[f32], rng: &[(u32, u32)]) -> Result<Vec<Choice>, ParamError> {
    p.validate()?;
    check_len("sample", "logits", logits, p.rows * p.vocab)?;
    if rng.len() != p.rows {
        return Err(ParamError::new("sample", format!("{} (seed, step) pairs for {} rows", rng.len(), p.rows)));
    }
    let mut out = Vec::with_capacity(p.rows);
    for (row, &(seed, step)) in logits.chunks_exact(p.vocab).zip(rng) {
        let max = row.iter().map(|&x| f64::from(x)).fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + row.iter().map(|&x| (f64::from(x) - max).exp()).sum::<f64>().ln();
        let logprob = |t: usize| (f64::from(row[t]) - log_z) as f32;
        if p.temperature == 0.0 {
            let t = (0..p.vocab).fold(0, |best, i| if row[i] > row[best] { i } else { best });
            out.push(Choice { token: t as u32, logprob: logprob(t), interval: (0.0, 1.0) });
            continue;
        }
        let mut order: Vec<usize> = (0..p.vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(p.k_eff());
        let t = f64::from(p.temperature);
        let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(row[i]) - max) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        // Top-p: the shortest prefix whose probability reaches top_p.
        let mut keep = weights.len();
        let mut cum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        let kept: f64 = weights[..keep].iter().sum();
        let u = f64::from(uniform(seed, step));
        let mut lo = 0.0;
        let mut chosen = (order[keep - 1], (lo, 1.0));
        for i in 0..keep {
            let hi = lo + weights[i] / kept;
            if u < hi {
                chosen = (order[i], (lo, hi));
                break;
            }
            lo = hi;
        }
        out.push(Choice { token: chosen.0 as u32, logprob: logprob(chosen.0), interval: chosen.1 });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 2.0];
        let g = sample(&SampleParams::greedy(1, 4), &logits, &[(0, 0)]).unwrap();
        assert_eq!(g[0].token, 1);
        assert!((f64::from(g[0].logprob) - (3.0 - (1f64 + 3f64.exp() + 1f64.exp() + 2f64.exp()).ln())).abs() < 1e-6);
        // top_k 1 at any temperature is greedy.
        let p = SampleParams { rows: 1, vocab: 4, temperature: 5.0, top_k: 1, top_p: 1.0 };
        assert_eq!(sample(&p, &logits, &[(7, 3)]).unwrap()[0].token, 1);
        // A tiny top_p keeps only the most likely token.
        let p = SampleParams { rows: 1, vocab: 4, temperature: 1.0, top_k: 0, top_p: 0.01 };
        assert_eq!(sample(&p, &logits, &[(1, 2)]).unwrap()[0].token, 1);
        // Different draws reach different tokens at a high temperature.
        let p = SampleParams { rows: 1, vocab: 4, temperature: 100.0, top_k: 0, top_p: 1.0 };
        let picks: std::collections::BTreeSet<u32> =
            (0..64).map(|s| sample(&p, &logits, &[(s, 0)]).unwrap()[0].token).collect();
        assert_eq!(picks.len(), 4);
    }

    #[test]
    fn uniform_is_in_range_and_spread() {
        let v: Vec<f32> = (0..1000).map(|i| uniform(42, i)).collect();
        assert!(v.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = v.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
