// Matmul against block-quantized weights: C[m, n] = sum_k A[m, k] W[n, k], A and C f32, W in a
// GGUF block format (FMT: 0 q8_0, 1 q4_0, 2 q4_1, 3 q5_0, 4 q4_k, 5 q6_k) read straight from the
// file's bytes. Every format is read as sub-blocks of 32 values dequantized in registers (8
// vec4s); the k-quants' 256-value blocks are 8 such sub-blocks. Blocks are only 2-byte aligned in
// some formats, so words are realigned from two loads. Every index into register arrays is a
// literal (#for).
//
// - matvec_q (MR <= 8 rows of A): each subgroup (or, without subgroups, the workgroup) owns NR
//   output columns; lanes stride over sub-blocks and meet in subgroupAdd. The decode path.
// - matmul_q (SUBGROUPS): lane l of a subgroup loads row m0 + l of A; subgroupBroadcast hands
//   each row to every lane, and each lane dequantizes four weight rows, so one weight load
//   serves SG * RB rows of A. The prefill path.
#include "common.wgsl"

// A weight matrix larger than one binding comes in parts of whole rows: this dispatch sees rows
// n_off .. n_off + n of the whole, written to columns n_off.. of C (row stride ldc).
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row_bytes: u32,
    ldc: u32,
    n_off: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if EMBED
@group(0) @binding(1) var<storage, read> ids: array<u32>;
#elif XUBO
// A uniform binding: on CPU adapters a load every lane makes at the same address is a scalar load
// and a broadcast there, where a storage load is a loop over the lanes. XN = MR * k / 4.
@group(0) @binding(1) var<uniform> a: array<vec4<f32>, XN>;
#else
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
#endif
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// The f16 at a 2-aligned byte offset of the weights.
fn half_at(off: u32) -> f32 {
    return unpack2x16float(w[off >> 2u] >> ((off & 2u) * 8u)).x;
}

// Eight little-endian words starting at a 2-aligned byte offset.
fn words8(off: u32) -> array<u32, 8> {
    let i = off >> 2u;
    let odd = (off & 2u) != 0u;
    let last = arrayLength(&w) - 1u;
    var raw: array<u32, 9>;
#for J in 0..9
    raw[J] = w[min(i + J, last)];
#endfor
    var out: array<u32, 8>;
#for J in 0..8
    out[J] = select(raw[J], (raw[J] >> 16u) | (raw[J + 1] << 16u), odd);
#endfor
    return out;
}

// Four words starting at a 2-aligned byte offset.
fn words4(off: u32) -> vec4<u32> {
    let i = off >> 2u;
    let last = arrayLength(&w) - 1u;
    let r0 = w[i];
    let r1 = w[min(i + 1u, last)];
    let r2 = w[min(i + 2u, last)];
    let r3 = w[min(i + 3u, last)];
    let r4 = w[min(i + 4u, last)];
    if ((off & 2u) == 0u) {
        return vec4<u32>(r0, r1, r2, r3);
    }
    return vec4<u32>((r0 >> 16u) | (r1 << 16u), (r1 >> 16u) | (r2 << 16u), (r2 >> 16u) | (r3 << 16u), (r3 >> 16u) | (r4 << 16u));
}

// One word at a 2-aligned byte offset.
fn word_at(off: u32) -> u32 {
    let i = off >> 2u;
    if ((off & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[min(i + 1u, arrayLength(&w) - 1u)] << 16u);
}

const BYTE_SHIFTS: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);

// Four bytes of a word as signed values.
fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v)) >> vec4<u32>(24u));
}

// Byte `i` (dynamic) of twelve bytes held in three words.
fn byte12(v: vec3<u32>, i: u32) -> u32 {
    return (v[i / 4u] >> (8u * (i % 4u))) & 0xffu;
}

