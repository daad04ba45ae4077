// Inference forward, pass 1, one invocation per channel: folds the running
// statistics into the apply parameters. The subtraction x - running_mean stays
// exact for data near the running mean, which the folded y = k * x + b would
// lose (docs/SPEC.md, Numerics).

#import common
#import epilogue
#import affine
#import apply_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read> running_var: array<f32>;

@compute @workgroup_size(WG)
fn prepare_inference(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    write_params(c, running_mean[c], affine_scale_bias(c, 1.0 / sqrt(running_var[c] + g.eps), 0.0));
}
