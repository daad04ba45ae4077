#import welford

// One invocation's walk over a whole channel item (stats_lanes.wgsl,
// forward_lanes.wgsl): its `g.items` items from `start`, row by row (inner_v
// items, then the next o-slice), in blocks of SUMS_BLOCK shifted sums merged
// into a Chan state relative to `shift`. Reads the kernel's `x` binding.
// The position is two plain variables, as in lanes_grads.wgsl.
fn lanes_acc(start: u32, first: V, shift: V) -> Acc {
    var acc = acc_zero();
    var s = 0u;
    var index = start;
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
        acc = merge(acc, sums_to_acc(sums, shift));
    }
    return acc;
}
