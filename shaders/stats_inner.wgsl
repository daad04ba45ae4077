#import stats

// S > 1: the items of channel c are rows of inner_v items, channels * inner_v apart.
@compute @workgroup_size(WG)
fn stats_inner(
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
    let shift = lane(load_x(c * g.inner_v), 0u);
    let end = min((k + 1u) * g.chunk_len, g.items);
    let start = k * g.chunk_len + t;
    var cur = cursor_at(start, c);
    let first = load_x(min(cur.index, g.numel_v - 1u));
    var acc = acc_zero();
    for (var j = start; j < end;) {
        var sums = sums_from(first);
        for (let block_end = min(end, j + SUMS_BLOCK * WG); j < block_end; j += WG) {
            sums = add(sums, load_x(cur.index));
            cur = cursor_step(cur);
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    let r = tree_acc(t, 1u, merge_lanes(acc));
    if (t == 0u) {
        write_partial(c, k, r, 0u, shift);
    }
}