// Sub-block `sb` (values 32 sb .. 32 sb + 31) of weight row `row`, dequantized.
fn dequant(row: u32, sb: u32) -> array<vec4<f32>, 8> {
    var out: array<vec4<f32>, 8>;
#if FMT == 0
    let b0 = row * p.row_bytes + sb * 34u;
    let d = half_at(b0);
    let q = words8(b0 + 2u);
#for J in 0..8
    out[J] = i8x4(q[J]) * d;
#endfor
#elif FMT == 1 || FMT == 2
#if FMT == 1
    let b0 = row * p.row_bytes + sb * 18u;
    let d = half_at(b0);
    let mn = -8.0 * d;
    let q = words4(b0 + 2u);
#else
    let b0 = row * p.row_bytes + sb * 20u;
    let dm = unpack2x16float(w[b0 >> 2u]);
    let d = dm.x;
    let mn = dm.y;
    let q = vec4<u32>(w[(b0 >> 2u) + 1u], w[(b0 >> 2u) + 2u], w[(b0 >> 2u) + 3u], w[(b0 >> 2u) + 4u]);
#endif
#for J in 0..4
    out[J] = vec4<f32>((vec4<u32>(q[J]) >> BYTE_SHIFTS) & vec4<u32>(15u)) * d + mn;
    out[J + 4] = vec4<f32>((vec4<u32>(q[J]) >> (BYTE_SHIFTS + 4u)) & vec4<u32>(15u)) * d + mn;
#endfor
#elif FMT == 3
    let b0 = row * p.row_bytes + sb * 22u;
    let d = half_at(b0);
    let qh = word_at(b0 + 2u);
    let q = words4(b0 + 6u);
#for J in 0..4
    {
        let lo = (vec4<u32>(q[J]) >> BYTE_SHIFTS) & vec4<u32>(15u);
        let hi = (vec4<u32>(q[J]) >> (BYTE_SHIFTS + 4u)) & vec4<u32>(15u);
        let bits = vec4<u32>(4u * J, 4u * J + 1u, 4u * J + 2u, 4u * J + 3u);
        let h0 = ((vec4<u32>(qh) >> bits) & vec4<u32>(1u)) << vec4<u32>(4u);
        let h1 = ((vec4<u32>(qh) >> (bits + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u);
        out[J] = (vec4<f32>(lo | h0) - 16.0) * d;
        out[J + 4] = (vec4<f32>(hi | h1) - 16.0) * d;
    }
#endfor
#elif FMT == 4
    let j = sb % 8u;
    let b0 = row * p.row_bytes + (sb / 8u) * 144u;
    let dd = unpack2x16float(w[b0 >> 2u]);
    let sc = vec3<u32>(w[(b0 >> 2u) + 1u], w[(b0 >> 2u) + 2u], w[(b0 >> 2u) + 3u]);
    var s: u32;
    var mn: u32;
    if (j < 4u) {
        s = byte12(sc, j) & 63u;
        mn = byte12(sc, j + 4u) & 63u;
    } else {
        s = (byte12(sc, j + 4u) & 15u) | ((byte12(sc, j - 4u) >> 6u) << 4u);
        mn = (byte12(sc, j + 4u) >> 4u) | ((byte12(sc, j) >> 6u) << 4u);
    }
    let scale = dd.x * f32(s);
    let minv = dd.y * f32(mn);
    let qbase = (b0 + 16u + (j / 2u) * 32u) >> 2u;
    let shift = BYTE_SHIFTS + vec4<u32>(4u * (j & 1u));
#for J in 0..8
    out[J] = vec4<f32>((vec4<u32>(w[qbase + J]) >> shift) & vec4<u32>(15u)) * scale - minv;
#endfor
#elif FMT == 5
    let j = sb % 8u;
    let b0 = row * p.row_bytes + (sb / 8u) * 210u;
    let half = j / 4u;
    let jj = j % 4u;
    let ql = words8(b0 + 64u * half + 32u * (jj & 1u));
    let qh = words8(b0 + 128u + 32u * half);
    let scales = word_at(b0 + 192u + 8u * half + 2u * jj);
    let d = half_at(b0 + 208u);
    let s_lo = d * f32(bitcast<i32>(scales << 24u) >> 24u);
    let s_hi = d * f32(bitcast<i32>(scales << 16u) >> 24u);
    let nib = BYTE_SHIFTS + vec4<u32>(4u * (jj >> 1u));
    let hsh = BYTE_SHIFTS + vec4<u32>(2u * jj);
#for J in 0..8
    {
        let q = ((vec4<u32>(ql[J]) >> nib) & vec4<u32>(15u)) | (((vec4<u32>(qh[J]) >> hsh) & vec4<u32>(3u)) << vec4<u32>(4u));
#if J < 4
        out[J] = (vec4<f32>(q) - 32.0) * s_lo;
#else
        out[J] = (vec4<f32>(q) - 32.0) * s_hi;
#endif
    }
#endfor
#endif
    return out;
}

#if MATVEC
#if !SUBGROUPS
var<workgroup> partial: array<f32, MR * NR * WG>;
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
    let nsb = p.k / 32u;
    var acc: array<array<f32, NR>, MR>;
    var rows: array<u32, NR>;
#for J in 0..NR
    rows[J] = min(n0 + J, p.n - 1u);
#endfor
    for (var sb = first; sb < nsb; sb += stride) {
        var x: array<array<vec4<f32>, 8>, MR>;
#for R in 0..MR
#for I in 0..8
        x[R][I] = a[(R * p.k + sb * 32u) / 4u + I];
#endfor
#endfor
#for J in 0..NR
        {
            let wv = dequant(rows[J], sb);
#for R in 0..MR
            acc[R][J] += dot(x[R][0], wv[0]) + dot(x[R][1], wv[1]) + dot(x[R][2], wv[2]) + dot(x[R][3], wv[3])
                + dot(x[R][4], wv[4]) + dot(x[R][5], wv[5]) + dot(x[R][6], wv[6]) + dot(x[R][7], wv[7]);
#endfor
        }
#endfor
    }
#if SUBGROUPS
#for R in 0..MR
#for J in 0..NR
    {
        let s = subgroupAdd(acc[R][J]);
        if (lane == 0u && n0 + J < p.n) {
            c[R * p.ldc + p.n_off + n0 + J] = s;
        }
    }
#endfor
#endfor
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
    if (li == 0u) {
#for R in 0..MR
#for J in 0..NR
        if (n0 + J < p.n) {
            c[R * p.ldc + p.n_off + n0 + J] = partial[(R * NR + J) * WG];
        }
#endfor
#endfor
    }
#endif
}
#endif

#if MATVEC_ROWS
// Matvec with lanes over output columns: each invocation owns NR whole weight rows and walks
// their sub-blocks, so every lane is busy whatever k is and no reduction is needed. Picked on
// CPU adapters, where a load costs the same whichever lanes share its address; GPUs prefer
// matvec_q's coalesced reads.
@compute @workgroup_size(WG)
fn matvec_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let n0 = ((wg.x + wg.y * nwg.x) * WG + li) * NR;
    if (n0 >= p.n) {
        return;
    }
    var rows: array<u32, NR>;
#for J in 0..NR
    rows[J] = min(n0 + J, p.n - 1u);
#endfor
    var acc: array<array<f32, NR>, MR>;
    let nsb = p.k / 32u;
    for (var sb = 0u; sb < nsb; sb++) {
        var x: array<array<vec4<f32>, 8>, MR>;
#for R in 0..MR
#for I in 0..8
        x[R][I] = a[(R * p.k + sb * 32u) / 4u + I];
#endfor
#endfor
#for J in 0..NR
        {
            let wv = dequant(rows[J], sb);
#for R in 0..MR
            acc[R][J] += dot(x[R][0], wv[0]) + dot(x[R][1], wv[1]) + dot(x[R][2], wv[2]) + dot(x[R][3], wv[3])
                + dot(x[R][4], wv[4]) + dot(x[R][5], wv[5]) + dot(x[R][6], wv[6]) + dot(x[R][7], wv[7]);
#endfor
        }
#endfor
    }
#for R in 0..MR
#for J in 0..NR
    if (n0 + J < p.n) {
        c[R * p.ldc + p.n_off + n0 + J] = acc[R][J];
    }
#endfor
#endfor
}
#endif

