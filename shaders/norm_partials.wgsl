// Gradient sums (grad_sums.wgsl) as one partial result of PARTIAL_FLOATS
// floats at `i`, in the `partials` binding of the kernels that import this:
// norm_backward.wgsl (per row chunk) and norm_param_partials.wgsl (per
// parameter chunk). `s` has one sum in every lane, or is scalar.

#import grad_sums

fn write_grad_partial(i: u32, s: GradSums) {
    partials[i] = lane(s.dy.value, 0u);
    partials[i + 1u] = lane(s.dy.comp, 0u);
    partials[i + 2u] = lane(s.dyx.value, 0u);
    partials[i + 3u] = lane(s.dyx.comp, 0u);
    partials[i + 4u] = lane(s.xm.value, 0u);
    partials[i + 5u] = lane(s.xm.comp, 0u);
}
