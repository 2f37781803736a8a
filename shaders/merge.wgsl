// Merge of partial attention states: each of `splits` states holds rows normalised within the
// state and their log-sum-exp; the merged row is the lse-weighted mean, and its lse is
// max + log(sum of weights). An empty state has lse near -3e38 and weight 0.
#include "common.wgsl"

struct Params {
    rows: u32,
    splits: u32,
    dv: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<vec4<TI>>;
@group(0) @binding(2) var<storage, read> lse_parts: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<TO>>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;

@compute @workgroup_size(WG)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.rows * p.dv) {
        return;
    }
    let row = i / p.dv;
    let c = i % p.dv;
    var mx = -3.0e38;
    for (var s = 0u; s < p.splits; s++) {
        mx = max(mx, lse_parts[s * p.rows + row]);
    }
    var total = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s++) {
        let w = exp(lse_parts[s * p.rows + row] - mx);
        total += w;
        acc += w * vec4<f32>(parts[(s * p.rows + row) * p.dv + c]);
    }
    out[i] = vec4<TO>(acc / total);
    if (c == 0u) {
        lse_out[row] = select(mx + log(total), -3.0e38, mx <= -3.0e38);
    }
}
