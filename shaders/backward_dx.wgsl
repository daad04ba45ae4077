// Backward, pass 2: dx = k * dy + slope * (x - mean) + bias per channel, with
// mean, k, slope and bias in params[P_SHIFT], [P_OFFSET], [P_SCALE], [P_BIAS]
// (written by backward_finalize).

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> dy: array<V>;
@group(0) @binding(3) var<storage, read> params: array<V>;
@group(0) @binding(4) var<storage, read_write> dx: array<V>;

// The same grid as apply.wgsl: fixed parameters per invocation, a loop over o.
@compute @workgroup_size(WG)
fn backward_dx(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var t = gid.x; t < g.slice; t += nwg.x * WG) {
        let mean = param(P_SHIFT, t);
        let k = param(P_OFFSET, t);
        let slope = param(P_SCALE, t);
        let bias = param(P_BIAS, t);
        for (var o = wid.y; o < g.outer; o += nwg.y) {
            let i = o * g.slice + t;
            dx[i] = fma(k, dy[i], fma(slope, x[i] - mean, bias));
        }
    }
}
