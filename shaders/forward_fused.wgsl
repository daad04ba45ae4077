// Training forward in one pass, for channels whose values fit in registers
// (small spatial sizes, BatchNorm1d): x is read once, y written once.
//
// Each channel item (one channel, or four channels of a row in the vec4 rows
// variant) gets `fused_lanes` invocations; lane l holds items l, l + lanes, ...
// (at most FUSED_ITEMS) of the channel. Two fixed trees over the lanes give the sums of
// x - shift (with the compensated plain sum of x, for means near zero) and then
// of the squared deviations from the mean, computed from the held values: the
// two-pass variance, exact in f32 for data far from zero as docs/SPEC.md asks.
// Lane 0 finishes the channel as finalize_train.wgsl does and broadcasts (scale, bias).

#import common
#import compensated
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

var<workgroup> w_sum: array<V, WG>;
var<workgroup> w_total: array<Comp, WG>;
var<workgroup> w_scale: array<V, WG>;
var<workgroup> w_bias: array<V, WG>;

// Where an invocation works: channel item cv, lane `lane` of g.fused_lanes,
// whose neighbour lanes sit `step` invocations apart.
struct Place {
    t: u32,
    cv: u32,
    lane: u32,
    step: u32,
}

// Item j of channel item cv: row j / inner_v, position j % inner_v (S == 1:
// inner_v = 1 and the rows are slice = channels_v items apart).
fn item_index(cv: u32, j: u32) -> u32 {
    let o = j / g.inner_v;
    return o * g.slice + cv * g.inner_v + (j - o * g.inner_v);
}

// Along S the lanes of V are one channel's values and add up; along C they
// are four channels and stay apart.
fn channel_sum(v: V) -> V {
    if (g.inner == 1u) {
        return v;
    }
    var s = lane(v, 0u);
    for (var l = 1u; l < W; l++) {
        s += lane(v, l);
    }
    return splat(s);
}

fn channel_comp(a: Comp) -> Comp {
    if (g.inner == 1u) {
        return a;
    }
    return comp_lanes(a);
}

// The sum over the lanes of p's channel item, in every lane. The barriers sit
// in uniform control flow: g.fused_lanes is uniform.
fn lanes_sum(p: Place, v: V) -> V {
    w_sum[p.t] = v;
    workgroupBarrier();
    for (var stride = g.fused_lanes / 2u; stride > 0u; stride >>= 1u) {
        if (p.lane < stride) {
            w_sum[p.t] = w_sum[p.t] + w_sum[p.t + stride * p.step];
        }
        workgroupBarrier();
    }
    let r = w_sum[p.t - p.lane * p.step];
    workgroupBarrier();
    return r;
}

fn lanes_comp(p: Place, a: Comp) -> Comp {
    w_total[p.t] = a;
    workgroupBarrier();
    for (var stride = g.fused_lanes / 2u; stride > 0u; stride >>= 1u) {
        if (p.lane < stride) {
            w_total[p.t] = comp_merge(w_total[p.t], w_total[p.t + stride * p.step]);
        }
        workgroupBarrier();
    }
    let r = w_total[p.t - p.lane * p.step];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn forward_fused(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.fused_groups) {
        return;
    }
    let tile = WG / g.fused_lanes;
    var p = Place(t, w * tile + t / g.fused_lanes, t % g.fused_lanes, 1u);
    if (g.inner == 1u) {
        // Channel items side by side, so that a row's loads are contiguous.
        p = Place(t, w * tile + t % tile, t / tile, tile);
    }
    let in_range = p.cv < g.channels_v;
    let cv = min(p.cv, g.channels_v - 1u);
    var shift = load_x(item_index(cv, 0u));
    if (g.inner > 1u) {
        shift = splat(lane(shift, 0u));
    }

    var d: array<V, FUSED_ITEMS>;
    var s1 = splat(0.0);
    var total = comp_zero();
    for (var i = 0u; i < FUSED_ITEMS; i++) {
        let j = p.lane + i * g.fused_lanes;
        if (in_range && j < g.items) {
            let v = load_x(item_index(cv, j));
            d[i] = v - shift;
            s1 += d[i];
            total = comp_add(total, v);
        }
    }
    let offset = lanes_sum(p, channel_sum(s1)) / g.count;
    let summed = comp_sum(lanes_comp(p, channel_comp(total))) / g.count;
    var s2 = splat(0.0);
    for (var i = 0u; i < FUSED_ITEMS; i++) {
        let j = p.lane + i * g.fused_lanes;
        if (in_range && j < g.items) {
            let e = d[i] - offset;
            s2 = fma(e, e, s2);
        }
    }
    let m2 = lanes_sum(p, channel_sum(s2));

    if (p.lane == 0u && in_range) {
        var scale = splat(0.0);
        var bias = splat(0.0);
        // One channel per item along S; W channels per item along C.
        let per_item = select(1u, W, g.inner == 1u);
        for (var l = 0u; l < per_item; l++) {
            let c = cv * per_item + l;
            let sb = finish_train(c, lane(shift, l), lane(offset, l), lane(m2, l), lane(summed, l));
            scale = set_lane(scale, l, sb.x);
            bias = set_lane(bias, l, sb.y);
        }
        if (g.inner > 1u) {
            scale = splat(lane(scale, 0u));
            bias = splat(lane(bias, 0u));
        }
        w_scale[t] = scale;
        w_bias[t] = bias;
    }
    workgroupBarrier();
    // Lanes past the last channel read a slot no leader wrote (workgroup
    // memory is not zeroed, src/pipelines.rs) and use none of it.
    let scale = w_scale[t - p.lane * p.step];
    let bias = w_bias[t - p.lane * p.step];
    for (var i = 0u; i < FUSED_ITEMS; i++) {
        let j = p.lane + i * g.fused_lanes;
        if (in_range && j < g.items) {
            let at = item_index(cv, j);
            store_y(at, finish(at, fma(d[i], scale, bias)));
        }
    }
}
