// Row normalisations, one workgroup per row. KIND 0: RMSNorm, 1: RMSNorm with (1 + w),
// 2: LayerNorm (two passes over the row: mean, then variance about the mean).
#include "common.wgsl"
#include "reduce.wgsl"

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if !ADD_NORM
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> w: array<T>;
#if KIND == 2
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;
#else
@group(0) @binding(3) var<storage, read_write> out: array<T>;
#endif

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wg, nwg);
    // Uniform across the workgroup, so returning keeps the barriers below uniform.
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let d = f32(p.dim);
#if KIND == 2
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        s += f32(x[base + i]);
    }
    let mean = wg_sum(s, lid) / d;
    var q = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let c = f32(x[base + i]) - mean;
        q += c * c;
    }
    let inv = inverseSqrt(wg_sum(q, lid) / d + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = T((f32(x[base + i]) - mean) * inv * f32(w[i]) + f32(bias[i]));
    }
#else
    var q = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = f32(x[base + i]);
        q += v * v;
    }
    let inv = inverseSqrt(wg_sum(q, lid) / d + p.eps);
#if KIND == 1
    let offset = 1.0;
#else
    let offset = 0.0;
#endif
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = T(f32(x[base + i]) * inv * (offset + f32(w[i])));
    }
#endif
}

#endif

#if ADD_NORM
// The residual step between decoder blocks, one workgroup per row: x += y (or x += rmsnorm(y,
// post) with POST), then out = rmsnorm(x, w). Without ADD only out = rmsnorm(x, w). Bindings:
// x (read_write), y, post, w, out, in that order, the absent ones left out.
@group(0) @binding(1) var<storage, read_write> xr: array<f32>;
#if ADD
@group(0) @binding(2) var<storage, read> y: array<f32>;
#endif
#if POST
@group(0) @binding(3) var<storage, read> post: array<f32>;
#endif
@group(0) @binding(4) var<storage, read> wn: array<f32>;
@group(0) @binding(5) var<storage, read_write> normed: array<f32>;

@compute @workgroup_size(WG)
fn add_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let d = f32(p.dim);
#if POST
    var qy = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        qy += y[base + i] * y[base + i];
    }
    let inv_y = inverseSqrt(wg_sum(qy, lid) / d + p.eps);
#endif
    var q = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
#if POST
        let v = xr[base + i] + y[base + i] * inv_y * post[i];
        xr[base + i] = v;
#elif ADD
        let v = xr[base + i] + y[base + i];
        xr[base + i] = v;
#else
        let v = xr[base + i];
#endif
        q += v * v;
    }
    let inv = inverseSqrt(wg_sum(q, lid) / d + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        normed[base + i] = xr[base + i] * inv * wn[i];
    }
}
#endif
