// Compensated sums. Sums that cancel (a mean near zero, dgamma small next to
// sum |dy * xhat|) lose eps * sum |terms| in plain f32, which is a large
// relative error of a small result; these keep it to about eps * |sum|.

// value - comp is the sum to about eps^2 of its terms.
struct Comp {
    value: V,
    comp: V,
}

fn comp_zero() -> Comp {
    return Comp(splat(0.0), splat(0.0));
}

// Neumaier's two-sum of two compensated sums: exact low part of value + value,
// whichever is larger. (Kahan's variant loses the compensation when a term
// dwarfs it, as in 1e8, 1, -1e8, 1. Knuth's branch-free two-sum, exact on
// paper, lost it on both Mesa adapters: a dgamma test in tests/backward.rs
// erred by 2.5e-5 against its 1e-5 bound, as if t - (t - a) had been folded
// to a.)
fn comp_merge(a: Comp, b: Comp) -> Comp {
    let t = a.value + b.value;
    let low = select((b.value - t) + a.value, (a.value - t) + b.value, abs(a.value) >= abs(b.value));
    return Comp(t, a.comp + b.comp - low);
}

fn comp_add(a: Comp, v: V) -> Comp {
    return comp_merge(a, Comp(v, splat(0.0)));
}

// Adds the product d * e, with its rounding error where fma is fused (GPUs).
// WGSL does not require fused fma and llvmpipe does not fuse it: there the
// product is rounded, and the sum errs by about eps * sqrt(sum of squared terms).
fn comp_add_product(a: Comp, d: V, e: V) -> Comp {
    let p = d * e;
    let r = comp_add(a, p);
    return Comp(r.value, r.comp - fma(d, e, -p));
}

fn comp_sum(a: Comp) -> V {
    return a.value - a.comp;
}

// The lanes of one compensated sum, all from one channel, summed into every lane.
fn comp_lanes(a: Comp) -> Comp {
    var r = Comp(splat(lane(a.value, 0u)), splat(lane(a.comp, 0u)));
    for (var l = 1u; l < W; l++) {
        r = comp_merge(r, Comp(splat(lane(a.value, l)), splat(lane(a.comp, l))));
    }
    return r;
}
