// Backward, pass 2, one invocation per channel: sums the partials in a fixed
// order and writes dgamma, dbeta and the dx parameters (dx_coeffs.wgsl).
// `invstd_or_var` is save_invstd in training, running_var in inference.

#import common
#import grad_partials
#import epilogue
#import dx_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> invstd_or_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;

@compute @workgroup_size(WG)
fn backward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let s = merge_grad_partials(c);
    write_dx_params(c, device_dx_coeffs(c, comp_sum(s.dy), comp_sum(s.dyx), comp_sum(s.xm), invstd_or_var[c]));
}
