// Backward, before pass 1, one invocation per channel: puts the mean the
// gradient is taken at (save_mean, or running_mean in inference mode) in
// params[P_SHIFT], padded for the vec4 reads of the backward passes.

#import common
#import epilogue

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read> mean: array<f32>;

@compute @workgroup_size(WG)
fn backward_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c < g.channels) {
        params[P_SHIFT * g.c_pad + c] = mean[c];
    }
}
