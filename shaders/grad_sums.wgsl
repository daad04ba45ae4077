#import compensated

// The backward reduction's three compensated sums per channel: dy,
// dy * (x - mean) and x - mean. The last gives the residual mean(x) - mean of
// a rounded save_mean, which backward_finalize corrects dgamma and dx by.
struct GradSums {
    dy: Comp,
    dyx: Comp,
    xm: Comp,
}

fn grad_sums_zero() -> GradSums {
    return GradSums(comp_zero(), comp_zero(), comp_zero());
}

fn grad_sums_merge(a: GradSums, b: GradSums) -> GradSums {
    return GradSums(comp_merge(a.dy, b.dy), comp_merge(a.dyx, b.dyx), comp_merge(a.xm, b.xm));
}

// Adds one item: its upstream gradient d and its deviation e = x - mean.
fn grad_sums_add(a: GradSums, d: V, e: V) -> GradSums {
    return GradSums(comp_add(a.dy, d), comp_add_product(a.dyx, d, e), comp_add(a.xm, e));
}

// Adds one value to the parameter-gradient sums: d to dbeta's, d * xhat to
// dgamma's (xm is not summed there).
fn param_sums_add(a: GradSums, d: V, xhat: V) -> GradSums {
    return GradSums(comp_add(a.dy, d), comp_add_product(a.dyx, d, xhat), a.xm);
}

// The lanes of one state, all from one channel, summed into every lane.
fn grad_sums_lanes(a: GradSums) -> GradSums {
    return GradSums(comp_lanes(a.dy), comp_lanes(a.dyx), comp_lanes(a.xm));
}
