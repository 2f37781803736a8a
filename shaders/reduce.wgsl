// Workgroup-wide reductions over WG invocations. Every invocation of the workgroup must call
// them. With SG_REDUCE the workgroup is one subgroup (WG = the adapter's fixed subgroup size)
// and they are subgroup operations: no workgroup memory, no barriers, which on CPU adapters
// are switches between the workgroup's invocations. Otherwise a tree through workgroup memory
// (WG a power of two).
#if SG_REDUCE
fn wg_sum(v: f32, lid: u32) -> f32 {
    return subgroupAdd(v);
}

fn wg_max(v: f32, lid: u32) -> f32 {
    return subgroupMax(v);
}
#else
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
#endif