#if MATMUL
@compute @workgroup_size(WG)
fn matmul_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
            @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wg.y * (SG * RB);
    let n0 = (wg.x * WG + li) * 4u;
    let c0 = min(n0, p.n - 1u);
    let c1 = min(n0 + 1u, p.n - 1u);
    let c2 = min(n0 + 2u, p.n - 1u);
    let c3 = min(n0 + 3u, p.n - 1u);
    var rows: array<u32, RB>;
#for R in 0..RB
    rows[R] = min(m0 + R * SG + lane, p.m - 1u);
#endfor
    // acc[row]: the four columns of one row of C.
    var acc: array<vec4<f32>, SG * RB>;
    let nsb = p.k / 32u;
    for (var sb = 0u; sb < nsb; sb++) {
        let w0 = dequant(c0, sb);
        let w1 = dequant(c1, sb);
        let w2 = dequant(c2, sb);
        let w3 = dequant(c3, sb);
#for I in 0..8
        {
            let tx = vec4<f32>(w0[I].x, w1[I].x, w2[I].x, w3[I].x);
            let ty = vec4<f32>(w0[I].y, w1[I].y, w2[I].y, w3[I].y);
            let tz = vec4<f32>(w0[I].z, w1[I].z, w2[I].z, w3[I].z);
            let tw = vec4<f32>(w0[I].w, w1[I].w, w2[I].w, w3[I].w);
#for R in 0..RB
            {
                let mine = a[(rows[R] * p.k + sb * 32u) / 4u + I];
#for S in 0..SG
                {
                    let av = subgroupBroadcast(mine, u32(S));
                    acc[R * SG + S] = fma(vec4<f32>(av.x), tx, fma(vec4<f32>(av.y), ty,
                        fma(vec4<f32>(av.z), tz, fma(vec4<f32>(av.w), tw, acc[R * SG + S]))));
                }
#endfor
            }
#endfor
        }
#endfor
    }
