// Instance norm's running statistics, one invocation per channel k: as
// PyTorch's InstanceNorm with track_running_stats, the batch's value is the
// average over the N instances (rows b * K + k, in order) of each instance's
// mean and variance (unbiased with g.unbias), weighted by running_factor().

#import common
#import epilogue
#import norm

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> save_mean: array<f32>;
@group(0) @binding(2) var<storage, read> params: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>;

@compute @workgroup_size(WG)
fn norm_running(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = channel_index(gid, nwg);
    if (k >= g.channels) {
        return;
    }
    var mean = 0.0;
    var variance = 0.0;
    for (var b = 0u; b < g.outer; b++) {
        let row = b * g.channels + k;
        mean += save_mean[row_at(row)];
        variance += params[row_at(row) * NORM_ROW_FLOATS + R_VAR];
    }
    let n = f32(g.outer);
    let factor = running_factor();
    running_mean[k] = (1.0 - factor) * running_mean[k] + factor * (mean / n);
    running_var[k] = (1.0 - factor) * running_var[k] + factor * (variance / n * g.unbias);
}
