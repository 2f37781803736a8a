// Vision-encoder data movement, one invocation per output element.
// PATCHES: cut NCHW images into patch x patch squares, one row of C*P*P values per patch in
// (channel, row, column) order, so that the patch embedding is one matmul with the conv weight.
// SHUFFLE: Idefics3's pixel shuffle of each image's side x side token grid by `scale`.
// POOL: Gemma 3's average pool of each image's side x side token grid over scale x scale
// squares (the mean summed in f32, in row-major order within the square).
#include "common.wgsl"

struct Params {
    // PATCHES: images, channels, height, width; patch; patches per row; values per row.
    // SHUFFLE, POOL: images, side, dim, scale in the first four.
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    f: u32,
    g: u32,
    total: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

#if PATCHES
@compute @workgroup_size(WG)
fn patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let channels = p.b;
    let height = p.c;
    let width = p.d;
    let ps = p.e;
    let per_row = p.f;
    let row_len = p.g;
    let n_patches = (height / ps) * per_row;
    let r = i / row_len;
    let k = i % row_len;
    let img = r / n_patches;
    let pi = r % n_patches;
    let c = k / (ps * ps);
    let y = (k / ps) % ps;
    let x = k % ps;
    let py = pi / per_row;
    let px = pi % per_row;
    dst[i] = src[((img * channels + c) * height + py * ps + y) * width + px * ps + x];
}
#endif

#if SHUFFLE
@compute @workgroup_size(WG)
fn shuffle(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let side = p.b;
    let dim = p.c;
    let scale = p.d;
    let out_side = side / scale;
    let row_len = dim * scale * scale;
    let per_image = out_side * out_side * row_len;
    let img = i / per_image;
    let t = (i % per_image) / row_len;
    let k = i % row_len;
    let h2 = t / out_side;
    let w2 = t % out_side;
    let a = k / (dim * scale);
    let b = (k / dim) % scale;
    let c = k % dim;
    dst[i] = src[((img * side + h2 * scale + a) * side + w2 * scale + b) * dim + c];
}
#endif

#if POOL
@compute @workgroup_size(WG)
fn pool(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let side = p.b;
    let dim = p.c;
    let scale = p.d;
    let out_side = side / scale;
    let per_image = out_side * out_side * dim;
    let img = i / per_image;
    let t = (i % per_image) / dim;
    let c = i % dim;
    let y0 = (t / out_side) * scale;
    let x0 = (t % out_side) * scale;
    var sum = 0.0;
    for (var y = 0u; y < scale; y++) {
        for (var x = 0u; x < scale; x++) {
            sum += f32(src[((img * side + y0 + y) * side + x0 + x) * dim + c]);
        }
    }
    dst[i] = T(sum / f32(scale * scale));
}
#endif
