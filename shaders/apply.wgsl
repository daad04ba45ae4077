// Fused normalize-scale-shift, for training (batch statistics) and inference
// (running statistics): y = ((x - shift) - offset) * scale + bias per channel.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> params: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<V>;

@compute @workgroup_size(WG)
fn apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < g.numel_v; i += grid_stride(nwg)) {
        let centered = (x[i] - param(P_SHIFT, i)) - param(P_OFFSET, i);
        y[i] = fma(centered, param(P_SCALE, i), param(P_BIAS, i));
    }
}
