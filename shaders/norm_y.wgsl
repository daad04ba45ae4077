// y over one chunk of a row from the row's forward values `p` (shift, rstd,
// bias: norm_finish.wgsl), shared by norm_forward.wgsl and norm_apply.wgsl.
// Uses the bindings both declare: x, y, gamma, beta.

#import norm_affine

fn write_y(t: u32, rc: RowChunk, p: vec4<f32>) {
    let affine = (g.flags & FLAG_AFFINE) != 0u;
    let shift_beta = affine && !rms();
    var cur = row_cursor(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        let xhat = fma(x[cur.index] - p.x, p.y, p.z);
        if (affine) {
            let a = affine_index(rc.k, cur.s);
            var b = 0.0;
            if (shift_beta) {
                b = beta[a];
            }
            y[cur.index] = fma(gamma[a], xhat, b);
        } else {
            y[cur.index] = xhat;
        }
        cur = cursor_step(cur);
    }
}
