// Workgroup-wide reductions over WG invocations through workgroup memory. Every invocation of
// the workgroup must call them (they contain barriers). WG must be a power of two.
var<workgroup> red_scratch: array<f32, WG>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_scratch[lid] = red_scratch[lid] + red_scratch[lid + s];
        }
        workgroupBarrier();
    }
    let r = red_scratch[0];
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    red_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red_scratch[lid] = max(red_scratch[lid], red_scratch[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red_scratch[0];
    workgroupBarrier();
    return r;
}
