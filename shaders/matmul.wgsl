// C[b] = A[b] x B[b]^T (+ bias), A [m, k] activations, B [n, k] weights, C [m, n]; f32
// accumulation whatever the storage types TA, TB, TC. Three strategies, one per entry point:
//
// - matmul_tiled: BM x BN tiles staged through workgroup memory in BK-deep slices, each
//   invocation accumulating a TM x TN register block. The portable fallback.
// - matmul_subgroup (SUBGROUP_MM): no workgroup memory. Lane l of a subgroup of SG lanes loads
//   row m0 + l of A (RB row blocks); subgroupShuffle hands every row to every lane, and each
//   lane owns four columns of B, so A is read once per subgroup and B once per row block. On
//   CPU adapters (lavapipe), where every storage load is a per-lane scalar loop, this cuts loads
//   per FMA several times over the tiled kernel.
// - matvec (MATVEC, for m = MR <= 8 rows): lanes split k, each subgroup (or, without
//   subgroups, the workgroup) owns NR output columns, and partial sums meet in a reduction.
//
// VEC4 (k % 4 == 0) reads A and B as vec4 arrays; otherwise four bounds-checked scalar loads.
#include "common.wgsl"

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if VEC4
@group(0) @binding(1) var<storage, read> a: array<vec4<TA>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<TB>>;
#else
@group(0) @binding(1) var<storage, read> a: array<TA>;
@group(0) @binding(2) var<storage, read> b: array<TB>;
#endif
@group(0) @binding(3) var<storage, read_write> c: array<TC>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<TB>;
#endif

// Elements 4*k4 .. 4*k4+3 of row `row` of A in batch `bt`, zero past k.
fn load_a(bt: u32, row: u32, k4: u32) -> vec4<f32> {
#if VEC4
    return vec4<f32>(a[(bt * p.a_batch + row * p.k) / 4u + k4]);
#else
    let base = bt * p.a_batch + row * p.k;
    let k = 4u * k4;
    var v = vec4<f32>(0.0);
    if (k < p.k) { v.x = f32(a[base + k]); }
    if (k + 1u < p.k) { v.y = f32(a[base + k + 1u]); }
    if (k + 2u < p.k) { v.z = f32(a[base + k + 2u]); }
    if (k + 3u < p.k) { v.w = f32(a[base + k + 3u]); }
    return v;
#endif
}

// Elements 4*k4 .. 4*k4+3 of row `row` of B in batch `bt`, zero past k.
fn load_b(bt: u32, row: u32, k4: u32) -> vec4<f32> {
#if VEC4
    return vec4<f32>(b[(bt * p.b_batch + row * p.k) / 4u + k4]);
#else
    let base = bt * p.b_batch + row * p.k;
    let k = 4u * k4;
    var v = vec4<f32>(0.0);
    if (k < p.k) { v.x = f32(b[base + k]); }
    if (k + 1u < p.k) { v.y = f32(b[base + k + 1u]); }
    if (k + 2u < p.k) { v.z = f32(b[base + k + 2u]); }
    if (k + 3u < p.k) { v.w = f32(b[base + k + 3u]); }
    return v;
#endif
}

fn store_c(bt: u32, row: u32, col: u32, v: f32) {
    if (row < p.m && col < p.n) {
#if BIAS
        let r = v + f32(bias[col]);
#else
        let r = v;
#endif
        c[bt * p.c_batch + row * p.n + col] = TC(r);
    }
}

#if TILED
// Threads WGX x WGY; tile BM = TM * WGY rows by BN = TN * WGX columns; BK4 vec4s of k per slice.
const WGX: u32 = BN / TN;
const WGY: u32 = BM / TM;
var<workgroup> tile_a: array<vec4<f32>, BK4 * BM>;
var<workgroup> tile_b: array<vec4<f32>, BK4 * BN>;

