// Gradient sums (grad_sums.wgsl) as one partial result of PARTIAL_FLOATS
// floats at `i`, in the `partials` binding of the kernels that import this:
// norm_backward.wgsl (per row chunk) and norm_param_partials.wgsl (per
// parameter chunk): lane l of `s`.

#import grad_sums

fn write_grad_partial(i: u32, s: GradSums, l: u32) {
    partials[i] = lane(s.dy.value, l);
    partials[i + 1u] = lane(s.dy.comp, l);
    partials[i + 2u] = lane(s.dyx.value, l);
    partials[i + 3u] = lane(s.dyx.comp, l);
    partials[i + 4u] = lane(s.xm.value, l);
    partials[i + 5u] = lane(s.xm.comp, l);
}
