// Channels-last group and instance norm's backward, pass 1 (norm_group.wgsl):
// backward_reduce_rows.wgsl's sums over a chunk of one sample's positions for
// a tile of channel items, each lane's deviation from its row's saved mean.

#import common
#import norm_partials
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read> save_mean: array<f32>;

@compute @workgroup_size(WG)
fn norm_group_grad(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let tile = rows_tile(t, w);
    let rows_step = WG / g.tile_x;
    let row0 = tile.k / g.chunks * (g.norm_params / g.norm_ka);
    var mean = splat(0.0);
    for (var l = 0u; l < W; l++) {
        mean = set_lane(mean, l, save_mean[row0 + (tile.cv_safe * W + l) / g.norm_ka]);
    }
    var s = grad_sums_zero();
    if (tile.in_range) {
        for (var r = tile.start; r < tile.end; r += rows_step) {
            let i = r * g.channels_v + tile.cv_safe;
            s = grad_sums_add(s, load_dy(i), load_x(i) - mean);
        }
    }
    let r = tree_sums(t, g.tile_x, s);
    if (tile.ty == 0u && tile.in_range) {
        for (var l = 0u; l < W; l++) {
            write_grad_partial(partial_index(tile.cv * W + l, tile.k), r, l);
        }
    }
}
