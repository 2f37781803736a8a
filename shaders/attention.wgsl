// Flash attention over a paged KV cache. One workgroup of SG lanes (a unit) takes a block of query
// rows of one KV head of one sequence and one split of the sequence's keys, and writes those
// rows' output normalised within the split plus the split's log-sum-exp. With one split that
// output is final; otherwise merge.wgsl combines the splits. A row is a (query token, head of the
// KV head's group) pair, so the G query heads sharing a KV head are one matrix against its keys
// and each K/V element is read once per unit. Keys go four at a time (a vec4 of scores per row);
// the online softmax keeps a running max m and sum l per row in the exp2 domain, and the score
// matrix never exists beyond those four keys.
//
// Two ways to spread a unit over its lanes:
// - attend: lanes own vec4 chunks of the head dimension (lane + SG * j) for RQ rows; partial dot
//   products meet in subgroupAdd (SUBGROUPS) or, without subgroups, in workgroup memory once per
//   tile. Good for a few rows (decode: the G heads of one KV head).
// - attend_rows (SUBGROUPS): lane l owns rows l + SG * i, i < RL, whole; each lane loads its
//   chunks of every key and subgroupShuffle hands them round, so scores and the softmax run
//   lane-parallel with no reduction. Good for many rows (prefill, the cascade prefix).
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
    splits: u32,
    split_slot: u32,
    mask_stride: u32,
    units: u32,
    scale_log2: f32,
    split_len: u32,
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

// Defines from the launcher: D (head size), DV = D / 4 (vec4 chunks of a row), SG (lanes), and
// DC = ceil(DV / SG) (chunks of a row each lane loads); #for loops over them.
// Stands for -infinity, which WGSL cannot spell; exp2 of anything near it is 0.
const NEG: f32 = -3.0e38;
const LOG2E: f32 = 1.4426950408889634;
const LN2: f32 = 0.6931471805599453;


// Where the next key is: its page's entry in the table, the page, and the slot in it. Keys
// advance one at a time, so the page entry is read only when a page is crossed (dividing by the
// page size per key costs eight scalar divisions per vector on CPU adapters).
struct KeyCursor {
    entry: u32,
    page: u32,
    slot: u32,
}

fn cursor_at(seq: u32, key: u32) -> KeyCursor {
    let entry = seq * p.max_pages + key / p.page_size;
    return KeyCursor(entry, pages[entry], key % p.page_size);
}

// Offset in vec4s of the cursor's key for KV head `kvh`, then step the cursor to the next key.
fn next_offset(cur: ptr<function, KeyCursor>, kvh: u32) -> u32 {
    let off = (((*cur).page * p.page_size + (*cur).slot) * p.n_kv_heads + kvh) * DV;
    (*cur).slot += 1u;
    if ((*cur).slot == p.page_size) {
        (*cur).slot = 0u;
        (*cur).entry += 1u;
        (*cur).page = pages[min((*cur).entry, arrayLength(&pages) - 1u)];
    }
    return off;
}

// The next key's offset (in vec4s, for KV head `kvh`), or the last real key's when `key` is past
// the end of the range (those scores are masked).
fn key_offset(cur: ptr<function, KeyCursor>, key: u32, k_end: u32, last: ptr<function, u32>, kvh: u32) -> u32 {
    if (key < k_end) {
        *last = next_offset(cur, kvh);
    }
    return *last;
}

// The four offsets of keys kb .. kb + 3.
fn tile_offsets(cur: ptr<function, KeyCursor>, kb: u32, k_end: u32, last: ptr<function, u32>, kvh: u32) -> vec4<u32> {
    let a = key_offset(cur, kb, k_end, last, kvh);
    let b = key_offset(cur, kb + 1u, k_end, last, kvh);
    let c = key_offset(cur, kb + 2u, k_end, last, kvh);
    let d = key_offset(cur, kb + 3u, k_end, last, kvh);
    return vec4<u32>(a, b, c, d);
}

// Which of keys kb .. kb + 3 a query at position qpos sees.
fn visible(kb: u32, k_end: u32, qpos: u32) -> vec4<bool> {
    let keys = vec4<u32>(kb, kb + 1u, kb + 2u, kb + 3u);
    let causal = vec4<bool>(p.mask_mode == 0u) | (keys <= vec4<u32>(qpos));
    let window = vec4<bool>(p.mask_mode != 2u) | (keys + vec4<u32>(p.window) > vec4<u32>(qpos));
    return (keys < vec4<u32>(k_end)) & causal & window;
}

