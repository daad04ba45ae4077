// Channels-last group and instance norm's backward, pass 3 (norm_group.wgsl):
// dx over the rows of chunk k of a channel tile, each invocation with its
// channel item's dx values in registers.

#import common
#import norm_group

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(7) var<storage, read> params: array<V>;
@group(0) @binding(8) var<storage, read_write> dx: array<TensorOut>;

@compute @workgroup_size(WG)
fn norm_group_dx(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let tile = rows_tile(t, w);
    if (!tile.in_range) {
        return;
    }
    let rows_step = WG / g.tile_x;
    let len = group_values_len() / W;
    let i = (group_values_base() + tile.k / g.chunks * g.norm_params) / W + tile.cv;
    let ms = params[i];
    let k = params[i + len];
    let slope = params[i + 2u * len];
    let bias = params[i + 3u * len];
    for (var r = tile.start; r < tile.end; r += rows_step) {
        let j = r * g.channels_v + tile.cv;
        store_dx(j, fma(k, load_dy(j), fma(slope, load_x(j) - ms, bias)));
    }
}