#for I in 0..SG * RB
    {
        let row = m0 + I;
        if (row < p.m) {
            let v = acc[I];
            let base = row * p.ldc + p.n_off + n0;
            if (n0 < p.n) { c[base] = v.x; }
            if (n0 + 1u < p.n) { c[base + 1u] = v.y; }
            if (n0 + 2u < p.n) { c[base + 2u] = v.z; }
            if (n0 + 3u < p.n) { c[base + 3u] = v.w; }
        }
    }
#endfor
}
#endif

#if EMBED
// Embedding gather from a quantized table: one invocation per (token, sub-block of 32 values);
// tokens whose id falls outside this part's rows (n_off .. n_off + n) are left to other parts.
// p.m = tokens, p.k = row length, p.ldc = output row stride.
@compute @workgroup_size(WG)
fn embed_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * WG + li;
    let nsb = p.k / 32u;
    if (i >= p.m * nsb) {
        return;
    }
    let t = i / nsb;
    let sb = i % nsb;
    let id = ids[t];
    if (id < p.n_off || id >= p.n_off + p.n) {
        return;
    }
    let v = dequant(id - p.n_off, sb);
    let base = t * p.ldc + sb * 32u;
#for J in 0..8
    c[base + 4u * J] = v[J].x * p.scale;
    c[base + 4u * J + 1u] = v[J].y * p.scale;
    c[base + 4u * J + 2u] = v[J].z * p.scale;
    c[base + 4u * J + 3u] = v[J].w * p.scale;
#endfor
}
#endif