// Scores of keys kb .. kb + 3 (exp2 domain) for a row at position qpos (query token qtok of
// its sequence), with the additive mask added, and NEG for every key the row does not see: past
// the range, outside the causal or window mask, or under an additive mask of -inf (below NEG),
// whatever its K holds.
fn masked_scores(sc: vec4<f32>, kb: u32, k_end: u32, qpos: u32, qtok: u32) -> vec4<f32> {
#if MASK
    let mrow = qtok * p.mask_stride;
    let last_key = k_end - 1u;
    let madd = vec4<f32>(add_mask[mrow + min(kb, last_key)], add_mask[mrow + min(kb + 1u, last_key)],
        add_mask[mrow + min(kb + 2u, last_key)], add_mask[mrow + min(kb + 3u, last_key)]);
    return select(vec4<f32>(NEG), sc + LOG2E * madd, visible(kb, k_end, qpos) & (madd >= vec4<f32>(NEG)));
#else
    return select(vec4<f32>(NEG), sc, visible(kb, k_end, qpos));
#endif
}

// The range of keys a unit reads: its split, cut to what the masks let its rows see. Splits are
// p.split_len keys long when that is set (decode: a row's result then does not depend on the
// other rows of its step), else each sequence's keys split into p.splits runs of whole tiles;
// either way the last ones may be empty, and the sizes follow the lengths, which may change
// from one replay of a plan to the next.
fn key_range(split: u32, kv_len: u32, q_pos0: u32, t_first: u32, t_last: u32) -> vec2<u32> {
    let split_size = select(((kv_len + p.splits - 1u) / p.splits + 3u) / 4u * 4u, p.split_len, p.split_len > 0u);
    var k_begin = split * split_size;
    var k_end = min(k_begin + split_size, kv_len);
    if (p.mask_mode >= 1u) {
        k_end = min(k_end, q_pos0 + t_last + 1u);
    }
    if (p.mask_mode == 2u && q_pos0 + t_first + 1u > p.window) {
        k_begin = max(k_begin, q_pos0 + t_first + 1u - p.window);
    }
    return vec2<u32>(k_begin, k_end);
}

// One online-softmax step for one row: fold four masked scores (exp2 domain) into the running
// max m and sum l; the weights of the four keys and the factor for what was accumulated before.
struct Step {
    weights: vec4<f32>,
    corr: f32,
    m: f32,
    l: f32,
}

fn softmax_step(m: f32, l: f32, sc: vec4<f32>) -> Step {
    let mt = max(m, max(max(sc.x, sc.y), max(sc.z, sc.w)));
    if (mt <= NEG) {
        return Step(vec4<f32>(0.0), 1.0, m, l);
    }
    let corr = exp2(m - mt);
    let e = exp2(sc - vec4<f32>(mt));
    return Step(e, corr, mt, l * corr + e.x + e.y + e.z + e.w);
}

// A key's weighted value, or nothing for a key of weight 0 (masked, or beyond the range): a
// masked key is absent, so a NaN or infinity in its V cannot turn into 0 x NaN.
fn absent_or(w: f32, v: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(0.0), w * v, w != 0.0);
}

#if ATTEND_DIMS
#if !SUBGROUPS
var<workgroup> partials: array<vec4<f32>, RQ * SG>;
#endif

// Sum each lane's partial scores over the SG lanes, in place.
fn lane_sums(s: ptr<function, array<vec4<f32>, RQ>>, lane: u32) {
#if SUBGROUPS
#for I in 0..RQ
    (*s)[I] = subgroupAdd((*s)[I]);
#endfor
#else
#for I in 0..RQ
    partials[I * SG + lane] = (*s)[I];
#endfor
    workgroupBarrier();
#for I in 0..RQ
    {
        var acc = vec4<f32>(0.0);
        for (var l = 0u; l < SG; l++) {
            acc += partials[I * SG + l];
        }
        (*s)[I] = acc;
    }
#endfor
    workgroupBarrier();
#endif
}

@compute @workgroup_size(SG)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let kvh = wg.x / p.units;
    let unit = wg.x % p.units;
    let split = wg.y;
    let seq = wg.z;
    let info = seq_info[seq];
    let rows = p.q_len * p.group;
    let r0 = unit * RQ;
    let range = key_range(split, info.x, info.y, r0 / p.group, (min(r0 + RQ, rows) - 1u) / p.group);

    // Register arrays are only ever indexed by literals (#for).
    var qv = array<array<vec4<f32>, DC>, RQ>();
    var o = array<array<vec4<f32>, DC>, RQ>();
    var m = array<f32, RQ>();
    var l = array<f32, RQ>();
    var qpos = array<u32, RQ>();
    var qtok = array<u32, RQ>();
