#import grad_sums
#import upstream

// One invocation's walk over a whole channel item (backward_reduce_lanes.wgsl,
// backward_lanes.wgsl): the sums of dy, dy * (x - mean) and x - mean over its
// `g.items` items from `start`, row by row (inner_v items, then the next
// o-slice). Reads the kernel's `x` and `dy` bindings (and `z` through a fused
// activation). The position is two plain variables: carried as common.wgsl's
// Cursor through this loop, the pass measured 1.6 times slower on lavapipe.
fn lanes_grad_sums(start: u32, mean: V) -> GradSums {
    var sums = grad_sums_zero();
    var s = 0u;
    var index = start;
    for (var j = 0u; j < g.items; j++) {
        sums = grad_sums_add(sums, upstream(index), load_x(index) - mean);
        index++;
        s++;
        if (s == g.inner_v) {
            s = 0u;
            index += g.slice - g.inner_v;
        }
    }
    return sums;
}
