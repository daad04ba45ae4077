// dx over one chunk of a row from the row's backward values `v` = (ms, k,
// slope, bias) (norm_grad.wgsl), shared by norm_backward.wgsl and
// norm_backward_dx.wgsl. Uses the bindings both declare: x, dy, gamma, dx.

#import norm_affine

fn write_dx(t: u32, rc: RowChunk, v: vec4<f32>) {
    if ((g.flags & FLAG_CHANNEL_RUNS) != 0u) {
        write_dx_runs(t, rc, v);
        return;
    }
    let ms = splat(v.x);
    let k = splat(v.y);
    let slope = splat(v.z);
    let bias = splat(v.w);
    var w = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        let d = load_dy(w.cur.index) * gamma_item(rc.k, w);
        store_dx(w.cur.index, fma(k, d, fma(slope, load_x(w.cur.index) - ms, bias)));
        w = walk_step(w);
    }
}

// A row of channel runs (FLAG_CHANNEL_RUNS), run by run: the run's gamma
// loaded once (the same dx as write_dx's).
fn write_dx_runs(t: u32, rc: RowChunk, v: vec4<f32>) {
    let ms = splat(v.x);
    let k = splat(v.y);
    let slope = splat(v.z);
    let bias = splat(v.w);
    for (var c = 0u; c < g.norm_ka; c++) {
        let gam = gamma_of(rc.k * g.norm_ka + c);
        let start = run_start(rc, c);
        for (var i = start + t; i < start + g.param_run; i += WG) {
            store_dx(i, fma(k, load_dy(i) * gam, fma(slope, load_x(i) - ms, bias)));
        }
    }
}
