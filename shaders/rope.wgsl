// Rotary position embedding over [tokens, heads, head_dim], out of place. One invocation per
// (token, head, j) with j < head_dim - rot_dim/2: j < rot_dim/2 rotates pair j, larger j copies
// one pass-through element. INTERLEAVED pairs (2i, 2i+1); otherwise (i, i + rot_dim/2).
#include "common.wgsl"

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dim: u32,
    log2_theta: f32,
    freq_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.rot_dim / 2u;
    let per_head = p.head_dim - half;
    let gid = linear_group(wg, nwg) * WG + lid;
    if (gid >= p.tokens * p.heads * per_head) {
        return;
    }
    let j = gid % per_head;
    let th = gid / per_head;
    let token = th / p.heads;
    let base = th * p.head_dim;
    if (j >= half) {
        let e = base + p.rot_dim + (j - half);
        out[e] = x[e];
        return;
    }
#if INTERLEAVED
    let i0 = base + 2u * j;
    let i1 = i0 + 1u;
#else
    let i0 = base + j;
    let i1 = i0 + half;
#endif
    let freq = exp2(-2.0 * f32(j) / f32(p.rot_dim) * p.log2_theta);
    let angle = f32(pos[token]) * p.freq_scale * freq;
    let c = cos(angle);
    let s = sin(angle);
    let x0 = f32(x[i0]);
    let x1 = f32(x[i1]);
    out[i0] = T(x0 * c - x1 * s);
    out[i1] = T(x1 * c + x0 * s);
}
