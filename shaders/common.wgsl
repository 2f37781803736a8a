// Shared prelude of every flint kernel: the f16 extension when any operand is f16, and the
// linear workgroup index of grids that the host split into 2D (see Device::grid).
#if ENABLE_F16
enable f16;
#endif

fn linear_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}
