#import backward_reduce

// S > 1: a workgroup sums one chunk of one channel's items.
@compute @workgroup_size(WG)
fn backward_reduce_inner(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let c = w / g.chunks;
    let k = w % g.chunks;
    let mean = channel_param(P_SHIFT, c);
    let end = min((k + 1u) * g.chunk_len, g.items);
    var s = grad_sums_zero();
    var cur = cursor_at(k * g.chunk_len + t, c);
    for (var j = k * g.chunk_len + t; j < end; j += WG) {
        s = grad_sums_add(s, upstream(cur.index), load_x(cur.index) - mean);
        cur = cursor_step(cur);
    }
    let r = tree_sums(t, 1u, grad_sums_lanes(s));
    if (t == 0u) {
        write_partial(c, k, r, 0u);
    }
}
