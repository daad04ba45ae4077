#import welford

// A channel's partial statistics (stats.wgsl) from the `partials` binding of
// the kernel that imports this, merged in a fixed order: its shift (the first
// partial's) and its state relative to that shift.
struct ChannelStats {
    shift: f32,
    acc: Acc,
}

fn merge_stats_partials(c: u32) -> ChannelStats {
    let base = PARTIAL_FLOATS * c * g.chunk_stride;
    let shift = partials[base + 3u];
    var a = acc_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = base + PARTIAL_FLOATS * k;
        // Windows of one tensor have their own shifts; the difference is exact for nearby values.
        let mean = (partials[i + 3u] - shift) + partials[i + 1u];
        a = merge(a, Acc(partials[i], mean, partials[i + 2u], Comp(partials[i + 4u], partials[i + 5u])));
    }
    return ChannelStats(shift, a);
}
