// Shared prelude of every flint kernel: the f16 extension when any operand is f16, the linear
// workgroup index of grids that the host split into 2D (see Device::grid), and the argmax fold
// of the output head's tiles.
#if ENABLE_F16
enable f16;
#endif

fn linear_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// An argmax with its softmax denominator: the largest value, the lowest index holding it, and
// the sum of exp(value - largest). The output head's argmax tiles (quant.wgsl's TOP epilogue,
// sample.wgsl's sample_tiles) fold them.
struct ArgmaxSum {
    m: f32,
    i: u32,
    s: f32,
}

// a and b folded: the larger maximum (the lower index on a tie), both sums rescaled to it.
fn argmax_sum_fold(a: ArgmaxSum, b: ArgmaxSum) -> ArgmaxSum {
    let m = max(a.m, b.m);
    let i = select(a.i, b.i, b.m > a.m || (b.m == a.m && b.i < a.i));
    return ArgmaxSum(m, i, a.s * exp(a.m - m) + b.s * exp(b.m - m));
}
