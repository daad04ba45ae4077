// Synchronized training forward, local phase, one invocation per channel:
// merges this device's partials (stats.wgsl) as finalize_train.wgsl does and
// writes the channel's local statistics for the merge across ranks (src/sync.rs):
// local[SYNC_LOCAL_FLOATS * c ..] = count, shift, mean - shift, M2, the mean
// from the compensated plain sum.

#import common
#import stats_partials
#import epilogue

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(9) var<storage, read_write> local: array<f32>;

@compute @workgroup_size(WG)
fn sync_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let s = merge_stats_partials(c);
    let o = SYNC_LOCAL_FLOATS * c;
    local[o] = s.acc.n;
    local[o + 1u] = s.shift;
    local[o + 2u] = s.acc.mean;
    local[o + 3u] = s.acc.m2;
    local[o + 4u] = comp_sum(s.acc.total) / s.acc.n;
}