#for I in 0..RQ
    {
        let r = min(r0 + I, rows - 1u);
        let t = r / p.group;
        let base = ((seq * p.q_len + t) * p.n_heads + kvh * p.group + r % p.group) * DV;
#for J in 0..DC
        {
            let c = lane + SG * J;
            // The scale and log2(e) are folded into Q so scores come out in the exp2 domain.
            qv[I][J] = select(vec4<f32>(0.0), vec4<f32>(q[base + min(c, DV - 1u)]) * p.scale_log2, c < DV);
        }
#endfor
        m[I] = NEG;
        qpos[I] = info.y + t;
        qtok[I] = t;
    }
#endfor

    var cursor = cursor_at(seq, range.x);
    var last = 0u;
    for (var kb = range.x; kb < range.y; kb += 4u) {
        let offs = tile_offsets(&cursor, kb, range.y, &last, kvh);
        var k0 = array<vec4<f32>, DC>();
        var k1 = array<vec4<f32>, DC>();
        var k2 = array<vec4<f32>, DC>();
        var k3 = array<vec4<f32>, DC>();
#for J in 0..DC
        {
            let c = min(lane + SG * J, DV - 1u);
            let ok = lane + SG * J < DV;
            k0[J] = select(vec4<f32>(0.0), vec4<f32>(k_pool[offs.x + c]), ok);
            k1[J] = select(vec4<f32>(0.0), vec4<f32>(k_pool[offs.y + c]), ok);
            k2[J] = select(vec4<f32>(0.0), vec4<f32>(k_pool[offs.z + c]), ok);
            k3[J] = select(vec4<f32>(0.0), vec4<f32>(k_pool[offs.w + c]), ok);
        }
#endfor
        var s = array<vec4<f32>, RQ>();
#for I in 0..RQ
#for J in 0..DC
        s[I] += vec4<f32>(dot(qv[I][J], k0[J]), dot(qv[I][J], k1[J]), dot(qv[I][J], k2[J]), dot(qv[I][J], k3[J]));
#endfor
#endfor
        lane_sums(&s, lane);
#for I in 0..RQ
        {
            let step = softmax_step(m[I], l[I], masked_scores(s[I], kb, range.y, qpos[I], qtok[I]));
            m[I] = step.m;
            l[I] = step.l;
            s[I] = step.weights;
#for J in 0..DC
            o[I][J] *= step.corr;
#endfor
        }
#endfor
#for J in 0..DC
        {
            let c = min(lane + SG * J, DV - 1u);
            let ok = lane + SG * J < DV;
            let v0 = select(vec4<f32>(0.0), vec4<f32>(v_pool[offs.x + c]), ok);
            let v1 = select(vec4<f32>(0.0), vec4<f32>(v_pool[offs.y + c]), ok);
            let v2 = select(vec4<f32>(0.0), vec4<f32>(v_pool[offs.z + c]), ok);
            let v3 = select(vec4<f32>(0.0), vec4<f32>(v_pool[offs.w + c]), ok);
#for I in 0..RQ
            o[I][J] += absent_or(s[I].x, v0) + absent_or(s[I].y, v1) + absent_or(s[I].z, v2) + absent_or(s[I].w, v3);
#endfor
        }
#endfor
    }

#for I in 0..RQ
    if (r0 + I < rows) {
        let r = r0 + I;
        let row = (((p.split_slot + split) * p.seqs + seq) * p.q_len + r / p.group) * p.n_heads
            + kvh * p.group + r % p.group;
        let inv = select(1.0 / l[I], 0.0, l[I] == 0.0);
#for J in 0..DC
        if (lane + SG * J < DV) {
            out[row * DV + lane + SG * J] = vec4<TO>(o[I][J] * inv);
        }
#endfor
        if (lane == 0u) {
            lse_out[row] = select((m[I] + log2(l[I])) * LN2, NEG, l[I] == 0.0);
        }
    }
#endfor
}
#endif

