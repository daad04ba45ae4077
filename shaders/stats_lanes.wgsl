#import stats

// S > 1 with channels many and short (src/plan.rs: Plan::channel_lanes): invocation t
// of workgroup w reduces channel w * WG + t whole, row by row, as its one
// chunk, in the same blocks of SUMS_BLOCK items and Chan merges as a lane of
// stats_inner.wgsl; no tree.
@compute @workgroup_size(WG)
fn stats_lanes(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = group_index(wid, nwg) * WG + t;
    if (c >= g.channels) {
        return;
    }
    let first = load_x(c * g.inner_v);
    let shift = lane(first, 0u);
    var acc = acc_zero();
    var s = 0u;
    var index = c * g.inner_v;
    for (var j = 0u; j < g.items;) {
        var sums = sums_from(first);
        for (let block_end = min(g.items, j + SUMS_BLOCK); j < block_end; j++) {
            sums = add(sums, load_x(index));
            index++;
            s++;
            if (s == g.inner_v) {
                s = 0u;
                index += g.slice - g.inner_v;
            }
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    write_partial(c, 0u, merge_lanes(acc), 0u, shift);
}
