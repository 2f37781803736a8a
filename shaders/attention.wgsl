// Flash attention over a paged KV cache: one workgroup of SG lanes takes RQ query rows of one KV
// head of one sequence and one split of the sequence's keys, and writes those rows' output
// normalised within the split plus the split's log-sum-exp. With one split that output is
// final; otherwise merge.wgsl combines the splits. With SUBGROUPS the workgroup is one subgroup
// and lanes add their partial scores with subgroupAdd; without, the same SG lanes add them
// through workgroup memory, a whole tile of scores per pair of barriers.
//
// A row is a (query token, head of the KV head's group) pair, so the G query heads that share a
// KV head are one matrix against its keys and every K/V element is read once per unit. Lanes own
// vec4 chunks of the head dimension (lane + SG * j): partial dot products meet in subgroupAdd,
// the online softmax (running max m, sum l, in the exp2 domain) runs per tile of T keys, and P V
// accumulates in each lane's own chunks. The score matrix is never stored beyond one tile.
//
// Keys are read through a page table: key j of sequence s lives in page pages[s*max_pages +
// j/page_size], slot j % page_size; the pool is [pages, page_size, n_kv_heads, D]. Contiguous K/V
// is the case of one page per sequence.
//
// Masks (mask_mode): 0 none, 1 causal, 2 causal within `window` positions; query token t of
// sequence s is at position seq_info[s].y + t, key j at position j. MASK adds an additive mask
// [q_len, mask_stride].
#include "common.wgsl"

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    group: u32,
    q_len: u32,
    seqs: u32,
    page_size: u32,
    max_pages: u32,
    mask_mode: u32,
    window: u32,
    split_size: u32,
    split_slot: u32,
    mask_stride: u32,
    units: u32,
    scale_log2: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<TQ>>;
@group(0) @binding(2) var<storage, read> k_pool: array<vec4<TKV>>;
@group(0) @binding(3) var<storage, read> v_pool: array<vec4<TKV>>;
@group(0) @binding(4) var<storage, read> pages: array<u32>;
@group(0) @binding(5) var<storage, read> seq_info: array<vec2<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<TO>>;
@group(0) @binding(7) var<storage, read_write> lse_out: array<f32>;
#if MASK
@group(0) @binding(8) var<storage, read> add_mask: array<f32>;
#endif

const DV: u32 = D / 4u;
const DC: u32 = (DV + SG - 1u) / SG;
// Stands for -infinity, which WGSL cannot spell; exp2 of anything near it is 0.
const NEG: f32 = -3.0e38;
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;

#if !SUBGROUPS
var<workgroup> partials: array<f32, RQ * T * SG>;
#endif

// Sum each lane's partial dot products over the SG lanes, in place.
fn lane_sums(s: ptr<function, array<array<f32, T>, RQ>>, lane: u32) {
#if SUBGROUPS
    for (var i = 0u; i < RQ; i++) {
        for (var kk = 0u; kk < T; kk++) {
            (*s)[i][kk] = subgroupAdd((*s)[i][kk]);
        }
    }
#else
    for (var i = 0u; i < RQ; i++) {
        for (var kk = 0u; kk < T; kk++) {
            partials[(i * T + kk) * SG + lane] = (*s)[i][kk];
        }
    }
    workgroupBarrier();
    for (var i = 0u; i < RQ; i++) {
        for (var kk = 0u; kk < T; kk++) {
            var acc = 0.0;
            for (var l = 0u; l < SG; l++) {
                acc += partials[(i * T + kk) * SG + l];
            }
            (*s)[i][kk] = acc;
        }
    }
    workgroupBarrier();
#endif
}

// Offset in vec4s of key `key` (clamped into the sequence) of KV head `kvh` in the pool.
fn kv_offset(seq: u32, kvh: u32, key: u32) -> u32 {
    let page = pages[seq * p.max_pages + key / p.page_size];
    return ((page * p.page_size + key % p.page_size) * p.n_kv_heads + kvh) * DV;
}

