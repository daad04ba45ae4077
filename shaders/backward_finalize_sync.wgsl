// Synchronized backward, apply phase, one invocation per channel: writes
// dgamma, dbeta and the dx parameters (dx_coeffs.wgsl) from the sums over
// ranks (src/sync.rs): merged[SYNC_SUMS_FLOATS * c ..] = sum dy,
// sum dy * (x - mean) at the true mean, mean - save_mean, and the values per
// channel over all ranks.

#import common
#import epilogue
#import dx_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(9) var<storage, read> merged: array<f32>;

@compute @workgroup_size(WG)
fn backward_finalize_sync(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let s = SYNC_SUMS_FLOATS * c;
    write_dx_params(c, dx_coeffs(c, merged[s], merged[s + 1u], merged[s + 2u], merged[s + 3u], invstd[c], false));
}
