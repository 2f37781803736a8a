//! Attention: `softmax(Q K^T * scale + mask) V` per head, with grouped-query heads (query head
//! `h` reads KV head `h / (n_heads / n_kv_heads)`), causal and sliding-window masks at absolute
//! positions, an optional additive mask, and the merge of partial states by log-sum-exp.
//!
//! Layouts: Q and O `[seqs, q_len, n_heads, head_dim]`; each sequence's K and V
//! `[kv_len, n_kv_heads, head_dim]`; an additive mask `[q_len, mask_stride]` shared by all
//! sequences. Query token `t` of a sequence sits at absolute position `q_pos0 + t`; key `j` at
//! position `j`.

use crate::{ParamError, check_len};

/// Which keys a query may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mask {
    /// Every key (vision encoders, cascade prefixes).
    None,
    /// Keys at positions up to the query's.
    Causal,
    /// Causal and fewer than `window` positions back (Gemma 3's local layers).
    SlidingWindow(usize),
}

impl Mask {
    /// Lowercase name for case names.
    pub fn name(self) -> String {
        match self {
            Mask::None => "bidir".into(),
            Mask::Causal => "causal".into(),
            Mask::SlidingWindow(w) => format!("window{w}"),
        }
    }

    /// Whether a query at `qpos` sees a key at `kpos`.
    pub fn allows(self, qpos: usize, kpos: usize) -> bool {
        match self {
            Mask::None => true,
            Mask::Causal => kpos <= qpos,
            Mask::SlidingWindow(w) => kpos <= qpos && kpos + w > qpos,
        }
    }
}

/// Where one sequence's queries and keys are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpec {
    /// Keys (and values) of the sequence.
    pub kv_len: usize,
    /// Absolute position of the sequence's first query token.
    pub q_pos0: usize,
}

/// Shape of an attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Independent sequences.
    pub seqs: usize,
    /// Query tokens per sequence.
    pub q_len: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Factor on `Q K^T` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Positional mask.
    pub mask: Mask,
    /// Whether an additive mask `[q_len, mask_stride]` is given.
    pub additive_mask: bool,
    /// Row stride of the additive mask (at least the longest `kv_len`).
    pub mask_stride: usize,
}

impl AttnParams {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Elements of Q and of O.
    pub fn q_numel(&self) -> usize {
        self.seqs * self.q_len * self.n_heads * self.head_dim
    }

