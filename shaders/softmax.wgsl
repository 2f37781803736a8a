// Softmax over rows, one workgroup per row: max, sum of exp(x - max), then normalise.
#include "common.wgsl"
#include "reduce.wgsl"

struct Params {
    rows: u32,
    dim: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var m = -3.402823e38;
    for (var i = lid; i < p.dim; i += WG) {
        m = max(m, p.scale * f32(x[base + i]));
    }
    let row_max = wg_max(m, lid);
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        s += exp(p.scale * f32(x[base + i]) - row_max);
    }
    let inv = 1.0 / wg_sum(s, lid);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = T(exp(p.scale * f32(x[base + i]) - row_max) * inv);
    }
}
