// gamma (and beta, norm_y.wgsl) of the item a RowWalk is at: vec4 items
// have four parameters in a row (norm_ld == 1, norm_ka % 4 == 0: one aligned
// vec4 of the parameter array) or one (norm_ld % 4 == 0: splatted);
// src/norms/mod.rs picks vec4 only then. Uses the `gamma` binding (array<V>)
// of the kernels that import it.

#import norm

// Index of the item's parameters in array<V>, or of its one parameter in array<f32>.
fn param_at(k: u32, w: RowWalk) -> u32 {
    return k * g.norm_ka + w.q;
}

// gamma of parameter a, splatted; 1 without affine parameters.
fn gamma_of(a: u32) -> V {
    if ((g.flags & FLAG_AFFINE) == 0u) {
        return splat(1.0);
    }
    return splat(lane(gamma[a / W], a % W));
}

// The first item of run c of a row of channel runs (FLAG_CHANNEL_RUNS); the
// run's parameter is rc.k * norm_ka + c.
fn run_start(rc: RowChunk, c: u32) -> u32 {
    return row_cursor(rc, 0u).index + c * g.param_run;
}

fn gamma_item(k: u32, w: RowWalk) -> V {
    let a = param_at(k, w);
    if ((g.flags & FLAG_AFFINE) != 0u && g.norm_ld == 1u) {
        return gamma[a / W];
    }
    return gamma_of(a);
}
