// Embedding gather: out[t, d] = table[ids[t], d] * scale. An id outside the table writes zeros
// (the runtime checks ids on the host before they reach the GPU).
#include "common.wgsl"

struct Params {
    tokens: u32,
    vocab: u32,
    dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<T>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
#if SLOTS
// Token t's id is ids[slots[t]]: the decode step's ids stay where the sampler wrote them.
@group(0) @binding(4) var<storage, read> slots: array<u32>;
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let d = i % p.dim;
#if SLOTS
    let id = ids[slots[t]];
#else
    let id = ids[t];
#endif
    var v = 0.0;
    if (id < p.vocab) {
        v = f32(table[id * p.dim + d]) * p.scale;
    }
    out[i] = T(v);
}
