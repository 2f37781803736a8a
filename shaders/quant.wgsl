// Matmul and embedding gather against block-quantized weights in flint's GPU layout:
// C[m, n] = sum_k A[m, k] W[n, k], A and C f32, W made at load from a GGUF tensor
// (FMT: 0 q8_0, 1 q4_0, 2 q4_1, 3 q5_0, 4 q4_k, 5 q6_k, 6 q5_k; see quant/layout.rs).
//
// The layout keeps a GGUF block's parts apart, each row-major, in one buffer of vec4<u32>:
// - quants: QV vec4 per block, 16-byte aligned, each 32-value sub-block's low nibbles in one
//   vec4 (byte i: value i low, value i + 16 high; q8_0: two vec4 of bytes);
// - meta: MB bytes per block (f16 scales; the k-quants' 16-byte scale header), rows padded to 16;
// - aux: XB bytes per block (q5_0's high bits, q6_k's f32 scale), rows padded to 16.
// Every load is a whole vec4; a block's meta comes from the vec4 holding it, shared by the G
// blocks (BLOCKS_PER_VEC) it covers. Weights decode 32 values (8 vec4) at a time (sub32).
//
// - matvec_rows (MR <= 8 rows of A): lanes own NR whole weight rows and walk them G blocks per
//   trip, loading each meta vec4 once; the activations come through a uniform binding where
//   they fit (XUBO: on CPU adapters all lanes read the same constant address outside control
//   flow, a scalar load there). The decode path on CPU adapters.
// - matvec_q (MR <= 8): each subgroup (or, without subgroups, the workgroup) owns NR output
//   columns; lanes stride over 32-value sub-blocks, so neighbouring lanes read neighbouring
//   vec4s, and meet in subgroupAdd. The decode path on GPUs.
// - matmul_q (SUBGROUPS): lane l of a subgroup loads row m0 + l of A; subgroupBroadcast hands
//   each row to every lane, and each lane dequantizes four weight rows, so one weight load
//   serves SG * RB rows of A. The prefill path.
// - matmul_t (no subgroups): the workgroup stages TM rows of A in workgroup memory, ST sub-blocks
//   at a time; each lane dequantizes four weight rows a sub-block at a time and multiplies them
//   with every staged row, so one weight load serves TM rows of A, as in matmul_q. The prefill
//   path where the adapter has no subgroups (WebGPU on SwiftShader, Firefox, Safari; GL).
//
// TOP (both matvecs): the output head of a greedy decode step. Each workgroup writes, per row of
// A, not its logits but one entry for its tile of weight rows: the tile's largest logit, the
// lowest row holding it and the sum of exp(logit - largest) (sample.wgsl's sample_tiles merges
// the tiles into the pick and its log-probability).
#include "common.wgsl"

// A weight matrix larger than one binding comes in parts of whole rows: this dispatch sees rows
// n_off .. n_off + n of the whole, written to columns n_off.. of C (row stride ldc). Region
// offsets and row strides are in vec4s.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldc: u32,
    n_off: u32,
    meta_off: u32,
    aux_off: u32,
    qstride: u32,
    mstride: u32,
    astride: u32,
    scale: f32,
    eps: f32,
#if ROPE_KV
    heads: u32,
    kv_heads: u32,
    d: u32,
    page_size: u32,
    max_pages: u32,
    log2_theta: f32,
    freq_scale: f32,
    // Row of the step that row 0 of A is (its RoPE position and destination).
    row0: u32,
#endif
#if TOP
    // Tile of the whole weight that this part's first workgroup writes, and the part's tiles.
    tile0: u32,
    tiles: u32,
#endif
}

@group(0) @binding(0) var<uniform> p: Params;
#if EMBED
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#if SLOTS
// Token t's id is ids[slots[t]]: the decode step's ids stay where the sampler wrote them.
@group(0) @binding(4) var<storage, read> slots: array<u32>;
#endif
#elif XUBO
// A uniform binding: on CPU adapters a load every lane makes at the same address is a scalar load
// and a broadcast there, where a storage load is a loop over the lanes. XN = MR * k / 4, and
// XROW = k / 4.
@group(0) @binding(1) var<uniform> a: array<vec4<f32>, XN>;
#else
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#endif
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
#if NORM
// NORM: A's rows go through RMSNorm (weights norm_w, p.eps) on their way in, the norm of the
// dispatch before folded into this one.
#if XUBO
@group(0) @binding(4) var<uniform> norm_w: array<vec4<f32>, XROW>;
#else
@group(0) @binding(4) var<storage, read> norm_w: array<vec4<f32>>;
#endif
#endif

