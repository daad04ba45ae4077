// Gradient sums (grad_sums.wgsl) as one partial result of PARTIAL_FLOATS
// floats at `i`, in the `partials` binding of the kernels that import this:
// norm_backward.wgsl (per row chunk) and norm_param_partials.wgsl (per parameter chunk).

#import grad_sums

fn write_grad_partial(i: u32, s: GradSums) {
    partials[i] = s.dy.value;
    partials[i + 1u] = s.dy.comp;
    partials[i + 2u] = s.dyx.value;
    partials[i + 3u] = s.dyx.comp;
    partials[i + 4u] = s.xm.value;
    partials[i + 5u] = s.xm.comp;
}

fn read_grad_partial(i: u32) -> GradSums {
    return GradSums(Comp(partials[i], partials[i + 1u]), Comp(partials[i + 2u], partials[i + 3u]), Comp(partials[i + 4u], partials[i + 5u]));
}