    /// Check the shape and the sequence specs.
    pub fn validate(&self, seqs: &[SeqSpec]) -> Result<(), ParamError> {
        let err = |m: String| Err(ParamError::new("attention", m));
        if self.seqs == 0 || self.q_len == 0 || self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
            return err(format!("empty shape {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return err(format!("{} query heads do not divide into {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if !self.scale.is_finite() {
            return err("scale must be finite".into());
        }
        if let Mask::SlidingWindow(0) = self.mask {
            return err("a sliding window needs at least one position".into());
        }
        if seqs.len() != self.seqs {
            return err(format!("{} sequence specs for {} sequences", seqs.len(), self.seqs));
        }
        if self.additive_mask && seqs.iter().any(|s| s.kv_len > self.mask_stride) {
            return err(format!("mask stride {} is shorter than a sequence's keys", self.mask_stride));
        }
        if self.q_numel() > u32::MAX as usize {
            return err("too many query elements".into());
        }
        Ok(())
    }

    /// Floating point operations: `Q K^T` and `P V` for each (query, key) pair the mask lets
    /// through, two flops per multiply-add each.
    pub fn flops(&self, seqs: &[SeqSpec]) -> f64 {
        let pairs: usize = seqs
            .iter()
            .map(|s| {
                (0..self.q_len)
                    .map(|t| {
                        let qpos = s.q_pos0 + t;
                        match self.mask {
                            Mask::None => s.kv_len,
                            Mask::Causal => (qpos + 1).min(s.kv_len),
                            Mask::SlidingWindow(w) => {
                                (qpos + 1).min(s.kv_len).saturating_sub((qpos + 1).saturating_sub(w))
                            }
                        }
                    })
                    .sum::<usize>()
            })
            .sum();
        4.0 * (pairs * self.n_heads * self.head_dim) as f64
    }

    /// Bytes that must move: Q and O once, K and V once per sequence, for element sizes `qo`
    /// and `kv`.
    pub fn bytes(&self, seqs: &[SeqSpec], qo: usize, kv: usize) -> f64 {
        let keys: usize = seqs.iter().map(|s| s.kv_len).sum();
        (2 * self.q_numel() * qo + 2 * keys * self.n_kv_heads * self.head_dim * kv) as f64
    }
}

/// An additive mask value below this (`-inf`, `f32::MIN`) removes the key, as the kernels do;
/// WGSL cannot spell infinity, so the kernels compare against this finite bound.
pub const MASKED_BELOW: f64 = -3.0e38;

/// Reference attention. `k[s]` and `v[s]` hold sequence `s`'s keys and values. Masked keys
/// (positionally, or by an additive mask of `-inf`) are absent: their K and V are not read. A
/// query row that sees no key yields NaN, as softmax over nothing does.
pub fn attention(
    p: &AttnParams,
    seqs: &[SeqSpec],
    q: &[f32],
    k: &[Vec<f32>],
    v: &[Vec<f32>],
    mask: Option<&[f32]>,
) -> Result<Vec<f32>, ParamError> {
    p.validate(seqs)?;
    check_len("attention", "q", q, p.q_numel())?;
    if k.len() != p.seqs || v.len() != p.seqs {
        return Err(ParamError::new("attention", "one K and one V per sequence"));
    }
    let (h_n, kv_n, d) = (p.n_heads, p.n_kv_heads, p.head_dim);
    for (s, spec) in seqs.iter().enumerate() {
        check_len("attention", "k", &k[s], spec.kv_len * kv_n * d)?;
        check_len("attention", "v", &v[s], spec.kv_len * kv_n * d)?;
    }
    if p.additive_mask {
        match mask {
            Some(m) => check_len("attention", "mask", m, p.q_len * p.mask_stride)?,
            None => return Err(ParamError::new("attention", "params ask for an additive mask but none was given")),
        }
    }
    let g = p.group();
    let scale = f64::from(p.scale);
    let mut out = vec![0f32; p.q_numel()];
    let mut scores = Vec::new();
    for (s, spec) in seqs.iter().enumerate() {
        for t in 0..p.q_len {
            let qpos = spec.q_pos0 + t;
            for h in 0..h_n {
                let kvh = h / g;
                let qrow = &q[((s * p.q_len + t) * h_n + h) * d..][..d];
                scores.clear();
                for j in 0..spec.kv_len {
                    if !p.mask.allows(qpos, j) {
                        continue;
                    }
                    let add = if p.additive_mask { f64::from(mask.unwrap_or(&[])[t * p.mask_stride + j]) } else { 0.0 };
                    // A key the additive mask sets to -inf (anything below MASKED_BELOW) is absent,
                    // as a positionally masked one is: its K and V are never read, so a NaN there
                    // cannot reach the output.
                    if add < MASKED_BELOW {
                        continue;
                    }
                    let krow = &k[s][(j * kv_n + kvh) * d..][..d];
                    let mut dot = 0f64;
                    for e in 0..d {
                        dot += f64::from(qrow[e]) * f64::from(krow[e]);
                    }
                    scores.push((j, dot * scale + add));
                }
                let max = scores.iter().map(|&(_, x)| x).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|&(_, x)| (x - max).exp()).sum();
                let orow = &mut out[((s * p.q_len + t) * h_n + h) * d..][..d];
                for (e, o) in orow.iter_mut().enumerate() {
                    let mut acc = 0f64;
                    for &(j, x) in &scores {
                        acc += (x - max).exp() / sum * f64::from(v[s][(j * kv_n + kvh) * d + e]);
                    }
                    *o = acc as f32;
                }
            }
        }
    }
    Ok(out)
}

/// Reference merge of `splits` partial attention states: `o_parts` `[splits, rows, dim]`, each
/// row normalised within its split, and `lse_parts` `[splits, rows]` (natural log of the split's
/// softmax denominator plus its max; `-inf` or very negative for an empty split). Returns the
/// merged rows and their log-sum-exp.
pub fn merge_states(
    splits: usize,
    rows: usize,
    dim: usize,
    o_parts: &[f32],
    lse_parts: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), ParamError> {
    check_len("merge", "o_parts", o_parts, splits * rows * dim)?;
    check_len("merge", "lse_parts", lse_parts, splits * rows)?;
    if splits == 0 {
        return Err(ParamError::new("merge", "no states to merge"));
    }
    let mut out = vec![0f32; rows * dim];
    let mut lse = vec![0f32; rows];
    for r in 0..rows {
        let max = (0..splits).map(|s| f64::from(lse_parts[s * rows + r])).fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = (0..splits).map(|s| (f64::from(lse_parts[s * rows + r]) - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        for e in 0..dim {
            let acc: f64 = (0..splits).map(|s| weights[s] * f64::from(o_parts[(s * rows + r) * dim + e])).sum();
            out[r * dim + e] = (acc / total) as f32;
        }
        lse[r] = (max + total.ln()) as f32;
    }
    Ok((out, lse))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mask: Mask) -> AttnParams {
        AttnParams {
            seqs: 1,
            q_len: 2,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 1,
            scale: 1.0,
            mask,
            additive_mask: false,
            mask_stride: 0,
        }
    }

    #[test]
    fn causal_first_query_sees_only_the_first_key() {
        let seqs = [SeqSpec { kv_len: 2, q_pos0: 0 }];
        let q = [1.0, 1.0, 1.0, 1.0];
        let o = attention(&p(Mask::Causal), &seqs, &q, &[vec![0.0, 0.0]], &[vec![3.0, 5.0]], None).unwrap();
        assert_eq!(o, vec![3.0, 3.0, 4.0, 4.0]);
        let o = attention(&p(Mask::None), &seqs, &q, &[vec![0.0, 0.0]], &[vec![3.0, 5.0]], None).unwrap();
        assert_eq!(o, vec![4.0, 4.0, 4.0, 4.0]);
        let o = attention(&p(Mask::SlidingWindow(1)), &seqs, &q, &[vec![0.0, 0.0]], &[vec![3.0, 5.0]], None).unwrap();
        assert_eq!(o, vec![3.0, 3.0, 5.0, 5.0]);
    }

    #[test]
    fn flops_count_visible_pairs() {
        let seqs = [SeqSpec { kv_len: 4, q_pos0: 0 }];
        let p4 = AttnParams { q_len: 4, n_heads: 1, ..p(Mask::None) };
        assert_eq!(p4.flops(&seqs), 4.0 * 16.0);
        assert_eq!(AttnParams { mask: Mask::Causal, ..p4 }.flops(&seqs), 4.0 * 10.0);
        assert_eq!(AttnParams { mask: Mask::SlidingWindow(2), ..p4 }.flops(&seqs), 4.0 * 7.0);
    }

    #[test]
    fn heads_must_divide() {
        let bad = AttnParams { n_heads: 3, n_kv_heads: 2, ..p(Mask::None) };
        assert!(bad.validate(&[SeqSpec { kv_len: 1, q_pos0: 0 }]).is_err());
    }

    #[test]
    fn merging_splits_equals_the_whole() {
        // Scores 0 and ln 3 over values 1 and 5: weights 1/4 and 3/4 -> 4.
        let (o, lse) = merge_states(2, 1, 1, &[1.0, 5.0], &[0.0, 3f32.ln()]).unwrap();
        assert!((o[0] - 4.0).abs() < 1e-6);
        assert!((lse[0] - 4f32.ln()).abs() < 1e-6);
    }
}
