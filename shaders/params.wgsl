// Per-channel parameters of the items at position t of an o-slice: four
// channels' values at once when items run along C (S == 1), one channel's value
// splatted when they run along S. `params` holds arrays of c_pad floats
// (c_pad % 4 == 0).

fn param(which: u32, t: u32) -> V {
    if (g.inner == 1u) {
        return params[which * g.c_pad / W + t];
    }
    let idx = which * g.c_pad + t / g.inner_v;
    return splat(lane(params[idx / W], idx % W));
}