#if ROPE_KV
// ROPE_KV: the QKV projection of a decode step with what follows it folded in. Weight rows are
// [q heads | k heads | v heads], D each, pairs (2i, 2i + 1) rotated (the pairing of GGUF's
// Llama); Q heads are rotated into C [m, heads * d], K heads rotated and V heads copied into the
// paged cache at row r's destination (table row, position) -- rope.wgsl's rope_qkv, the same
// arithmetic, without its dispatch.
@group(0) @binding(5) var<storage, read> qpos: array<u32>;
@group(0) @binding(6) var<storage, read> dest: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read> pages: array<u32>;
@group(0) @binding(8) var<storage, read_write> k_pool: array<TKV>;
@group(0) @binding(9) var<storage, read_write> v_pool: array<TKV>;
#endif

// Per format (preprocessor values, so #for and #if see them): BE values per block, QV quant
// vec4s per block, SUBS 32-value sub-blocks per block, MB meta and XB aux bytes per block, G blocks per trip of matvec_rows (the
// blocks one meta vec4 and one aux vec4 both cover).
#if FMT == 0
#define BE 32
#define SUBS 1
#define QV 2
#define MB 2
#define XB 0
#define G 8
#elif FMT == 1
#define BE 32
#define SUBS 1
#define QV 1
#define MB 2
#define XB 0
#define G 8
#elif FMT == 2
#define BE 32
#define SUBS 1
#define QV 1
#define MB 4
#define XB 0
#define G 4
#elif FMT == 3
#define BE 32
#define SUBS 1
#define QV 1
#define MB 2
#define XB 4
#define G 4
#elif FMT == 4
#define BE 256
#define SUBS 8
#define QV 8
#define MB 16
#define XB 0
#define G 1
#elif FMT == 5
#define BE 256
#define SUBS 8
#define QV 12
#define MB 16
#define XB 4
#define G 1
#elif FMT == 6
#define BE 256
#define SUBS 8
#define QV 10
#define MB 16
#define XB 0
#define G 1
#endif

const BYTE_SHIFTS: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

// The vec4 of meta (and of aux) that holds block b's of weight row `row`.
fn meta_vec(row: u32, b: u32) -> vec4<u32> {
    return w[p.meta_off + row * p.mstride + (b * MB) / 16u];
}

fn aux_vec(row: u32, b: u32) -> vec4<u32> {
#if XB > 0
    return w[p.aux_off + row * p.astride + (b * XB) / 16u];
#else
    return vec4<u32>(0u);
#endif
}

// Half `i` (0..7) of a vec4, as f32.
fn half_of(v: vec4<u32>, i: u32) -> f32 {
    let pair = unpack2x16float(v[i / 2u]);
    return select(pair.x, pair.y, (i & 1u) != 0u);
}

// Four bytes of a word as signed values.
fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v)) >> vec4<u32>(24u));
}

// Low and high nibbles of the four bytes of a word.
fn lo4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> BYTE_SHIFTS) & vec4<u32>(15u);
}

fn hi4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> (BYTE_SHIFTS + vec4<u32>(4u))) & vec4<u32>(15u);
}

