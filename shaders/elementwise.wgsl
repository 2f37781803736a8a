// Elementwise ops, one element per invocation, f32 arithmetic whatever the storage type T.
// OP selects the function: 0 add, 1 mul, 2 scale, 3 silu, 4 gelu_erf, 5 gelu_tanh, 6 swiglu,
// 7 residual add (in place: x += b), 8 geglu (gelu_tanh(a) * b). Binary ops read b[i % b_len] (row broadcast).
#include "common.wgsl"

struct Params {
    n: u32,
    b_len: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if OP == 7
@group(0) @binding(1) var<storage, read_write> x: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
#elif PAIR
// Gated unit over paired rows: a is [rows, 2 * b_len], gate then up; out is [rows, b_len].
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;
#elif OP == 0 || OP == 1 || OP == 6 || OP == 8
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;
#else
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<T>;
#endif

// erf from the Chebyshev fit of erfc in Numerical Recipes (fractional error < 1.2e-7).
fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(-z * z + poly);
    return select(erfc - 1.0, 1.0 - erfc, x >= 0.0);
}

// tanh through exp(-2|y|), which cannot overflow.
fn tanh_f32(y: f32) -> f32 {
    let e = exp(-2.0 * abs(y));
    return sign(y) * (1.0 - e) / (1.0 + e);
}

fn silu_f32(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.n) {
        return;
    }
#if OP == 7
    x[i] = T(f32(x[i]) + f32(b[i % p.b_len]));
#elif PAIR
    let row = i / p.b_len;
    let j = i % p.b_len;
#if INTERLEAVED
    // Gate j and up j side by side (a weight uploaded for a GLU epilogue).
    let v = f32(a[row * 2u * p.b_len + 2u * j]);
    let u = f32(a[row * 2u * p.b_len + 2u * j + 1u]);
#else
    let v = f32(a[row * 2u * p.b_len + j]);
    let u = f32(a[row * 2u * p.b_len + p.b_len + j]);
#endif
#if OP == 6
    out[i] = T(silu_f32(v) * u);
#else
    out[i] = T(0.5 * v * (1.0 + tanh_f32(0.79788456080286536 * (v + 0.044715 * v * v * v))) * u);
#endif
#else
    let v = f32(a[i]);
#if OP == 0
    let r = v + f32(b[i % p.b_len]);
#elif OP == 1
    let r = v * f32(b[i % p.b_len]);
#elif OP == 2
    let r = v * p.scale;
#elif OP == 3
    let r = silu_f32(v);
#elif OP == 4
    let r = 0.5 * v * (1.0 + erf_f32(v * 0.70710678118654752));
#elif OP == 5
    let r = 0.5 * v * (1.0 + tanh_f32(0.79788456080286536 * (v + 0.044715 * v * v * v)));
#elif OP == 6
    let r = silu_f32(v) * f32(b[i]);
#elif OP == 8
    let r = 0.5 * v * (1.0 + tanh_f32(0.79788456080286536 * (v + 0.044715 * v * v * v))) * f32(b[i]);
#endif
    out[i] = T(r);
#endif
}
