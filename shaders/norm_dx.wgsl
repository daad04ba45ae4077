// dx over one chunk of a row from the row's backward values `v` = (ms, k,
// slope, bias) (norm_grad.wgsl), shared by norm_backward.wgsl and
// norm_backward_dx.wgsl. Uses the bindings both declare: x, dy, gamma, dx.

#import norm_affine

fn write_dx(t: u32, rc: RowChunk, v: vec4<f32>) {
    if ((g.flags & FLAG_CHANNEL_RUNS) != 0u) {
        write_dx_runs(t, rc, v);
        return;
    }
    var w = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        let i = w.cur.index;
        store_dx(i, row_dx(v, load_dy(i), gamma_item(rc.k, w), load_x(i) - splat(v.x)));
        w = walk_step(w);
    }
}

// A row of channel runs (FLAG_CHANNEL_RUNS), run by run: the run's gamma
// loaded once (the same dx as write_dx's).
fn write_dx_runs(t: u32, rc: RowChunk, v: vec4<f32>) {
    for (var c = 0u; c < g.norm_ka; c++) {
        let gam = gamma_of(rc.k * g.norm_ka + c);
        let start = run_start(rc, c);
        for (var i = start + t; i < start + g.param_run; i += WG) {
            store_dx(i, row_dx(v, load_dy(i), gam, load_x(i) - splat(v.x)));
        }
    }
}

// dx of one item from its row's backward values v, its dy d, gamma gm and
// x - ms xm.
fn row_dx(v: vec4<f32>, d: V, gm: V, xm: V) -> V {
    return fma(splat(v.y), d * gm, fma(splat(v.z), xm, splat(v.w)));
}