// Byte `i` of a vec4 (0..15).
fn byte16(v: vec4<u32>, i: u32) -> u32 {
    return (v[i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// The k-quants' 6-bit scale and min of sub-block j from the 12 scale bytes in m.yzw.
fn scale_min_k4(m: vec4<u32>, j: u32) -> vec2<f32> {
    let sc = vec4<u32>(m.y, m.z, m.w, 0u);
    var s = u32();
    var mn = u32();
    if (j < 4u) {
        s = byte16(sc, j) & 63u;
        mn = byte16(sc, j + 4u) & 63u;
    } else {
        s = (byte16(sc, j + 4u) & 15u) | ((byte16(sc, j - 4u) >> 6u) << 4u);
        mn = (byte16(sc, j + 4u) >> 4u) | ((byte16(sc, j) >> 6u) << 4u);
    }
    let dd = unpack2x16float(m.x);
    return vec2<f32>(dd.x * f32(s), dd.y * f32(mn));
}

// Sub-block s of block b of weight row `row`, dequantized: values 32 s .. 32 s + 31 of the
// block. mv and av are the meta and aux vec4s holding the block's (meta_vec, aux_vec).
fn sub32(row: u32, b: u32, s: u32, mv: vec4<u32>, av: vec4<u32>) -> array<vec4<f32>, 8> {
    var out = array<vec4<f32>, 8>();
    let qb = row * p.qstride + b * QV;
#if FMT == 0
    let d = half_of(mv, b % 8u);
    let q0 = w[qb];
    let q1 = w[qb + 1u];
#for J in 0..4
    out[J] = i8x4(q0[J]) * d;
    out[J + 4] = i8x4(q1[J]) * d;
#endfor
#elif FMT == 1 || FMT == 2
#if FMT == 1
    let d = half_of(mv, b % 8u);
    let mn = -8.0 * d;
#else
    let dm = unpack2x16float(mv[b % 4u]);
    let d = dm.x;
    let mn = dm.y;
#endif
    let q = w[qb];
#for J in 0..4
    out[J] = vec4<f32>(lo4(q[J])) * d + mn;
    out[J + 4] = vec4<f32>(hi4(q[J])) * d + mn;
#endfor
#elif FMT == 3
    let d = half_of(mv, b % 8u);
    let qh = av[b % 4u];
    let q = w[qb];
#for J in 0..4
    {
        let bits = vec4<u32>(4u * J, 4u * J + 1u, 4u * J + 2u, 4u * J + 3u);
        let h0 = ((vec4<u32>(qh) >> bits) & vec4<u32>(1u)) << vec4<u32>(4u);
        let h1 = ((vec4<u32>(qh) >> (bits + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u);
        out[J] = (vec4<f32>(lo4(q[J]) | h0) - 16.0) * d;
        out[J + 4] = (vec4<f32>(hi4(q[J]) | h1) - 16.0) * d;
    }
#endfor
#elif FMT == 4 || FMT == 6
    let sm = scale_min_k4(mv, s);
    let q = w[qb + s];
#if FMT == 6
    let qh = w[qb + 8u + s / 4u][s % 4u];
#endif
#for J in 0..4
    {
#if FMT == 6
        let bits = vec4<u32>(4u * J, 4u * J + 1u, 4u * J + 2u, 4u * J + 3u);
        let h0 = ((vec4<u32>(qh) >> bits) & vec4<u32>(1u)) << vec4<u32>(4u);
        let h1 = ((vec4<u32>(qh) >> (bits + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u);
        out[J] = vec4<f32>(lo4(q[J]) | h0) * sm.x - sm.y;
        out[J + 4] = vec4<f32>(hi4(q[J]) | h1) * sm.x - sm.y;
#else
        out[J] = vec4<f32>(lo4(q[J])) * sm.x - sm.y;
        out[J + 4] = vec4<f32>(hi4(q[J])) * sm.x - sm.y;
#endif
    }
#endfor
#elif FMT == 5
    let d = bitcast<f32>(av[b % 4u]);
    let s_lo = d * f32(bitcast<i32>(byte16(mv, 2u * s) << 24u) >> 24u);
    let s_hi = d * f32(bitcast<i32>(byte16(mv, 2u * s + 1u) << 24u) >> 24u);
    let q = w[qb + s];
    let hv = w[qb + 8u + s / 2u];
    let hw0 = select(hv.x, hv.z, (s & 1u) != 0u);
    let hw1 = select(hv.y, hv.w, (s & 1u) != 0u);
#for J in 0..4
    {
        let sh = vec4<u32>(8u * J, 8u * J + 2u, 8u * J + 4u, 8u * J + 6u);
        let h0 = ((vec4<u32>(hw0) >> sh) & vec4<u32>(3u)) << vec4<u32>(4u);
        let h1 = ((vec4<u32>(hw1) >> sh) & vec4<u32>(3u)) << vec4<u32>(4u);
        out[J] = (vec4<f32>(lo4(q[J]) | h0) - 32.0) * s_lo;
        out[J + 4] = (vec4<f32>(hi4(q[J]) | h1) - 32.0) * s_hi;
    }
#endfor
#endif
    return out;
}

// Sub-block s of block b of row `row`, loading its meta and aux.
fn sub32_at(row: u32, b: u32, s: u32) -> array<vec4<f32>, 8> {
    return sub32(row, b, s, meta_vec(row, b), aux_vec(row, b));
}

#if MATVEC || MATVEC_ROWS
// The 32 activations of row r of A from k position kk.
fn act32(r: u32, kk: u32) -> array<vec4<f32>, 8> {
    var x = array<vec4<f32>, 8>();
    let base = (r * p.k + kk) / 4u;
#for I in 0..8
    x[I] = a[base + I];
#endfor
    return x;
}

fn dot32(x: array<vec4<f32>, 8>, wv: array<vec4<f32>, 8>) -> f32 {
    return dot(x[0], wv[0]) + dot(x[1], wv[1]) + dot(x[2], wv[2]) + dot(x[3], wv[3])
        + dot(x[4], wv[4]) + dot(x[5], wv[5]) + dot(x[6], wv[6]) + dot(x[7], wv[7]);
}

// Row r of A's result for weight row `row` of this part, through the epilogue: RESIDUAL adds
// it to what C holds (the residual stream, the add of the dispatch after folded in).
fn store(r: u32, row: u32, v: f32) {
    let i = r * p.ldc + p.n_off + row;
#if RESIDUAL
    c[i] = c[i] + v;
#else
    c[i] = v;
#endif
}

#if GLU
// GLU: weight rows 2j and 2j + 1 are gate j and up j (interleaved at load), and C takes
// act(gate) * up at column j (GELU = 1: GELU with the tanh form, else SiLU).
fn store_pair(r: u32, row0: u32, g: f32, u: f32) {
#if GELU
    let e = exp(-2.0 * abs(0.79788456080286536 * (g + 0.044715 * g * g * g)));
    let t = sign(0.79788456080286536 * (g + 0.044715 * g * g * g)) * (1.0 - e) / (1.0 + e);
    let a = 0.5 * g * (1.0 + t);
#else
    let a = g / (1.0 + exp(-g));
#endif
    c[r * p.ldc + (p.n_off + row0) / 2u] = a * u;
}
#endif

#if ROPE_KV
// Weight rows row0 (even) and row0 + 1 of this part, one RoPE pair, for row r of A.
fn store_pair(r: u32, row0: u32, v0: f32, v1: f32) {
    let row = p.n_off + row0;
    let slot = row / p.d;
    let i0 = row % p.d;
    if (slot < p.heads) {
        let y = rotate(r, i0, v0, v1);
        c[r * p.ldc + row] = y.x;
        c[r * p.ldc + row + 1u] = y.y;
        return;
    }
    let dst = dest[r + p.row0];
    let page = pages[dst.x * p.max_pages + dst.y / p.page_size];
    let cache_row = (page * p.page_size + dst.y % p.page_size) * p.kv_heads;
    if (slot < p.heads + p.kv_heads) {
        let y = rotate(r, i0, v0, v1);
        let e = (cache_row + slot - p.heads) * p.d + i0;
        k_pool[e] = TKV(y.x);
        k_pool[e + 1u] = TKV(y.y);
    } else {
        let e = (cache_row + slot - p.heads - p.kv_heads) * p.d + i0;
        v_pool[e] = TKV(v0);
        v_pool[e + 1u] = TKV(v1);
    }
}

// Pair i0 / 2 of a head rotated by row r's position.
fn rotate(r: u32, i0: u32, x0: f32, x1: f32) -> vec2<f32> {
    let position = f32(qpos[r + p.row0]) * p.freq_scale;
    let angle = position * exp2(-2.0 * f32(i0 / 2u) / f32(p.d) * p.log2_theta);
    let cs = cos(angle);
    let sn = sin(angle);
    return vec2<f32>(x0 * cs - x1 * sn, x1 * cs + x0 * sn);
}
#endif

#if TOP
// Per lane (or subgroup) and row of A: the largest logit of its rows, its row, and the sum of
// exp(logit - largest); folded over the workgroup into the tile's entry.
var<workgroup> top: array<ArgmaxSum, MR * WG>;
const TOP_LOW: f32 = -3.4e38;

// Slot `slot` of row r of A (index r * WG + slot) from a lane's `NR` results `v` (weight rows
// n0.., valid while below p.n).
fn top_lane(r: u32, slot: u32, n0: u32, v: array<f32, NR>) {
    // No valid row: an entry every real one beats (row 0, as the sampler's argmax of a row
    // with no finite logit).
    var m = TOP_LOW;
    var mi = 0u;
#for J in 0..NR
    if (n0 + J < p.n && v[J] > m) {
        m = v[J];
        mi = p.n_off + n0 + J;
    }
#endfor
    var s = 0.0;
#for J in 0..NR
    if (n0 + J < p.n) {
        s += exp(v[J] - m);
    }
#endfor
    top[r * WG + slot] = ArgmaxSum(m, mi, s);
}

// Reduce the first `slots` (a power of two) slots of each row and write tile `tile` of every row
// of A: (max, f32(row), sum, 0) at c[r * p.ldc + 4 * (p.tile0 + tile)]. Called by every lane.
// Every tile of the part is written, by the workgroup of its index: where the adapter's subgroups
// are narrower than the widest it reports, matvec_q's workgroups cover more rows than the host
// counted, and the workgroups past the rows write entries that add nothing.
fn top_write(li: u32, tile: u32, slots: u32) {
    workgroupBarrier();
    for (var h = slots / 2u; h > 0u; h = h / 2u) {
        if (li < h) {
            for (var r = 0u; r < MR; r++) {
                let j = r * WG + li;
                top[j] = argmax_sum_fold(top[j], top[j + h]);
            }
        }
        workgroupBarrier();
    }
    if (li < MR && tile < p.tiles) {
        let e = li * p.ldc + 4u * (p.tile0 + tile);
        let t = top[li * WG];
        c[e] = t.m;
        c[e + 1u] = f32(t.i);
        c[e + 2u] = t.s;
        c[e + 3u] = 0.0;
    }
}
#endif

#if NORM
// Sum of squares of row r of A over the lanes' share of it (from `first`, every `stride` vec4s).
fn sumsq(r: u32, first: u32, stride: u32) -> f32 {
    var q = vec4<f32>(0.0);
    for (var i = first; i < p.k / 4u; i += stride) {
        let v = a[r * (p.k / 4u) + i];
        q = fma(v, v, q);
    }
    return q.x + q.y + q.z + q.w;
}
#endif
#endif

#if MATVEC
#if !SUBGROUPS
var<workgroup> partial: array<f32, MR * NR * WG>;
#endif
#if NORM && !SUBGROUPS
var<workgroup> norm_part: array<f32, WG>;
#endif

@compute @workgroup_size(WG)
fn matvec_q(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
#if SUBGROUPS
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sgsize: u32,
#endif
) {
#if SUBGROUPS
    let n0 = ((wg.x + wg.y * nwg.x) * nsg + sg) * NR;
    let first = lane;
    let stride = sgsize;
#else
    let n0 = (wg.x + wg.y * nwg.x) * NR;
    let first = li;
    let stride = u32(WG);
#endif
    let nsub = p.k / 32u;
#if NORM
    var rstd = array<f32, MR>();
#for R in 0..MR
    {
#if SUBGROUPS
        let q = subgroupAdd(sumsq(R, first, stride));
#else
        norm_part[li] = sumsq(R, first, stride);
        workgroupBarrier();
        for (var h = WG / 2u; h > 0u; h = h / 2u) {
            if (li < h) {
                norm_part[li] += norm_part[li + h];
            }
            workgroupBarrier();
        }
        let q = workgroupUniformLoad(&norm_part[0]);
#endif
        rstd[R] = inverseSqrt(q / f32(p.k) + p.eps);
    }
#endfor
#endif
    var acc = array<array<f32, NR>, MR>();
    var rows = array<u32, NR>();
#for J in 0..NR
    rows[J] = min(n0 + J, p.n - 1u);
#endfor
    for (var i = first; i < nsub; i += stride) {
        let b = i / SUBS;
        let s = i % SUBS;
        var x = array<array<vec4<f32>, 8>, MR>();
#for R in 0..MR
        x[R] = act32(R, i * 32u);
#if NORM
#for I in 0..8
        x[R][I] *= rstd[R] * norm_w[i * 8u + I];
#endfor
#endif
#endfor
#for J in 0..NR
        {
            let wv = sub32_at(rows[J], b, s);
#for R in 0..MR
            acc[R][J] += dot32(x[R], wv);
#endfor
        }
#endfor
    }
    var sums = array<array<f32, NR>, MR>();
#if SUBGROUPS
#for R in 0..MR
#for J in 0..NR
    sums[R][J] = subgroupAdd(acc[R][J]);
#endfor
#endfor
    let leader = lane == 0u;
#else
#for R in 0..MR
#for J in 0..NR
    partial[(R * NR + J) * WG + li] = acc[R][J];
#endfor
#endfor
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (li < s) {
            for (var q = 0u; q < MR * NR; q++) {
                partial[q * WG + li] += partial[q * WG + li + s];
            }
        }
        workgroupBarrier();
    }
#for R in 0..MR
#for J in 0..NR
    sums[R][J] = partial[(R * NR + J) * WG];
#endfor
#endfor
    let leader = li == 0u;
#endif
#if TOP
    // The tile is the workgroup's rows: each leader fills the slot of its subgroup.
    let tile = wg.x + wg.y * nwg.x;
#if SUBGROUPS
    let slot = sg;
    let slots = nsg;
#else
    let slot = 0u;
    let slots = 1u;
#endif
    if (leader) {
#for R in 0..MR
        {
            var v = array<f32, NR>();
#for J in 0..NR
            v[J] = sums[R][J];
#endfor
            top_lane(R, slot, n0, v);
        }
#endfor
    }
    top_write(li, tile, slots);
#else
    if (leader) {
#for R in 0..MR
#if GLU || ROPE_KV
#for P in 0..NR / 2
        if (n0 + 2 * P + 1 < p.n) {
            store_pair(R, n0 + 2 * P, sums[R][2 * P], sums[R][2 * P + 1]);
        }
#endfor
#else
#for J in 0..NR
        if (n0 + J < p.n) {
            store(R, n0 + J, sums[R][J]);
        }
#endfor
#endif
#endfor
    }
#endif
}
#endif

#if MATVEC_ROWS
// vec4s per row of A (XROW): a constant with the uniform binding, so that with the row length
// compiled in every activation index is a constant.
#if !XUBO
#define XROW (p.k / 4u)
#endif

// Add sub-block s of block b (meta and aux vec4s given per weight row) times the activations
// into acc. Values are decoded four at a time and used at once (a whole sub-block in registers
// is 32 vector registers per lane on CPU adapters, which spill).
fn rows_step(acc: ptr<function, array<array<f32, NR>, MR>>, rows: array<u32, NR>, mv: array<vec4<u32>, NR>,
             av: array<vec4<u32>, NR>, rstd: array<f32, MR>, b: u32, s: u32) {
    let xb = (b * BE + s * 32u) / 4u;
    // The sub-block's activations, loaded once for the NR weight rows.
    var x = array<array<vec4<f32>, 8>, MR>();
#for R in 0..MR
#for I in 0..8
#if NORM
    x[R][I] = a[R * XROW + xb + I] * (rstd[R] * norm_w[xb + I]);
#else
    x[R][I] = a[R * XROW + xb + I];
#endif
#endfor
#endfor

    // Each row's sum of the sub-block's activations, per half.
    var xsum = array<vec2<f32>, MR>();
#for R in 0..MR
    {
        let lo = x[R][0] + x[R][1] + x[R][2] + x[R][3];
        let hi = x[R][4] + x[R][5] + x[R][6] + x[R][7];
        xsum[R] = vec2<f32>(lo.x + lo.y + lo.z + lo.w, hi.x + hi.y + hi.z + hi.w);
    }
#endfor
#for J in 0..NR
    {
        let m = mv[J];
        let qb = rows[J] * p.qstride + b * QV;
#if FMT == 0
        let d = half_of(m, b % 8u);
        let q = w[qb];
        let qhi = w[qb + 1u];
        let sl = d;
        let ol = 0.0;
        let sh = d;
        let oh = 0.0;
#elif FMT == 1
        let d = half_of(m, b % 8u);
        let q = w[qb];
        let sl = d;
        let ol = -8.0 * d;
        let sh = sl;
        let oh = ol;
#elif FMT == 2
        let dm = unpack2x16float(m[b % 4u]);
        let q = w[qb];
        let sl = dm.x;
        let ol = dm.y;
        let sh = sl;
        let oh = ol;
#elif FMT == 3
        let d = half_of(m, b % 8u);
        let qh = av[J][b % 4u];
        let q = w[qb];
        let sl = d;
        let ol = -16.0 * d;
        let sh = sl;
        let oh = ol;
#elif FMT == 4 || FMT == 6
        let sm = scale_min_k4(m, s);
        let q = w[qb + s];
#if FMT == 6
        let qh = w[qb + 8u + s / 4u][s % 4u];
#endif
        let sl = sm.x;
        let ol = -sm.y;
        let sh = sl;
        let oh = ol;
#elif FMT == 5
        let d = bitcast<f32>(av[J][b % 4u]);
        let sl = d * f32(bitcast<i32>(byte16(m, 2u * s) << 24u) >> 24u);
        let sh = d * f32(bitcast<i32>(byte16(m, 2u * s + 1u) << 24u) >> 24u);
        let ol = -32.0 * sl;
        let oh = -32.0 * sh;
        let q = w[qb + s];
        let hv = w[qb + 8u + s / 2u];
        let hw0 = select(hv.x, hv.z, (s & 1u) != 0u);
        let hw1 = select(hv.y, hv.w, (s & 1u) != 0u);
#endif
        // Each half of the sub-block is scale * codes + offset, so its product with x is
        // scale * (codes . x) + offset * sum(x): the codes meet the activations unscaled and the
        // scales come in once per half. The same operations for any number of rows of A, so that
        // a row's result does not depend on the rows decoded with it (batch-invariant steps).
        var dl = array<f32, MR>();
        var dh = array<f32, MR>();
#for W in 0..4
        {
#if FMT == 0
            let cl = i8x4(q[W]);
            let ch = i8x4(qhi[W]);
#elif FMT == 3 || FMT == 6
            let bits = vec4<u32>(4u * W, 4u * W + 1u, 4u * W + 2u, 4u * W + 3u);
            let cl = vec4<f32>(lo4(q[W]) | (((vec4<u32>(qh) >> bits) & vec4<u32>(1u)) << vec4<u32>(4u)));
            let ch = vec4<f32>(hi4(q[W]) | (((vec4<u32>(qh) >> (bits + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u)));
#elif FMT == 5
            let sh2 = vec4<u32>(8u * W, 8u * W + 2u, 8u * W + 4u, 8u * W + 6u);
            let cl = vec4<f32>(lo4(q[W]) | (((vec4<u32>(hw0) >> sh2) & vec4<u32>(3u)) << vec4<u32>(4u)));
            let ch = vec4<f32>(hi4(q[W]) | (((vec4<u32>(hw1) >> sh2) & vec4<u32>(3u)) << vec4<u32>(4u)));
#else
            let cl = vec4<f32>(lo4(q[W]));
            let ch = vec4<f32>(hi4(q[W]));
#endif
#for R in 0..MR
            dl[R] += dot(cl, x[R][W]);
            dh[R] += dot(ch, x[R][W + 4]);
#endfor
        }
#endfor
#for R in 0..MR
        (*acc)[R][J] += fma(sl, dl[R], ol * xsum[R].x) + fma(sh, dh[R], oh * xsum[R].y);
#endfor
    }
#endfor
}

// Matvec with lanes over output columns: each invocation owns NR whole weight rows and walks
// their blocks, G at a time (the blocks one meta vec4 covers), so every lane is busy whatever k
// is and no reduction is needed. Picked on CPU adapters, where a load costs the same whichever
// lanes share its address; GPUs prefer matvec_q's coalesced reads.
@compute @workgroup_size(WG)
fn matvec_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let n0 = ((wg.x + wg.y * nwg.x) * WG + li) * NR;
    // No early return for lanes past the last row: they run on clamped rows and store nothing.
    // On CPU adapters a uniform load at a constant address is a scalar load only outside any
    // control flow (lane 0 must be active); after a conditional return every later load of
    // the activations would be a per-lane gather.
    var rows = array<u32, NR>();
#for J in 0..NR
    rows[J] = min(n0 + J, p.n - 1u);
#endfor
    var rstd = array<f32, MR>();
#if NORM
    // Every lane needs all of each row's norm; with the row length compiled in, the loads are
    // constants (one load for all lanes).
#for R in 0..MR
    {
        var q = vec4<f32>(0.0);
#if KB
#for I in 0..XROW
        q = fma(a[R * XROW + I], a[R * XROW + I], q);
#endfor
#else
        for (var i = 0u; i < XROW; i++) {
            q = fma(a[R * XROW + i], a[R * XROW + i], q);
        }
#endif
        rstd[R] = inverseSqrt((q.x + q.y + q.z + q.w) / f32(p.k) + p.eps);
    }
#endfor
#endif
    var acc = array<array<f32, NR>, MR>();
#if KB
    // The row length is compiled in: every activation index is a constant, which CPU adapters
    // load once for all lanes (a loop counter in the index makes the load a per-lane gather).
#for GI in 0..KB / G
    {
        var mv = array<vec4<u32>, NR>();
        var av = array<vec4<u32>, NR>();
#for J in 0..NR
        mv[J] = meta_vec(rows[J], GI * G);
        av[J] = aux_vec(rows[J], GI * G);
#endfor
#for B in 0..G
#for S in 0..SUBS
        rows_step(&acc, rows, mv, av, rstd, GI * G + B, S);
#endfor
#endfor
    }
#endfor
#for BT in KB / G * G..KB
    {
        var mv = array<vec4<u32>, NR>();
        var av = array<vec4<u32>, NR>();
#for J in 0..NR
        mv[J] = meta_vec(rows[J], BT);
        av[J] = aux_vec(rows[J], BT);
#endfor
#for S in 0..SUBS
        rows_step(&acc, rows, mv, av, rstd, BT, S);
#endfor
    }
#endfor
#else
    let nb = p.k / BE;
    let groups = nb / G;
    for (var g = 0u; g < groups; g++) {
        var mv = array<vec4<u32>, NR>();
        var av = array<vec4<u32>, NR>();
#for J in 0..NR
        mv[J] = meta_vec(rows[J], g * G);
        av[J] = aux_vec(rows[J], g * G);
#endfor
#for B in 0..G
        for (var s = 0u; s < SUBS; s++) {
            rows_step(&acc, rows, mv, av, rstd, g * G + B, s);
        }
#endfor
    }
    for (var b = groups * G; b < nb; b++) {
        var mv = array<vec4<u32>, NR>();
        var av = array<vec4<u32>, NR>();
#for J in 0..NR
        mv[J] = meta_vec(rows[J], b);
        av[J] = aux_vec(rows[J], b);
#endfor
        for (var s = 0u; s < SUBS; s++) {
            rows_step(&acc, rows, mv, av, rstd, b, s);
        }
    }
#endif
#if TOP
    // The tile is the workgroup's WG * NR rows.
#for R in 0..MR
    top_lane(R, li, n0, acc[R]);
#endfor
    top_write(li, wg.x + wg.y * nwg.x, WG);
#else
#for R in 0..MR
#if GLU || ROPE_KV
#for P in 0..NR / 2
    if (n0 + 2 * P + 1 < p.n) {
        store_pair(R, n0 + 2 * P, acc[R][2 * P], acc[R][2 * P + 1]);
    }
#endfor
#else
#for J in 0..NR
    if (n0 + J < p.n) {
        store(R, n0 + J, acc[R][J]);
    }
#endfor
#endif
#endfor
#endif
}
#endif

#if MATMUL || MATMUL_TILED
// Sub-block i (values 32 i .. 32 i + 31) of weight rows cols.x .. cols.w, dequantized as 8
// matrices: column j of matrix I holds value 4 I + j of the four rows.
fn cols4(cols: vec4<u32>, i: u32) -> array<mat4x4<f32>, 8> {
    let b = i / SUBS;
    let s = i % SUBS;
    let w0 = sub32_at(cols.x, b, s);
    let w1 = sub32_at(cols.y, b, s);
    let w2 = sub32_at(cols.z, b, s);
    let w3 = sub32_at(cols.w, b, s);
    var t = array<mat4x4<f32>, 8>();
#for I in 0..8
    t[I] = mat4x4<f32>(vec4<f32>(w0[I].x, w1[I].x, w2[I].x, w3[I].x), vec4<f32>(w0[I].y, w1[I].y, w2[I].y, w3[I].y),
                       vec4<f32>(w0[I].z, w1[I].z, w2[I].z, w3[I].z), vec4<f32>(w0[I].w, w1[I].w, w2[I].w, w3[I].w));
#endfor
    return t;
}

// acc plus four values of a row of A (av) times the four weight rows' values in t (cols4).
fn mac4(acc: vec4<f32>, av: vec4<f32>, t: mat4x4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(av.x), t[0], fma(vec4<f32>(av.y), t[1], fma(vec4<f32>(av.z), t[2], fma(vec4<f32>(av.w), t[3], acc))));
}

// Columns n0 .. n0 + 3 of row `row` of C, those inside C.
fn store4(row: u32, n0: u32, v: vec4<f32>) {
    if (row < p.m) {
        let base = row * p.ldc + p.n_off + n0;
        if (n0 < p.n) { c[base] = v.x; }
        if (n0 + 1u < p.n) { c[base + 1u] = v.y; }
        if (n0 + 2u < p.n) { c[base + 2u] = v.z; }
        if (n0 + 3u < p.n) { c[base + 3u] = v.w; }
    }
}
#endif

#if MATMUL
@compute @workgroup_size(WG)
fn matmul_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
            @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wg.y * (SG * RB);
    let n0 = (wg.x * WG + li) * 4u;
    let cols = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
    var rows = array<u32, RB>();
#for R in 0..RB
    rows[R] = min(m0 + R * SG + lane, p.m - 1u);
#endfor
    // acc[row]: the four columns of one row of C.
    var acc = array<vec4<f32>, SG * RB>();
    let nsub = p.k / 32u;
    for (var i = 0u; i < nsub; i++) {
        let t = cols4(cols, i);
#for I in 0..8
        {
#for R in 0..RB
            {
                let mine = a[(rows[R] * p.k + i * 32u) / 4u + I];
#for S in 0..SG
                {
                    let av = subgroupBroadcast(mine, u32(S));
                    acc[R * SG + S] = mac4(acc[R * SG + S], av, t[I]);
                }
#endfor
            }
#endfor
        }
#endfor
    }
#for I in 0..SG * RB
    store4(m0 + I, n0, acc[I]);
#endfor
}
#endif

#if MATMUL_TILED
// TM rows of A, ST sub-blocks (32 ST values) of each, staged in workgroup memory per trip.
var<workgroup> tile: array<vec4<f32>, TM * ST * 8>;

@compute @workgroup_size(WG)
fn matmul_t(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * TM;
    let n0 = (wg.x * WG + li) * 4u;
    let cols = min(vec4<u32>(n0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
    // acc[row]: the four columns of one row of C.
    var acc = array<vec4<f32>, TM>();
    let nsub = p.k / 32u;
    let kv = p.k / 4u;
    for (var i0 = 0u; i0 < nsub; i0 += ST) {
        // Every lane is done with the last trip's tile before it is overwritten.
        workgroupBarrier();
        for (var j = li; j < TM * ST * 8u; j += WG) {
            let row = min(m0 + j / (ST * 8u), p.m - 1u);
            let col = i0 * 8u + j % (ST * 8u);
            tile[j] = select(vec4<f32>(0.0), a[row * kv + min(col, kv - 1u)], col < kv);
        }
        workgroupBarrier();
        let ns = min(ST, nsub - i0);
        for (var s = 0u; s < ns; s++) {
            let t = cols4(cols, i0 + s);
#for I in 0..8
            {
#for R in 0..TM
                {
                    let av = tile[(R * ST + s) * 8u + I];
                    acc[R] = mac4(acc[R], av, t[I]);
                }
#endfor
            }
#endfor
        }
    }
#for R in 0..TM
    store4(m0 + R, n0, acc[R]);
#endfor
}
#endif

#if EMBED
// Embedding gather from a quantized table: one invocation per (token, 32-value sub-block);
// tokens whose id falls outside this part's rows (n_off .. n_off + n) are left to other parts.
// p.m = tokens, p.k = row length, p.ldc = output row stride.
@compute @workgroup_size(WG)
fn embed_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * WG + li;
    let nsub = p.k / 32u;
    if (i >= p.m * nsub) {
        return;
    }
    let t = i / nsub;
    let sub = i % nsub;
#if SLOTS
    let id = ids[slots[t]];
#else
    let id = ids[t];
#endif
    if (id < p.n_off || id >= p.n_off + p.n) {
        return;
    }
    let v = sub32_at(id - p.n_off, sub / SUBS, sub % SUBS);
    let base = t * p.ldc + sub * 32u;
#for J in 0..8
    c[base + 4u * J] = v[J].x * p.scale;
    c[base + 4u * J + 1u] = v[J].y * p.scale;
    c[base + 4u * J + 2u] = v[J].z * p.scale;
    c[base + 4u * J + 3u] = v[J].w * p.scale;
#endfor
}
#endif
