// Append K and V rows to a paged KV pool: token t of the batch goes to sequence dest[t].x at
// position dest[t].y, i.e. page pages[seq * max_pages + pos / page_size], slot pos % page_size.
// One invocation per (token, KV head, vec4 chunk); converts between storage types.
#include "common.wgsl"

struct Params {
    tokens: u32,
    n_kv_heads: u32,
    dv: u32,
    page_size: u32,
    max_pages: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_src: array<vec4<TS>>;
@group(0) @binding(2) var<storage, read> v_src: array<vec4<TS>>;
@group(0) @binding(3) var<storage, read> dest: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> pages: array<u32>;
@group(0) @binding(5) var<storage, read_write> k_pool: array<vec4<TKV>>;
@group(0) @binding(6) var<storage, read_write> v_pool: array<vec4<TKV>>;

@compute @workgroup_size(WG)
fn append(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    let per_token = p.n_kv_heads * p.dv;
    if (i >= p.tokens * per_token) {
        return;
    }
    let t = i / per_token;
    let within = i % per_token;
    let d = dest[t];
    let page = pages[d.x * p.max_pages + d.y / p.page_size];
    let dst = (page * p.page_size + d.y % p.page_size) * per_token + within;
    k_pool[dst] = vec4<TKV>(k_src[i]);
    v_pool[dst] = vec4<TKV>(v_src[i]);
}
