// Synchronized backward, local phase, one invocation per channel: sums this
// device's partials (backward_reduce.wgsl) into the two sums the ranks add up
// (src/sync.rs): local[2 * c ..] = sum dy, sum dy * (x - save_mean).

#import common
#import compensated
#import epilogue

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(9) var<storage, read_write> local: array<f32>;

@compute @workgroup_size(WG)
fn backward_sync_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    var s_dy = comp_zero();
    var s_dyx = comp_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = PARTIAL_FLOATS * (c * g.chunk_stride + k);
        s_dy = comp_merge(s_dy, Comp(partials[i], partials[i + 1u]));
        s_dyx = comp_merge(s_dyx, Comp(partials[i + 2u], partials[i + 3u]));
    }
    local[2u * c] = comp_sum(s_dy);
    local[2u * c + 1u] = comp_sum(s_dyx);
}
