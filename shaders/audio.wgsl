// Whisper's log-mel spectrogram around one matmul (see flint_kernels::audio).
// FRAMES: cut the reflect-padded clips into rows of n_fft samples, zero-filled to `row` (a
// multiple of 4, for the matmul's vec4 loads; the Hann window is folded into the DFT matrix).
// MEL: project each frame's power spectrum (re^2 + im^2 of the DFT's column pairs) on the mel
// filters, each summed over its own run of bins only (a Slaney filter covers a few bins).
// MEL_MAX: each clip's largest mel power, one workgroup per clip.
// MEL_LOG: x -> (max(log10(max(x, 1e-10)), clip max - 8) + 4) / 4 in place.
// CONV_COLS: the columns of a 1D convolution over time (Whisper's stem), so that the conv is one
// matmul with its weight [out, channels, kernel] flattened: x [len, channels] (a row per time
// step) -> cols [out_len, channels * kernel], column c * kernel + j holding
// x[t * stride + j - pad, c], zero outside the input.
// POOL1D: the average of each group of `kernel` rows of x [seqs, len, dim] (stride `kernel`, a
// last partial group dropped) -> [seqs, len / kernel, dim] (Qwen2-Audio's encoder pool). All f32.
#include "common.wgsl"
#include "reduce.wgsl"

#if CONV_COLS
struct ConvParams {
    len: u32,
    channels: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    out_len: u32,
    _pad: u32,
    total: u32,
}

@group(0) @binding(0) var<uniform> cp: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

@compute @workgroup_size(WG)
fn conv_cols(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= cp.total) {
        return;
    }
    let row = cp.channels * cp.kernel;
    let t = i / row;
    let r = i % row;
    let c = r / cp.kernel;
    let j = r % cp.kernel;
    let at = i32(t * cp.stride + j) - i32(cp.pad);
    let inside = at >= 0 && at < i32(cp.len);
    let src = u32(clamp(at, 0, i32(cp.len) - 1));
    cols[i] = select(0.0, x[src * cp.channels + c], inside);
}
#elif POOL1D
struct PoolParams {
    seqs: u32,
    len: u32,
    dim: u32,
    kernel: u32,
    out_len: u32,
    _a: u32,
    _b: u32,
    total: u32,
}

@group(0) @binding(0) var<uniform> pp: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> pooled: array<f32>;

@compute @workgroup_size(WG)
fn pool1d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= pp.total) {
        return;
    }
    let c = i % pp.dim;
    let row = i / pp.dim;
    let s = row / pp.out_len;
    let first = s * pp.len + (row % pp.out_len) * pp.kernel;
    var sum = 0.0;
    for (var j = 0u; j < pp.kernel; j++) {
        sum += x[(first + j) * pp.dim + c];
    }
    pooled[i] = sum / f32(pp.kernel);
}
#else

struct Params {
    clips: u32,
    samples: u32,
    n_fft: u32,
    hop: u32,
    // Values per clip of the tensor the entry writes or walks (FRAMES: frames * row;
    // MEL, MEL_*: frames * mels).
    per_clip: u32,
    // Values per frame row (n_fft rounded up to a multiple of 4).
    row: u32,
    // Columns of the spectrum (2 * bins rounded up to a multiple of 4).
    cols: u32,
    // Frequency bins, mel filters.
    bins: u32,
    mels: u32,
    total: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#endif

#if FRAMES
@group(0) @binding(1) var<storage, read> audio: array<f32>;
@group(0) @binding(2) var<storage, read_write> framed: array<f32>;

@compute @workgroup_size(WG)
fn frames(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let clip = i / p.per_clip;
    let r = i % p.per_clip;
    let t = r / p.row;
    let k = r % p.row;
    // Position in the clip padded by n_fft / 2 on each side, mirrored without the edge.
    var x = i32(t * p.hop + min(k, p.n_fft - 1u)) - i32(p.n_fft / 2u);
    let last = i32(p.samples) - 1;
    x = abs(x);
    x = select(x, 2 * last - x, x > last);
    framed[i] = select(0.0, audio[clip * p.samples + u32(x)], k < p.n_fft);
}
#endif

#if MEL
@group(0) @binding(1) var<storage, read> spec: array<f32>;
@group(0) @binding(2) var<storage, read> filters: array<f32>;
// Per filter: its first bin and one past its last.
@group(0) @binding(3) var<storage, read> spans: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> mel: array<f32>;

@compute @workgroup_size(WG)
fn mel_project(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let frame = i / p.mels;
    let m = i % p.mels;
    let span = spans[m];
    var acc = 0.0;
    for (var f = span.x; f < span.y; f++) {
        let re = spec[frame * p.cols + 2u * f];
        let im = spec[frame * p.cols + 2u * f + 1u];
        acc += filters[m * p.bins + f] * (re * re + im * im);
    }
    mel[i] = acc;
}
#endif

#if MEL_MAX
@group(0) @binding(1) var<storage, read> mel: array<f32>;
@group(0) @binding(2) var<storage, read_write> maxes: array<f32>;

@compute @workgroup_size(WG)
fn mel_max(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let clip = linear_group(wg, nwg);
    if (clip >= p.clips) {
        return;
    }
    let base = clip * p.per_clip;
    var m = 0.0;
    for (var i = lid; i < p.per_clip; i += WG) {
        m = max(m, mel[base + i]);
    }
    let best = wg_max(m, lid);
    if (lid == 0u) {
        maxes[clip] = best;
    }
}
#endif

#if MEL_LOG
@group(0) @binding(1) var<storage, read> maxes: array<f32>;
@group(0) @binding(2) var<storage, read_write> mel: array<f32>;

// log10 through log2: log2(x) * log10(2).
const LOG10_2: f32 = 0.30102999566398120;

@compute @workgroup_size(WG)
fn mel_log(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_group(wg, nwg) * WG + lid;
    if (i >= p.total) {
        return;
    }
    let floor = log2(max(maxes[i / p.per_clip], 1e-10)) * LOG10_2 - 8.0;
    let x = log2(max(mel[i], 1e-10)) * LOG10_2;
    mel[i] = (max(x, floor) + 4.0) / 4.0;
}
#endif
