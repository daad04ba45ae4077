#import grad_sums

// A channel's partial gradient sums (backward_reduce.wgsl) from the
// `partials` binding of the kernel that imports this, merged in a fixed order.
fn merge_grad_partials(c: u32) -> GradSums {
    var s = grad_sums_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = PARTIAL_FLOATS * (c * g.chunk_stride + k);
        s = grad_sums_merge(s, GradSums(Comp(partials[i], partials[i + 1u]), Comp(partials[i + 2u], partials[i + 3u]), Comp(partials[i + 4u], partials[i + 5u])));
    }
    return s;
}
