#import stats

// S == 1: row r holds channels_v items; thread (tx, ty) of a tile_x-wide tile
// walks rows ty, ty + WG / tile_x, ... of its chunk for channel item tx.
@compute @workgroup_size(WG)
fn stats_rows(
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
    // Shifted by the first row; for the normalization family's channels-last
    // plan (norm_group.wgsl, norm_o = S, 0 for batch norm) by the first row of
    // the chunk's sample, so that a NaN there stays in that sample's statistics.
    let shift = load_x(tile.k / g.chunks * g.norm_o * g.channels_v + tile.cv_safe);
    let first = load_x(min(tile.start, g.outer - 1u) * g.channels_v + tile.cv_safe);
    var acc = acc_zero();
    if (tile.in_range) {
        for (var r = tile.start; r < tile.end;) {
            var sums = sums_from(first);
            for (let block_end = min(tile.end, r + SUMS_BLOCK * rows_step); r < block_end; r += rows_step) {
                sums = add(sums, load_x(r * g.channels_v + tile.cv_safe));
            }
            acc = merge(acc, sums_to_acc(sums, shift));
        }
    }
    let r = tree_acc(t, g.tile_x, acc);
    if (tile.ty == 0u && tile.in_range) {
        for (var l = 0u; l < W; l++) {
            write_partial(tile.cv * W + l, tile.k, r, l, lane(shift, l));
        }
    }
}
