#import backward_reduce
#import lanes_grads

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
    write_partial(c, 0u, grad_sums_lanes(lanes_grad_sums(c * g.inner_v, channel_param(P_SHIFT, c))), 0u);
}
