// Roofline probes: an arithmetic-bound kernel (independent vec4 FMA chains, no memory traffic
// in the loop), a memory-bound vec4 copy, and a load-only reduction (what a matvec's weight
// stream is: reads and nearly no writes). `flint bench` compares kernels against them.
#include "common.wgsl"

struct Params {
    n: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if FMA
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn fma_peak(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    // Eight independent chains hide FMA latency, four steps per trip hide the loop overhead;
    // the constants keep values bounded.
    let seed = f32(i & 255u) * 1e-3;
    var a0 = vec4<f32>(seed);
    var a1 = a0 + 0.1;
    var a2 = a0 + 0.2;
    var a3 = a0 + 0.3;
    var a4 = a0 + 0.4;
    var a5 = a0 + 0.5;
    var a6 = a0 + 0.6;
    var a7 = a0 + 0.7;
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(0.001);
    for (var k = 0u; k < p.iters; k += 4u) {
        for (var u = 0u; u < 4u; u++) {
            a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
            a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
        }
    }
    out[i % p.n] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
#elif READ
@group(0) @binding(1) var<storage, read> words: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sums: array<vec4<u32>>;

// Each invocation sums every p.iters-th vec4 from its own index (neighbouring lanes read
// neighbouring vec4s) in four independent chains, and writes one vec4; p.n vec4s in all, a
// multiple of 4 * p.iters (the invocation count).
@compute @workgroup_size(WG)
fn read_peak(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    let stride = p.iters;
    var s0 = vec4<u32>(0u);
    var s1 = vec4<u32>(0u);
    var s2 = vec4<u32>(0u);
    var s3 = vec4<u32>(0u);
    for (var j = i; j < p.n; j += 4u * stride) {
        s0 += words[j];
        s1 += words[j + stride];
        s2 += words[j + 2u * stride];
        s3 += words[j + 3u * stride];
    }
    sums[i] = s0 ^ s1 ^ s2 ^ s3;
}
#else
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i < p.n) {
        dst[i] = src[i];
    }
}
#endif
