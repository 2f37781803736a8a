// Token sampling, one workgroup per row of logits: greedy (argmax, lower id on ties), or
// temperature + top-k + top-p. A histogram of scaled logits below the maximum finds the bucket
// that holds the k-th most likely token; the tokens above it, then those in it, are gathered
// (at most MAXC), sorted by a bitonic sort, cut to k and to top-p, and one is drawn with a
// uniform number hashed from (seed, step). Writes the token id and its log-probability under the
// full softmax of the raw logits, as two f32 per row.
//
// TILES (sample_tiles): a greedy pick from the output head's argmax tiles (quant.wgsl's TOP
// epilogue) instead of the logits: each tile gives its largest logit, the row holding it and
// its sum of exp(logit - largest); the tiles' maximum (lowest row on a tie) is the argmax of
// the whole row and log_z = max + log(sum of the rescaled sums).
#include "common.wgsl"
#include "reduce.wgsl"

struct Params {
    rows: u32,
    vocab: u32,
    temperature: f32,
    k_eff: u32,
    top_p: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// ROWS: every row has its own options (a batch of requests in one dispatch), and the chosen id
// also goes to tokens[slot], where the next step's embedding reads it (ids stay on the GPU).
struct RowOpts {
    seed: u32,
    step: u32,
    temperature: f32,
    k_eff: u32,
    top_p: f32,
    slot: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if TILES
// [rows, p.vocab tiles]: (max, f32(row of max), sum of exp(x - max), 0).
@group(0) @binding(1) var<storage, read> tiles: array<vec4<f32>>;
#else
@group(0) @binding(1) var<storage, read> logits: array<f32>;
#endif
#if ROWS
@group(0) @binding(2) var<storage, read> row_opts: array<RowOpts>;
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;
#else
@group(0) @binding(2) var<storage, read> rng: array<vec2<u32>>;
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const NB: u32 = 512u;
const PER_UNIT: f32 = 16.0;
const MAXC: u32 = 1024u;
const LOW: f32 = -3.4e38;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> hist: array<atomic<u32>, NB>;
var<workgroup> cand_v: array<f32, MAXC>;
var<workgroup> cand_i: array<u32, MAXC>;
var<workgroup> cand_n: atomic<u32>;
var<workgroup> cut_bucket: u32;
#if ROWS
var<workgroup> wg_opts: RowOpts;
#endif

fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Histogram bucket of scaled logit z <= 0 (0 holds the maximum; the last also takes the tail).
fn bucket(z: f32) -> u32 {
    let d = -z * PER_UNIT;
    return select(NB - 1u, min(u32(d), NB - 1u), d < f32(NB));
}

// Whether candidate (va, ia) sorts before (vb, ib): larger value first, then lower id.
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return va > vb || (va == vb && ia < ib);
}

#if TILES
var<workgroup> best_t: array<ArgmaxSum, WG>;

@compute @workgroup_size(WG)
fn sample_tiles(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    var b = ArgmaxSum(LOW, 0u, 0.0);
    for (var t = lid; t < p.vocab; t += WG) {
        let e = tiles[row * p.vocab + t];
        b = argmax_sum_fold(b, ArgmaxSum(e.x, u32(e.y), e.z));
    }
    best_t[lid] = b;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            best_t[lid] = argmax_sum_fold(best_t[lid], best_t[lid + s]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let arg = best_t[0].i;
        // The pick's logit is the maximum, so its log-probability is -log(sum).
        out[2u * row] = f32(arg);
        out[2u * row + 1u] = -log(best_t[0].s);
        tokens[row_opts[row].slot] = arg;
    }
}
#else
@compute @workgroup_size(WG)
fn sample(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let row = linear_group(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
#if ROWS
    // Through workgroup memory, so that the options are uniform for the barriers below.
    if (lid == 0u) {
        wg_opts = row_opts[row];
    }
    let opts = workgroupUniformLoad(&wg_opts);
    let temperature = opts.temperature;
    let k_eff = min(opts.k_eff, p.vocab);
    let top_p = opts.top_p;
    let r = vec2<u32>(opts.seed, opts.step);
#else
    let temperature = p.temperature;
    let k_eff = p.k_eff;
    let top_p = p.top_p;
    let r = rng[row];
#endif

    // Maximum and its (lowest) index.
    var m = LOW;
    var mi = 0u;
    for (var i = lid; i < p.vocab; i += WG) {
        let x = logits[base + i];
        if (x > m) {
            m = x;
            mi = i;
        }
    }
    best_v[lid] = m;
    best_i[lid] = mi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s && before(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
    let mx = best_v[0];
    let arg = best_i[0];
    var e = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        e += exp(logits[base + i] - mx);
    }
    let log_z = mx + log(wg_sum(e, lid));
    if (temperature <= 0.0) {
        if (lid == 0u) {
            out[2u * row] = f32(arg);
            out[2u * row + 1u] = logits[base + arg] - log_z;
#if ROWS
            tokens[opts.slot] = arg;
#endif
        }
        return;
    }

    // Histogram of z = (x - max) / T.
    for (var b = lid; b < NB; b += WG) {
        atomicStore(&hist[b], 0u);
    }
    if (lid == 0u) {
        atomicStore(&cand_n, 0u);
    }
    workgroupBarrier();
    let inv_t = 1.0 / temperature;
    for (var i = lid; i < p.vocab; i += WG) {
        atomicAdd(&hist[bucket((logits[base + i] - mx) * inv_t)], 1u);
    }
    workgroupBarrier();
    if (lid == 0u) {
        var cum = 0u;
        var cut = NB - 1u;
        for (var b = 0u; b < NB; b++) {
            cum += atomicLoad(&hist[b]);
            if (cum >= k_eff) {
                cut = b;
                break;
            }
        }
        cut_bucket = cut;
    }
    let cut = workgroupUniformLoad(&cut_bucket);
    // Tokens above the cut bucket (fewer than k_eff <= MAXC), then those in it while room lasts.
    for (var phase = 0u; phase < 2u; phase++) {
        for (var i = lid; i < p.vocab; i += WG) {
            let z = (logits[base + i] - mx) * inv_t;
            let b = bucket(z);
            if ((phase == 0u && b < cut) || (phase == 1u && b == cut)) {
                let slot = atomicAdd(&cand_n, 1u);
                if (slot < MAXC) {
                    cand_v[slot] = z;
                    cand_i[slot] = i;
                }
            }
        }
        workgroupBarrier();
    }
    let n = min(atomicLoad(&cand_n), MAXC);
    for (var j = lid; j < MAXC; j += WG) {
        if (j >= n) {
            cand_v[j] = LOW;
            cand_i[j] = 0xffffffffu;
        }
    }
    workgroupBarrier();
    // Bitonic sort, best first.
    for (var k = 2u; k <= MAXC; k = k << 1u) {
        for (var j = k >> 1u; j > 0u; j = j >> 1u) {
            for (var t = lid; t < MAXC; t += WG) {
                let q = t ^ j;
                if (q > t) {
                    let first = (t & k) == 0u;
                    let swap = select(before(cand_v[t], cand_i[t], cand_v[q], cand_i[q]),
                                      before(cand_v[q], cand_i[q], cand_v[t], cand_i[t]), first);
                    if (swap) {
                        let v = cand_v[t];
                        let id = cand_i[t];
                        cand_v[t] = cand_v[q];
                        cand_i[t] = cand_i[q];
                        cand_v[q] = v;
                        cand_i[q] = id;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (lid == 0u) {
        let keep_k = min(k_eff, n);
        var total = 0.0;
        for (var i = 0u; i < keep_k; i++) {
            total += exp(cand_v[i]);
        }
        var keep = keep_k;
        var cum = 0.0;
        for (var i = 0u; i < keep_k; i++) {
            cum += exp(cand_v[i]) / total;
            if (cum >= top_p) {
                keep = i + 1u;
                break;
            }
        }
        var kept = 0.0;
        for (var i = 0u; i < keep; i++) {
            kept += exp(cand_v[i]);
        }
        let u = f32(pcg(r.x ^ pcg(r.y)) >> 8u) / 16777216.0;
        var choice = cand_i[keep - 1u];
        var lo = 0.0;
        for (var i = 0u; i < keep; i++) {
            let hi = lo + exp(cand_v[i]) / kept;
            if (u < hi) {
                choice = cand_i[i];
                break;
            }
            lo = hi;
        }
        out[2u * row] = f32(choice);
        out[2u * row + 1u] = logits[base + choice] - log_z;
#if ROWS
        tokens[opts.slot] = choice;
#endif
    }
}
#endif
