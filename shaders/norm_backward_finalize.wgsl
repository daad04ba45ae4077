// The normalization family's backward, pass 2 where rows span several chunks,
// one invocation per row: merges the row's partial sums in a fixed order and
// computes its backward values (norm_grad.wgsl).

#import common
#import grad_partials
#import epilogue
#import norm_grad

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(4) var<storage, read> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read> save_rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<f32>;

@compute @workgroup_size(WG)
fn norm_backward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = channel_index(gid, nwg);
    if (row >= g.norm_rows) {
        return;
    }
    var ms = 0.0;
    if (!rms()) {
        ms = save_mean[row_at(row)];
    }
    finish_grad_row(row, merge_grad_partials(row), ms, save_rstd[row_at(row)]);
}
