// Fused normalize-scale-shift, for training (batch statistics) and inference
// (running statistics): y = (x - shift) * scale + bias per channel, where
// finalize.wgsl folded the small offset mean - shift into bias. x - shift is exact
// for data near the shift, and both terms are O(1), so nothing cancels.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> params: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;

// Invocation t of the x grid owns position t of every o-slice, so its channel
// and parameters are fixed; the y grid splits the o-slices.
@compute @workgroup_size(WG)
fn apply(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var t = gid.x; t < g.slice; t += nwg.x * WG) {
        let shift = param(P_SHIFT, t);
        let scale = param(P_SCALE, t);
        let bias = param(P_BIAS, t);
        for (var o = wid.y; o < g.outer; o += nwg.y) {
            let i = o * g.slice + t;
            y[i] = fma(x[i] - shift, scale, bias);
        }
    }
}
