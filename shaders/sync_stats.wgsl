// Synchronized training forward, local phase, one invocation per channel:
// merges this device's partials (stats.wgsl) as finalize_train.wgsl does and
// writes the channel's local statistics for the merge across ranks (src/sync.rs):
// local[SYNC_LOCAL_FLOATS * c ..] = count, shift, mean - shift, M2, the mean
// from the compensated plain sum.

#import common
#import welford
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
    let base = PARTIAL_FLOATS * c * g.chunk_stride;
    let shift = partials[base + 3u];
    var a = acc_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = base + PARTIAL_FLOATS * k;
        let mean = (partials[i + 3u] - shift) + partials[i + 1u];
        a = merge(a, Acc(partials[i], mean, partials[i + 2u], Comp(partials[i + 4u], partials[i + 5u])));
    }
    let o = SYNC_LOCAL_FLOATS * c;
    local[o] = a.n;
    local[o + 1u] = shift;
    local[o + 2u] = a.mean;
    local[o + 3u] = a.m2;
    local[o + 4u] = comp_sum(a.total) / a.n;
}
