// Backward in one dispatch for channels many and short, on adapters whose
// workgroups are a few SIMD lanes (src/plan.rs: Plan::lanes_grid): invocation
// t of workgroup w takes channel item w * WG + t whole (one channel, or four
// channels of a row where S == 1). It sums dy, dy * (x - mean) and x - mean
// (lanes_grads.wgsl) as backward_reduce_lanes.wgsl does, finishes the channel as
// backward_finalize.wgsl does, and writes dx as backward_dx.wgsl does, reading
// x and dy a second time while they are still in the host's caches: no
// partials, no parameter buffer. `mean` is save_mean in training,
// running_mean in inference; `invstd_or_var` save_invstd or running_var.
// Bindings 5 and 6 are the fused epilogue's z and dresidual (upstream_masked.wgsl,
// dresidual_store.wgsl).

#import common
#import lanes_grads
#import dresidual
#import dx_coeffs

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(3) var<storage, read_write> dx: array<TensorOut>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(7) var<storage, read> invstd_or_var: array<f32>;
@group(0) @binding(8) var<storage, read> gamma: array<f32>;
@group(0) @binding(9) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(WG)
fn backward_lanes(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cv = group_index(wid, nwg) * WG + t;
    if (cv >= g.channels_v) {
        return;
    }
    // Along S the lanes of V are one channel's values; along C four channels.
    let per_item = select(1u, W, g.inner == 1u);
    var m = splat(mean[cv * per_item]);
    for (var l = 1u; l < per_item; l++) {
        m = set_lane(m, l, mean[cv * per_item + l]);
    }
    let start = cv * g.inner_v;
    var sums = lanes_grad_sums(start, m);
    if (g.inner > 1u) {
        sums = grad_sums_lanes(sums);
    }
    let sum_dy = comp_sum(sums.dy);
    let sum_dyx = comp_sum(sums.dyx);
    let sum_xm = comp_sum(sums.xm);
    var k = splat(0.0);
    var slope = splat(0.0);
    var bias = splat(0.0);
    for (var l = 0u; l < per_item; l++) {
        let c = cv * per_item + l;
        let kl = device_dx_coeffs(c, lane(sum_dy, l), lane(sum_dyx, l), lane(sum_xm, l), invstd_or_var[c]);
        k = set_lane(k, l, kl.x);
        slope = set_lane(slope, l, kl.y);
        bias = set_lane(bias, l, kl.z);
    }
    if (g.inner > 1u) {
        k = splat(lane(k, 0u));
        slope = splat(lane(slope, 0u));
        bias = splat(lane(bias, 0u));
    }
    var s = 0u;
    var index = start;
    for (var j = 0u; j < g.items; j++) {
        let d = upstream(index);
        write_dresidual(index, d);
        store_dx(index, fma(k, d, fma(slope, load_x(index) - m, bias)));
        index++;
        s++;
        if (s == g.inner_v) {
            s = 0u;
            index += g.slice - g.inner_v;
        }
    }
}
