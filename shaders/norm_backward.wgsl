// The normalization family's backward, pass 1 (src/norms/): workgroup w sums
// dy * gamma, dy * gamma * (x - ms) and x - ms over chunk w % chunks of row
// w / chunks (compensated sums, grad_sums.wgsl). A row in one chunk is finished
// here: its backward values computed and dx written by a second walk over the
// values the workgroup has just read; otherwise norm_backward_finalize.wgsl
// and norm_backward_dx.wgsl follow.

#import norm_grad
#import norm_dx
#import norm_partials
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> dy: array<V>;
@group(0) @binding(3) var<storage, read> gamma: array<V>;
@group(0) @binding(4) var<storage, read> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read> save_rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<V>;

var<workgroup> row_values: vec4<f32>;

@compute @workgroup_size(WG)
fn norm_backward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let rc = row_chunk(w);
    var ms = 0.0;
    if (!rms()) {
        ms = save_mean[rc.row];
    }
    var s = grad_sums_zero();
    var walk = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        s = grad_sums_add(s, dy[walk.cur.index] * gamma_item(rc.k, walk), x[walk.cur.index] - splat(ms));
        walk = walk_step(walk);
    }
    let r = tree_sums(t, 1u, grad_sums_lanes(s));
    if (g.chunks > 1u) {
        if (t == 0u) {
            write_grad_partial(partial_index(rc.row, w - rc.row * g.chunks), r, 0u);
        }
        return;
    }
    if (t == 0u) {
        row_values = finish_grad_row(rc.row, r, ms, save_rstd[rc.row]);
    }
    workgroupBarrier();
    write_dx(t, rc, row_values);
}
