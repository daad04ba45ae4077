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

// The lanes of one state, all from one channel, merged into lane 0's channel state.
fn merge_lanes(a: Acc) -> Acc {
    var r = Acc(a.n, splat(lane(a.mean, 0u)), splat(lane(a.m2, 0u)));
    for (var l = 1u; l < W; l++) {
        r = merge(r, Acc(a.n, splat(lane(a.mean, l)), splat(lane(a.m2, l))));
    }
    return r;
}