@compute @workgroup_size(SG)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let kvh = wg.x / p.units;
    let unit = wg.x % p.units;
    let split = wg.y;
    let seq = wg.z;
    let info = seq_info[seq];
    let kv_len = info.x;
    let q_pos0 = info.y;
    let rows = p.q_len * p.group;
    let r0 = unit * RQ;
    let t_first = r0 / p.group;
    let t_last = (min(r0 + RQ, rows) - 1u) / p.group;

    // This unit's keys: its split, cut to what the masks can reach.
    var k_begin = split * p.split_size;
    var k_end = min(k_begin + p.split_size, kv_len);
    if (p.mask_mode >= 1u) {
        k_end = min(k_end, q_pos0 + t_last + 1u);
    }
    if (p.mask_mode == 2u && q_pos0 + t_first + 1u > p.window) {
        k_begin = max(k_begin, q_pos0 + t_first + 1u - p.window);
    }

    var qv: array<array<vec4<f32>, DC>, RQ>;
    var o: array<array<vec4<f32>, DC>, RQ>;
    var m: array<f32, RQ>;
    var l: array<f32, RQ>;
    var qpos: array<u32, RQ>;
    var qtok: array<u32, RQ>;
    for (var i = 0u; i < RQ; i++) {
        let r = min(r0 + i, rows - 1u);
        let t = r / p.group;
        let h = kvh * p.group + r % p.group;
        let base = ((seq * p.q_len + t) * p.n_heads + h) * DV;
        for (var j = 0u; j < DC; j++) {
            let c = lane + SG * j;
            // The scale and log2(e) are folded into Q so scores come out in the exp2 domain.
            qv[i][j] = select(vec4<f32>(0.0), vec4<f32>(q[base + min(c, DV - 1u)]) * p.scale_log2, c < DV);
            o[i][j] = vec4<f32>(0.0);
        }
        m[i] = NEG;
        l[i] = 0.0;
        qpos[i] = q_pos0 + t;
        qtok[i] = t;
    }

    for (var kb = k_begin; kb < k_end; kb += T) {
        var s: array<array<f32, T>, RQ>;
        var offs: array<u32, T>;
        for (var kk = 0u; kk < T; kk++) {
            let key = kb + kk;
            offs[kk] = kv_offset(seq, kvh, min(key, k_end - 1u));
            var kvec: array<vec4<f32>, DC>;
            for (var j = 0u; j < DC; j++) {
                let c = lane + SG * j;
                kvec[j] = select(vec4<f32>(0.0), vec4<f32>(k_pool[offs[kk] + min(c, DV - 1u)]), c < DV);
            }
            for (var i = 0u; i < RQ; i++) {
                var part = 0.0;
                for (var j = 0u; j < DC; j++) {
                    part += dot(qv[i][j], kvec[j]);
                }
                s[i][kk] = part;
            }
        }
        lane_sums(&s, lane);
        for (var kk = 0u; kk < T; kk++) {
            let key = kb + kk;
            for (var i = 0u; i < RQ; i++) {
                var sc = s[i][kk];
#if MASK
                sc += add_mask[qtok[i] * p.mask_stride + min(key, k_end - 1u)] * LOG2E;
#endif
                let visible = key < k_end && (p.mask_mode == 0u || key <= qpos[i])
                    && (p.mask_mode != 2u || key + p.window > qpos[i]);
                s[i][kk] = select(NEG, sc, visible);
            }
        }
        // Online softmax: rescale what came before by exp2(m_old - m_new).
        for (var i = 0u; i < RQ; i++) {
            var mt = m[i];
            for (var kk = 0u; kk < T; kk++) {
                mt = max(mt, s[i][kk]);
            }
            if (mt <= NEG) {
                for (var kk = 0u; kk < T; kk++) {
                    s[i][kk] = 0.0;
                }
                continue;
            }
            let corr = exp2(m[i] - mt);
            m[i] = mt;
            l[i] *= corr;
            for (var j = 0u; j < DC; j++) {
                o[i][j] *= corr;
            }
            for (var kk = 0u; kk < T; kk++) {
                let e = exp2(s[i][kk] - mt);
                s[i][kk] = e;
                l[i] += e;
            }
        }
        for (var kk = 0u; kk < T; kk++) {
            var vvec: array<vec4<f32>, DC>;
            for (var j = 0u; j < DC; j++) {
                let c = lane + SG * j;
                vvec[j] = select(vec4<f32>(0.0), vec4<f32>(v_pool[offs[kk] + min(c, DV - 1u)]), c < DV);
            }
            for (var i = 0u; i < RQ; i++) {
                for (var j = 0u; j < DC; j++) {
                    o[i][j] += s[i][kk] * vvec[j];
                }
            }
        }
    }

    for (var i = 0u; i < RQ; i++) {
        let r = r0 + i;
        if (r >= rows) {
            break;
        }
        let t = r / p.group;
        let h = kvh * p.group + r % p.group;
        let row = (((p.split_slot + split) * p.seqs + seq) * p.q_len + t) * p.n_heads + h;
        let inv = select(0.0, 1.0 / l[i], l[i] > 0.0);
        for (var j = 0u; j < DC; j++) {
            let c = lane + SG * j;
            if (c < DV) {
                out[row * DV + c] = vec4<TO>(o[i][j] * inv);
            }
        }
        if (lane == 0u) {
            lse_out[row] = select(NEG, (m[i] + log2(l[i])) * LN2, l[i] > 0.0);
        }
    }
}
