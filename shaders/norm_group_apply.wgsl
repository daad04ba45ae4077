// Channels-last group and instance norm's forward, pass 3 (norm_group.wgsl):
// y over the rows of chunk k of a channel tile (rows_tile, as stats_rows.wgsl
// covers them), each invocation with its channel item's apply values in
// registers: one load of x per item.

#import common
#import norm_group

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(3) var<storage, read_write> y: array<TensorOut>;
@group(0) @binding(8) var<storage, read> params: array<V>;

@compute @workgroup_size(WG)
fn norm_group_apply(
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
    let shift = params[i];
    let scale = params[i + len];
    let offset = params[i + 2u * len];
    for (var r = tile.start; r < tile.end; r += rows_step) {
        let j = r * g.channels_v + tile.cv;
        store_y(j, fma(load_x(j) - shift, scale, offset));
    }
}
