// Synchronized training forward, apply phase, one invocation per channel:
// from the statistics merged across ranks (src/sync.rs), writes save_mean,
// save_invstd, the running statistics and the apply parameters, as
// finalize_train.wgsl does from one device's.
// merged[SYNC_STATS_FLOATS * c ..] = mean (rounded to f32), this device's
// shift (its channel's first value), mean minus that shift (rounded from the
// exact difference), the biased variance, and the factor the running
// variance's batch variance takes. Eight storage bindings, WebGPU's default limit.

#import common
#import epilogue
#import epilogue_train
#import apply_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read> merged: array<f32>;

@compute @workgroup_size(WG)
fn finalize_sync(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let s = SYNC_STATS_FLOATS * c;
    write_params(c, merged[s + 1u], save_train(c, merged[s], merged[s + 2u], merged[s + 3u], merged[s + 4u]));
}
