#import compensated
#import float_bits

// (count, mean, M2) states merged with Chan's formula, plus the plain sum of
// the values. Lanes of V are independent states that share one count.
//
// The mean relative to a shift keeps x - mean exact for data far from zero;
// the plain sum gives a mean near zero to full relative precision, which the
// shifted mean cannot (its error is eps * |shift - mean|). finalize_train.wgsl
// reports whichever is better conditioned.

struct Acc {
    n: f32,
    mean: V,
    m2: V,
    total: Comp,
}

fn acc_zero() -> Acc {
    return Acc(0.0, splat(0.0), splat(0.0), comp_zero());
}

// M2 = M2a + M2b + delta^2 * na * nb / n. An empty side returns the other as it
// is: the formula would give 0 * inf = NaN when delta^2 overflows.
fn merge(a: Acc, b: Acc) -> Acc {
    if (b.n == 0.0) {
        return a;
    }
    if (a.n == 0.0) {
        return b;
    }
    let n = a.n + b.n;
    let wb = b.n / n;
    let d = b.mean - a.mean;
    return Acc(n, a.mean + d * wb, a.m2 + b.m2 + d * d * (a.n * wb), comp_merge(a.total, b.total));
}

// An invocation sums SUMS_BLOCK items (src/shaders.rs) in shifted form before
// merging them into its Chan state: s2 - s1^2 / n errs by up to about n * eps
// relative, so long runs (thousands of items a lane in 8-lane workgroups) are
// cut into blocks.

// Shifted sums of one invocation: d = v - k with k the invocation's first value,
// and the compensated plain sum of v. k is close to the data, so s2 - s1^2 / n loses
// little; the result becomes an Acc (mean relative to the caller's shift)
// before any merging.
struct Sums {
    n: f32,
    k: V,
    s1: V,
    s2: V,
    s0: Comp,
}

fn sums_from(k: V) -> Sums {
    return Sums(0.0, k, splat(0.0), splat(0.0), comp_zero());
}

fn add(a: Sums, v: V) -> Sums {
    let d = v - a.k;
    return Sums(a.n + 1.0, a.k, a.s1 + d, fma(d, d, a.s2), comp_add(a.s0, v));
}

// `base` is the shift the caller's Acc is relative to.
fn sums_to_acc(a: Sums, base: V) -> Acc {
    if (a.n == 0.0) {
        return acc_zero();
    }
    let mean = a.s1 / a.n;
    // Rounding can leave a tiny negative M2; an overflowed one is NaN and stays so.
    let m2 = a.s2 - a.s1 * mean;
    return Acc(a.n, (a.k - base) + mean, select(m2, splat(0.0), negative(m2)), a.s0);
}

// The lanes of one state, all from one channel, merged into lane 0's channel state.
fn merge_lanes(a: Acc) -> Acc {
    var r = Acc(a.n, splat(lane(a.mean, 0u)), splat(lane(a.m2, 0u)), comp_zero());
    for (var l = 1u; l < W; l++) {
        r = merge(r, Acc(a.n, splat(lane(a.mean, l)), splat(lane(a.m2, l)), comp_zero()));
    }
    r.total = comp_lanes(a.total);
    return r;
}
