// Synchronized backward, local phase, one invocation per channel: sums this
// device's partials (backward_reduce.wgsl) into the two sums the ranks add up
// (src/sync.rs): local[2 * c ..] = sum dy, sum dy * (x - save_mean).

#import common
#import grad_partials
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
    let s = merge_grad_partials(c);
    local[2u * c] = comp_sum(s.dy);
    local[2u * c + 1u] = comp_sum(s.dyx);
}
