// dx over one chunk of a row from the row's backward values `v` = (ms, k,
// slope, bias) (norm_grad.wgsl), shared by norm_backward.wgsl and
// norm_backward_dx.wgsl. Uses the bindings both declare: x, dy, gamma, dx.

#import norm_affine

fn write_dx(t: u32, rc: RowChunk, v: vec4<f32>) {
    var cur = row_cursor(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        let d = dy[cur.index] * gamma_at(rc.k, cur.s);
        dx[cur.index] = fma(v.y, d, fma(v.z, x[cur.index] - v.x, v.w));
        cur = cursor_step(cur);
    }
}
