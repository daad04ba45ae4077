// Training forward, pass 2, one invocation per channel: merges the channel's
// partials (stats.wgsl) in a fixed order, writes save_mean, save_invstd, the
// running statistics and the apply parameters. The apply pass computes
// y = (x - shift) * scale + bias, with the offset mean - shift folded into
// bias = beta - offset * scale.

#import common
#import stats_partials
#import epilogue
#import epilogue_train
#import apply_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;

@compute @workgroup_size(WG)
fn finalize_train(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let s = merge_stats_partials(c);
    write_params(c, s.shift, finish_train(c, s.shift, s.acc.mean, s.acc.m2, comp_sum(s.acc.total) / g.count));
}
