// Per-channel parameters. `params` holds arrays of c_pad floats (c_pad % 4 == 0).

// Channel c's value, splatted.
fn channel_param(which: u32, c: u32) -> V {
    let idx = which * g.c_pad + c;
    return splat(lane(params[idx / W], idx % W));
}

// The parameters of the items at position t of an o-slice: four channels'
// values at once when items run along C (S == 1), one channel's value splatted
// when they run along S.
fn param(which: u32, t: u32) -> V {
    if (g.inner == 1u) {
        return params[which * g.c_pad / W + t];
    }
    return channel_param(which, t / g.inner_v);
}
