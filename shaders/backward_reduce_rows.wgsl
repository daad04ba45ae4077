#import backward_reduce

// S == 1: a workgroup sums a chunk of rows for a tile of channel items.
@compute @workgroup_size(WG)
fn backward_reduce_rows(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let tile = rows_tile(t, w);
    let rows_step = WG / g.tile_x;
    let mean = param(P_SHIFT, tile.cv_safe);
    var s = grad_sums_zero();
    if (tile.in_range) {
        for (var r = tile.start; r < tile.end; r += rows_step) {
            let i = r * g.channels_v + tile.cv_safe;
            s = grad_sums_add(s, upstream(i), load_x(i) - mean);
        }
    }
    let r = tree_sums(t, g.tile_x, s);
    if (tile.ty == 0u && tile.in_range) {
        for (var l = 0u; l < W; l++) {
            write_partial(tile.cv * W + l, tile.k, r, l);
        }
    }
}
