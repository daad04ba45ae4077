// The normalization family's forward, pass 2 where rows span several chunks,
// one invocation per row: merges the row's partials (stats_partials.wgsl) in a
// fixed order and finishes it (norm_finish.wgsl).

#import common
#import stats_partials
#import epilogue
#import norm_finish

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(6) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> save_rstd: array<f32>;
@group(0) @binding(8) var<storage, read_write> params: array<f32>;

@compute @workgroup_size(WG)
fn norm_forward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = channel_index(gid, nwg);
    if (row >= g.norm_rows) {
        return;
    }
    let s = merge_stats_partials(row);
    finish_row(row, s.shift, s.acc);
}
