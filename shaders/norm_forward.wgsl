// The normalization family's forward, pass 1 (src/norms/): workgroup w reduces
// chunk w % chunks of row w / chunks to shifted, compensated Chan statistics
// (stats.wgsl's partial result). A row in one chunk is finished here: its
// statistics saved and y written by a second walk over the same values, which
// the workgroup has just read (x read once from memory); otherwise
// norm_forward_finalize.wgsl and norm_apply.wgsl follow.

#import stats
#import norm_finish
#import norm_y

@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read> gamma: array<V>;
@group(0) @binding(5) var<storage, read> beta: array<V>;
@group(0) @binding(6) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> save_rstd: array<f32>;
@group(0) @binding(8) var<storage, read_write> params: array<f32>;

var<workgroup> row_values: vec4<f32>;

@compute @workgroup_size(WG)
fn norm_forward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let rc = row_chunk(w);
    let shift = lane(x[row_cursor(rc, 0u).index], 0u);
    var cur = row_cursor(rc, rc.start + t);
    let first = x[min(cur.index, g.numel_v - 1u)];
    var acc = acc_zero();
    for (var j = rc.start + t; j < rc.end;) {
        var sums = sums_from(first);
        for (let block_end = min(rc.end, j + SUMS_BLOCK * WG); j < block_end; j += WG) {
            sums = add(sums, x[cur.index]);
            cur = cursor_step(cur);
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    let r = tree_acc(t, 1u, merge_lanes(acc));
    if (g.chunks > 1u) {
        if (t == 0u) {
            write_partial(rc.row, rc.chunk, r, 0u, shift);
        }
        return;
    }
    if (t == 0u) {
        row_values = finish_row(rc.row, shift, r);
    }
    workgroupBarrier();
    write_y(t, rc, row_values);
}
