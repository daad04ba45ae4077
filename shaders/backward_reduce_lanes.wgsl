#import backward_reduce

// S > 1 with channels many and short (src/plan.rs: Plan::channel_lanes): invocation t
// of workgroup w sums channel w * WG + t whole, row by row, as its one chunk;
// no tree.
@compute @workgroup_size(WG)
fn backward_reduce_lanes(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = group_index(wid, nwg) * WG + t;
    if (c >= g.channels) {
        return;
    }
    let mean = channel_param(P_SHIFT, c);
    var sums = grad_sums_zero();
    // The position as two plain variables: carried as common.wgsl's Cursor
    // through this loop, the pass measured 1.6 times slower on lavapipe.
    var s = 0u;
    var index = c * g.inner_v;
    for (var j = 0u; j < g.items; j++) {
        sums = grad_sums_add(sums, upstream(index), load_x(index) - mean);
        index++;
        s++;
        if (s == g.inner_v) {
            s = 0u;
            index += g.slice - g.inner_v;
        }
    }
    write_partial(c, 0u, grad_sums_lanes(sums), 0u);
}