#if ATTEND_ROWS
// Every index into the register arrays below is a literal after preprocessing (#for), so no
// driver can fall back to indexing them in memory.
@compute @workgroup_size(SG)
fn attend_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let kvh = wg.x / p.units;
    let unit = wg.x % p.units;
    let split = wg.y;
    let seq = wg.z;
    let info = seq_info[seq];
    let rows = p.q_len * p.group;
    let r0 = unit * (SG * RL);
    let range = key_range(split, info.x, info.y, r0 / p.group, (min(r0 + SG * RL, rows) - 1u) / p.group);

    var qv = array<array<vec4<f32>, DV>, RL>();
    var o = array<array<vec4<f32>, DV>, RL>();
    var m = array<f32, RL>();
    var l = array<f32, RL>();
    var qpos = array<u32, RL>();
    var qtok = array<u32, RL>();
#for I in 0..RL
    {
        let r = min(r0 + lane + SG * I, rows - 1u);
        let t = r / p.group;
        let base = ((seq * p.q_len + t) * p.n_heads + kvh * p.group + r % p.group) * DV;
#for C in 0..DV
        qv[I][C] = vec4<f32>(q[base + C]) * p.scale_log2;
#endfor
        m[I] = NEG;
        qpos[I] = info.y + t;
        qtok[I] = t;
    }
#endfor

    var cursor = cursor_at(seq, range.x);
    var last = 0u;
    for (var kb = range.x; kb < range.y; kb += 4u) {
        let offs = tile_offsets(&cursor, kb, range.y, &last, kvh);
        // Each lane loads its chunks of the four keys; broadcasts give every lane the rest.
        var k0 = array<vec4<f32>, DC>();
        var k1 = array<vec4<f32>, DC>();
        var k2 = array<vec4<f32>, DC>();
        var k3 = array<vec4<f32>, DC>();
#for J in 0..DC
        {
            let c = min(lane + SG * J, DV - 1u);
            k0[J] = vec4<f32>(k_pool[offs.x + c]);
            k1[J] = vec4<f32>(k_pool[offs.y + c]);
            k2[J] = vec4<f32>(k_pool[offs.z + c]);
            k3[J] = vec4<f32>(k_pool[offs.w + c]);
        }
#endfor
        var s = array<vec4<f32>, RL>();
#for J in 0..DC
#for S in 0..SG
#if S + SG * J < DV
        {
            let a = subgroupBroadcast(k0[J], u32(S));
            let b = subgroupBroadcast(k1[J], u32(S));
            let c = subgroupBroadcast(k2[J], u32(S));
            let d = subgroupBroadcast(k3[J], u32(S));
#for I in 0..RL
            s[I] += vec4<f32>(dot(qv[I][S + SG * J], a), dot(qv[I][S + SG * J], b),
                dot(qv[I][S + SG * J], c), dot(qv[I][S + SG * J], d));
#endfor
        }
#endif
#endfor
#endfor
#for I in 0..RL
        {
            let step = softmax_step(m[I], l[I], masked_scores(s[I], kb, range.y, qpos[I], qtok[I]));
            m[I] = step.m;
            l[I] = step.l;
            s[I] = step.weights;
#for C in 0..DV
            o[I][C] *= step.corr;
#endfor
        }
#endfor
#for J in 0..DC
        {
            let c = min(lane + SG * J, DV - 1u);
            let v0 = vec4<f32>(v_pool[offs.x + c]);
            let v1 = vec4<f32>(v_pool[offs.y + c]);
            let v2 = vec4<f32>(v_pool[offs.z + c]);
            let v3 = vec4<f32>(v_pool[offs.w + c]);
#for S in 0..SG
#if S + SG * J < DV
            {
                let a = subgroupBroadcast(v0, u32(S));
                let b = subgroupBroadcast(v1, u32(S));
                let c = subgroupBroadcast(v2, u32(S));
                let d = subgroupBroadcast(v3, u32(S));
#for I in 0..RL
                o[I][S + SG * J] += absent_or(s[I].x, a) + absent_or(s[I].y, b) + absent_or(s[I].z, c) + absent_or(s[I].w, d);
#endfor
            }
#endif
#endfor
        }
#endfor
    }

#for I in 0..RL
    {
        let r = r0 + lane + SG * I;
        if (r < rows) {
            let row = (((p.split_slot + split) * p.seqs + seq) * p.q_len + r / p.group) * p.n_heads
                + kvh * p.group + r % p.group;
            let inv = select(1.0 / l[I], 0.0, l[I] == 0.0);
#for C in 0..DV
            out[row * DV + C] = vec4<TO>(o[I][C] * inv);
#endfor
            lse_out[row] = select((m[I] + log2(l[I])) * LN2, NEG, l[I] == 0.0);
        }
    }
#endfor
}
#endif
