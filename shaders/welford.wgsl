// Running (count, mean, M2) states: Welford per element, Chan's formula to merge.
// Lanes of V are independent states that share one count.

struct Acc {
    n: f32,
    mean: V,
    m2: V,
}

fn acc_zero() -> Acc {
    return Acc(0.0, splat(0.0), splat(0.0));
}

fn push(a: Acc, v: V) -> Acc {
    let n = a.n + 1.0;
    let d = v - a.mean;
    let mean = a.mean + d / n;
    return Acc(n, mean, a.m2 + d * (v - mean));
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
    return Acc(n, a.mean + d * wb, a.m2 + b.m2 + d * d * (a.n * wb));
}

// Shifted sums of one invocation: d = v - k with k the invocation's first value,
// three operations per value. k is close to the data, so s2 - s1^2 / n loses
// little; the result becomes an Acc (mean relative to the caller's shift) before
// any merging. Used instead of push() where the per-value division costs time.
struct Sums {
    n: f32,
    k: V,
    s1: V,
    s2: V,
}

fn sums_from(k: V) -> Sums {
    return Sums(0.0, k, splat(0.0), splat(0.0));
}

fn add(a: Sums, v: V) -> Sums {
    let d = v - a.k;
    return Sums(a.n + 1.0, a.k, a.s1 + d, fma(d, d, a.s2));
}

// `base` is the shift the caller's Acc is relative to.
fn sums_to_acc(a: Sums, base: V) -> Acc {
    if (a.n == 0.0) {
        return acc_zero();
    }
    let mean = a.s1 / a.n;
    // Rounding can leave a tiny negative M2; select keeps a NaN, where max may not.
    let m2 = a.s2 - a.s1 * mean;
    return Acc(a.n, (a.k - base) + mean, select(m2, splat(0.0), m2 < splat(0.0)));
}

// The lanes of one state, all from one channel, merged into lane 0's channel state.
fn merge_lanes(a: Acc) -> Acc {
    var r = Acc(a.n, splat(lane(a.mean, 0u)), splat(lane(a.m2, 0u)));
    for (var l = 1u; l < W; l++) {
        r = merge(r, Acc(a.n, splat(lane(a.mean, l)), splat(lane(a.m2, l))));
    }
    return r;
}
