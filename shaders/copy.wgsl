// The roofline: a plain copy, y = x, vec4 per item. The benchmark divides the
// bytes it moves (read + write) by its time to get the adapter's usable bandwidth.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < g.numel_v; i += nwg.x * WG) {
        y[i] = x[i];
    }
}
