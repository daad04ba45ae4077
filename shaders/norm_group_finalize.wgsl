// Channels-last group and instance norm's forward, pass 2 (norm_group.wgsl),
// one invocation per row (sample n, group): merges the partials of the
// group's channels and the sample's chunks, channel by channel and chunk by
// chunk (a fixed order), finishes the row (norm_finish.wgsl) and writes the
// apply values of its channels.

#import common
#import epilogue
#import norm_finish
#import norm_group

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> save_rstd: array<f32>;
@group(0) @binding(8) var<storage, read_write> params: array<f32>;

@compute @workgroup_size(WG)
fn norm_group_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = channel_index(gid, nwg);
    if (row >= g.norm_rows) {
        return;
    }
    let start = group_row_start(row);
    let n = start.n;
    let c0 = start.c0;
    let k0 = start.k0;
    let shift = partials[partial_index(c0, k0) + 3u];
    var a = acc_zero();
    for (var c = c0; c < c0 + g.norm_ka; c++) {
        for (var k = k0; k < k0 + g.chunks; k++) {
            let i = partial_index(c, k);
            // Channels have their own shifts; the difference is exact for nearby values.
            let mean = (partials[i + 3u] - shift) + partials[i + 1u];
            a = merge(a, Acc(partials[i], mean, partials[i + 2u], Comp(partials[i + 4u], partials[i + 5u])));
        }
    }
    let p = finish_row(row, shift, a);
    let affine = (g.flags & FLAG_AFFINE) != 0u;
    let len = group_values_len();
    for (var c = c0; c < c0 + g.norm_ka; c++) {
        var scale = p.y;
        var offset = p.z;
        if (affine) {
            scale = gamma[c] * p.y;
            offset = fma(gamma[c], p.z, beta[c]);
        }
        let i = group_values_base() + n * g.norm_params + c;
        params[i] = p.x;
        params[i + len] = scale;
        params[i + 2u * len] = offset;
    }
}
