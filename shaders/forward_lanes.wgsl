// Training forward in one dispatch for channels many and short, on adapters
// whose workgroups are a few SIMD lanes (src/plan.rs: Plan::lanes_grid):
// invocation t of workgroup w takes channel item w * WG + t whole (one
// channel, or four channels of a row where S == 1). It reduces the item's
// values as stats_lanes.wgsl does (lanes_stats.wgsl: blocks of shifted sums merged
// by Chan's formula), finishes the channel as finalize_train.wgsl does, and
// writes y as apply.wgsl does, reading x a second time while its values are
// still in the host's caches: no partials, no parameter buffer, no tree.

#import common
#import lanes_stats
#import epilogue_train
#import residual

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<TensorOut>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;

@compute @workgroup_size(WG)
fn forward_lanes(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cv = group_index(wid, nwg) * WG + t;
    if (cv >= g.channels_v) {
        return;
    }
    let start = cv * g.inner_v;
    let first = load_x(start);
    // Along S the lanes of V are one channel's values, shifted by its first;
    // along C they are four channels, each shifted by its own.
    var shift = first;
    if (g.inner > 1u) {
        shift = splat(lane(first, 0u));
    }
    var acc = lanes_acc(start, first, shift);
    if (g.inner > 1u) {
        acc = merge_lanes(acc);
    }
    let summed = comp_sum(acc.total) / g.count;
    var scale = splat(0.0);
    var bias = splat(0.0);
    let per_item = select(1u, W, g.inner == 1u);
    for (var l = 0u; l < per_item; l++) {
        let sb = finish_train(cv * per_item + l, lane(shift, l), lane(acc.mean, l), lane(acc.m2, l), lane(summed, l));
        scale = set_lane(scale, l, sb.x);
        bias = set_lane(bias, l, sb.y);
    }
    if (g.inner > 1u) {
        scale = splat(lane(scale, 0u));
        bias = splat(lane(bias, 0u));
    }
    var s = 0u;
    var index = start;
    for (var j = 0u; j < g.items; j++) {
        store_y(index, finish(index, fma(load_x(index) - shift, scale, bias)));
        index++;
        s++;
        if (s == g.inner_v) {
            s = 0u;
            index += g.slice - g.inner_v;
        }
    }
}
