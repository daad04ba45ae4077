// y over one chunk of a row from the row's forward values `p` (shift, rstd,
// bias: norm_finish.wgsl), shared by norm_forward.wgsl and norm_apply.wgsl.
// Uses the bindings both declare: x, y, gamma, beta.

#import norm_affine

fn beta_item(k: u32, w: RowWalk) -> V {
    let a = param_at(k, w);
    if (g.norm_ld == 1u) {
        return beta[a / W];
    }
    return splat(lane(beta[a / W], a % W));
}

fn write_y(t: u32, rc: RowChunk, p: vec4<f32>) {
    if ((g.flags & FLAG_CHANNEL_RUNS) != 0u) {
        write_y_runs(t, rc, p);
        return;
    }
    let affine = (g.flags & FLAG_AFFINE) != 0u;
    let shift_beta = affine && !rms();
    let shift = splat(p.x);
    let rstd = splat(p.y);
    let bias = splat(p.z);
    var w = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        let xhat = fma(load_x(w.cur.index) - shift, rstd, bias);
        if (affine) {
            var b = splat(0.0);
            if (shift_beta) {
                b = beta_item(rc.k, w);
            }
            store_y(w.cur.index, fma(gamma_item(rc.k, w), xhat, b));
        } else {
            store_y(w.cur.index, xhat);
        }
        w = walk_step(w);
    }
}

// A row of channel runs (FLAG_CHANNEL_RUNS), run by run: the run's gamma and
// beta loaded once (the same y as write_y's).
fn write_y_runs(t: u32, rc: RowChunk, p: vec4<f32>) {
    let affine = (g.flags & FLAG_AFFINE) != 0u;
    let shift_beta = affine && !rms();
    let shift = splat(p.x);
    let rstd = splat(p.y);
    let bias = splat(p.z);
    for (var c = 0u; c < g.norm_ka; c++) {
        let a = rc.k * g.norm_ka + c;
        let gm = gamma_of(a);
        var b = splat(0.0);
        if (shift_beta) {
            b = splat(lane(beta[a / W], a % W));
        }
        let start = run_start(rc, c);
        for (var i = start + t; i < start + g.param_run; i += WG) {
            let xhat = fma(load_x(i) - shift, rstd, bias);
            if (affine) {
                store_y(i, fma(gm, xhat, b));
            } else {
                store_y(i, xhat);
            }
        }
    }
}
