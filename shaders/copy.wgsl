// The roofline: a plain copy, y = x, vec4 per item. The benchmark divides the
// bytes it moves (read + write) by its time to get the adapter's usable bandwidth.
// Workgroup w copies part w of nwg.x contiguous parts, its lanes striding
// through it: one item per invocation when the grid is that large, long spans
// when it is small (which CPU adapters run faster).

#import common

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read_write> y: array<TensorOut>;

@compute @workgroup_size(WG)
fn copy(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let end = part_start(wid.x + 1u, nwg.x, g.numel_v);
    for (var i = part_start(wid.x, nwg.x, g.numel_v) + lid; i < end; i += WG) {
        store_y(i, load_x(i));
    }
}
