#import stats
#import lanes_stats

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
    write_partial(c, 0u, merge_lanes(lanes_acc(c * g.inner_v, first, splat(shift))), 0u, shift);
}
