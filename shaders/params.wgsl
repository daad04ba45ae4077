// Reading per-channel parameters for an item: four channels' values at once
// when the item's lanes run along C, one channel's value splatted when they run
// along S. `params` holds arrays of c_pad floats (c_pad % 4 == 0).

fn param(which: u32, i: u32) -> V {
    if (g.inner == 1u) {
        return params[which * g.c_pad / W + i % g.channels_v];
    }
    let idx = which * g.c_pad + (i / g.inner_v) % g.channels;
    return splat(lane(params[idx / W], idx % W));
}

// Grid-stride loops cover any size with a bounded 1-D grid.
fn grid_stride(nwg: vec3<u32>) -> u32 {
    return nwg.x * WG;
}
