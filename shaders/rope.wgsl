// Rotary position embedding over [tokens, heads, head_dim], out of place. One invocation per
// (token, head, j) with j < head_dim - rot_dim/2: j < rot_dim/2 rotates pair j, larger j copies
// one pass-through element. INTERLEAVED pairs (2i, 2i+1); otherwise (i, i + rot_dim/2).
// ANGLES: pair j of token t rotates by angles[t * rot_dim/2 + j], a table the caller made (2D
// rotary of vision towers, M-RoPE), instead of pos[t] * freq_scale * theta^(-2j / rot_dim).
// Token t's heads start at t * row (row >= heads * head_dim: the heads may be the first of a
// wider row, as Q and K lead a fused QKV row); elements past them are not written.
#include "common.wgsl"

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dim: u32,
    log2_theta: f32,
    freq_scale: f32,
    row: u32,
    _pad1: u32,
}

#if !QKV
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
#if ANGLES
@group(0) @binding(2) var<storage, read> angles: array<f32>;
#else
@group(0) @binding(2) var<storage, read> pos: array<u32>;
#endif
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
    let base = token * p.row + (th % p.heads) * p.head_dim;
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
#if ANGLES
    let angle = angles[token * half + j];
#else
    let freq = exp2(-2.0 * f32(j) / f32(p.rot_dim) * p.log2_theta);
    let angle = f32(pos[token]) * p.freq_scale * freq;
#endif
    let c = cos(angle);
    let s = sin(angle);
    let x0 = f32(x[i0]);
    let x1 = f32(x[i1]);
    out[i0] = T(x0 * c - x1 * s);
    out[i1] = T(x1 * c + x0 * s);
}
#endif

#if QKV
// Everything between the QKV projection and attention, for rows of [q heads | k heads | v heads]
// (each head D wide): optional RMSNorm of each Q and K head (QKNORM, Gemma 3), RoPE of Q and K,
// Q into q_out [tokens, heads, D], K and V into the paged cache at their token's page and slot.
// One invocation per (token, head slot). Params: heads = query heads, rot_dim = D; the extra
// fields give the KV heads, the cache page geometry and eps.
struct QkvParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    d: u32,
    log2_theta: f32,
    freq_scale: f32,
    page_size: u32,
    max_pages: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> pq: QkvParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> qpos: array<u32>;
@group(0) @binding(3) var<storage, read> dest: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> pages: array<u32>;
@group(0) @binding(5) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_pool: array<TKV>;
@group(0) @binding(7) var<storage, read_write> v_pool: array<TKV>;
#if QKNORM
@group(0) @binding(8) var<storage, read> q_norm: array<f32>;
@group(0) @binding(9) var<storage, read> k_norm: array<f32>;
#endif

@compute @workgroup_size(WG)
fn rope_qkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let slots = pq.heads + 2u * pq.kv_heads;
    let gid = linear_group(wg, nwg) * WG + lid;
    if (gid >= pq.tokens * slots) {
        return;
    }
    let t = gid / slots;
    let slot = gid % slots;
    let src = (t * slots + slot) * pq.d;
    let dst_tok = dest[t];
    let page = pages[dst_tok.x * pq.max_pages + dst_tok.y / pq.page_size];
    let cache_row = (page * pq.page_size + dst_tok.y % pq.page_size) * pq.kv_heads;
    if (slot >= pq.heads + pq.kv_heads) {
        let base = (cache_row + slot - pq.heads - pq.kv_heads) * pq.d;
        for (var e = 0u; e < pq.d; e++) {
            v_pool[base + e] = TKV(qkv[src + e]);
        }
        return;
    }
    let is_q = slot < pq.heads;
    var scale = 1.0;
#if QKNORM
    var ss = 0.0;
    for (var e = 0u; e < pq.d; e++) {
        ss += qkv[src + e] * qkv[src + e];
    }
    scale = inverseSqrt(ss / f32(pq.d) + pq.eps);
#endif
    let half = pq.d / 2u;
    let position = f32(qpos[t]) * pq.freq_scale;
    for (var j = 0u; j < half; j++) {
#if INTERLEAVED
        let i0 = 2u * j;
        let i1 = i0 + 1u;
#else
        let i0 = j;
        let i1 = j + half;
#endif
        var x0 = qkv[src + i0] * scale;
        var x1 = qkv[src + i1] * scale;
#if QKNORM
        if (is_q) {
            x0 *= q_norm[i0];
            x1 *= q_norm[i1];
        } else {
            x0 *= k_norm[i0];
            x1 *= k_norm[i1];
        }
#endif
        let angle = position * exp2(-2.0 * f32(j) / f32(pq.d) * pq.log2_theta);
        let c = cos(angle);
        let s = sin(angle);
        let y0 = x0 * c - x1 * s;
        let y1 = x1 * c + x0 * s;
        if (is_q) {
            let qb = (t * pq.heads + slot) * pq.d;
            q_out[qb + i0] = y0;
            q_out[qb + i1] = y1;
        } else {
            let kb = (cache_row + slot - pq.heads) * pq.d;
            k_pool[kb + i0] = TKV(y0);
            k_pool[kb + i1] = TKV(y1);
        }
    }
}
#endif