@compute @workgroup_size(WGX, WGY)
fn matmul_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bt = wg.z;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let tid = lid.y * WGX + lid.x;
    let k4n = (p.k + 3u) / 4u;
    var acc = array<array<f32, TN>, TM>();
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var kt = 0u; kt < k4n; kt += BK4) {
        // Stage the A and B slices; out-of-range rows are clamped (their results are never
        // stored) and out-of-range k reads as zero.
        for (var e = tid; e < BK4 * BM; e += WGX * WGY) {
            let r = e / BK4;
            let kk = e % BK4;
            var v = vec4<f32>(0.0);
            if (kt + kk < k4n) {
                v = load_a(bt, min(m0 + r, p.m - 1u), kt + kk);
            }
            tile_a[kk * BM + r] = v;
        }
        for (var e = tid; e < BK4 * BN; e += WGX * WGY) {
            let r = e / BK4;
            let kk = e % BK4;
            var v = vec4<f32>(0.0);
            if (kt + kk < k4n) {
                v = load_b(bt, min(n0 + r, p.n - 1u), kt + kk);
            }
            tile_b[kk * BN + r] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK4; kk++) {
            var bv = array<vec4<f32>, TN>();
            for (var j = 0u; j < TN; j++) {
                bv[j] = tile_b[kk * BN + lid.x + j * WGX];
            }
            for (var i = 0u; i < TM; i++) {
                let av = tile_a[kk * BM + lid.y + i * WGY];
                for (var j = 0u; j < TN; j++) {
                    acc[i][j] += dot(av, bv[j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            store_c(bt, m0 + lid.y + i * WGY, n0 + lid.x + j * WGX, acc[i][j]);
        }
    }
}
#endif

#if SUBGROUP_MM
// One k4 step of matmul_subgroup: rows of A arrive by shuffle, four columns of B are loaded
// and transposed so that each row's four outputs update as one vec4.
fn subgroup_step(acc: ptr<function, array<vec4<f32>, SG * RB>>, bt: u32, cols: vec4<u32>,
                 rows: array<u32, RB>, k4: u32) {
    let b0 = load_b(bt, cols.x, k4);
    let b1 = load_b(bt, cols.y, k4);
    let b2 = load_b(bt, cols.z, k4);
    let b3 = load_b(bt, cols.w, k4);
    let tx = vec4<f32>(b0.x, b1.x, b2.x, b3.x);
    let ty = vec4<f32>(b0.y, b1.y, b2.y, b3.y);
    let tz = vec4<f32>(b0.z, b1.z, b2.z, b3.z);
    let tw = vec4<f32>(b0.w, b1.w, b2.w, b3.w);
    for (var r = 0u; r < RB; r++) {
        let mine = load_a(bt, rows[r], k4);
        for (var i = 0u; i < SG; i++) {
            let av = subgroupShuffle(mine, i);
            (*acc)[r * SG + i] = fma(vec4<f32>(av.x), tx, fma(vec4<f32>(av.y), ty,
                fma(vec4<f32>(av.z), tz, fma(vec4<f32>(av.w), tw, (*acc)[r * SG + i]))));
        }
    }
}

// Workgroup of WG lanes: all share rows m0 .. m0 + SG*RB; lane li owns the four columns
// n0 .. n0 + 3, held as one vec4 accumulator per row (B's 4x4 block is transposed in registers).
@compute @workgroup_size(WG)
fn matmul_subgroup(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let bt = wg.z;
    let m0 = wg.y * (SG * RB);
    let n0 = (wg.x * WG + li) * 4u;
    let k4n = (p.k + 3u) / 4u;
    var acc = array<vec4<f32>, SG * RB>();
    for (var i = 0u; i < SG * RB; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let c0 = min(n0, p.n - 1u);
    let c1 = min(n0 + 1u, p.n - 1u);
    let c2 = min(n0 + 2u, p.n - 1u);
    let c3 = min(n0 + 3u, p.n - 1u);
    var rows = array<u32, RB>();
    for (var r = 0u; r < RB; r++) {
        rows[r] = min(m0 + r * SG + lane, p.m - 1u);
    }
    // Two k steps per trip halve the loop overhead, which dominates on CPU adapters.
    var k4 = 0u;
    for (; k4 + 1u < k4n; k4 += 2u) {
        subgroup_step(&acc, bt, vec4<u32>(c0, c1, c2, c3), rows, k4);
        subgroup_step(&acc, bt, vec4<u32>(c0, c1, c2, c3), rows, k4 + 1u);
    }
    if (k4 < k4n) {
        subgroup_step(&acc, bt, vec4<u32>(c0, c1, c2, c3), rows, k4);
    }
    // The bias is read once per column, and the stores are unrolled in the source: a loop
    // whose body also reads the bias kept LLVM (lavapipe) from holding acc in registers, and the
    // whole kernel ran at 40% of its speed (15 against 36 GFLOP/s at 1024x3072x768).
#if BIAS
    let bv = vec4<f32>(f32(bias[c0]), f32(bias[c1]), f32(bias[c2]), f32(bias[c3]));
#else
    let bv = vec4<f32>(0.0);
#endif
#for I in 0..SG * RB
    store_row4(bt, m0 + I, n0, acc[I] + bv);
#endfor
}

// Four consecutive outputs of one row, each within the matrix (no bias: already added).
fn store_row4(bt: u32, row: u32, col: u32, v: vec4<f32>) {
    if (row < p.m) {
        let base = bt * p.c_batch + row * p.n + col;
        if (col < p.n) { c[base] = TC(v.x); }
        if (col + 1u < p.n) { c[base + 1u] = TC(v.y); }
        if (col + 2u < p.n) { c[base + 2u] = TC(v.z); }
        if (col + 3u < p.n) { c[base + 3u] = TC(v.w); }
    }
}
#endif

#if MATVEC
#if SUBGROUPS
// Each subgroup owns NR consecutive columns; its lanes stride over k.
@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) nsg: u32,
          @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgsize: u32) {
    let bt = wg.z;
    let n0 = ((wg.x + wg.y * nwg.x) * nsg + sg) * NR;
    let k4n = (p.k + 3u) / 4u;
    var acc = array<array<f32, NR>, MR>();
    for (var r = 0u; r < MR; r++) {
        for (var j = 0u; j < NR; j++) {
            acc[r][j] = 0.0;
        }
    }
    for (var k4 = lane; k4 < k4n; k4 += sgsize) {
        var av = array<vec4<f32>, MR>();
        for (var r = 0u; r < MR; r++) {
            av[r] = load_a(bt, r, k4);
        }
        for (var j = 0u; j < NR; j++) {
            let bv = load_b(bt, min(n0 + j, p.n - 1u), k4);
            for (var r = 0u; r < MR; r++) {
                acc[r][j] += dot(av[r], bv);
            }
        }
    }
    for (var r = 0u; r < MR; r++) {
        for (var j = 0u; j < NR; j++) {
            let s = subgroupAdd(acc[r][j]);
            if (lane == 0u) {
                store_c(bt, r, n0 + j, s);
            }
        }
    }
}
#else
// Without subgroups the whole workgroup owns NR columns and reduces through workgroup memory.
var<workgroup> partial: array<f32, MR * NR * WG>;

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bt = wg.z;
    let n0 = (wg.x + wg.y * nwg.x) * NR;
    let k4n = (p.k + 3u) / 4u;
    var acc = array<array<f32, NR>, MR>();
    for (var r = 0u; r < MR; r++) {
        for (var j = 0u; j < NR; j++) {
            acc[r][j] = 0.0;
        }
    }
    for (var k4 = li; k4 < k4n; k4 += WG) {
        var av = array<vec4<f32>, MR>();
        for (var r = 0u; r < MR; r++) {
            av[r] = load_a(bt, r, k4);
        }
        for (var j = 0u; j < NR; j++) {
            let bv = load_b(bt, min(n0 + j, p.n - 1u), k4);
            for (var r = 0u; r < MR; r++) {
                acc[r][j] += dot(av[r], bv);
            }
        }
    }
    for (var r = 0u; r < MR; r++) {
        for (var j = 0u; j < NR; j++) {
            partial[(r * NR + j) * WG + li] = acc[r][j];
        }
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            for (var q = 0u; q < MR * NR; q++) {
                partial[q * WG + li] += partial[q * WG + li + s];
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        for (var r = 0u; r < MR; r++) {
            for (var j = 0u; j < NR; j++) {
                store_c(bt, r, n0 + j, partial[(r * NR + j) * WG]);
            }
        }
    }
}
#endif
#endif
