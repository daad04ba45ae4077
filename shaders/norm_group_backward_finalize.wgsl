// Channels-last group and instance norm's backward, pass 2 (norm_group.wgsl),
// one invocation per row (sample n, group): merges each of the group's
// channels' partial sums over the sample's chunks, weights the channel's by
// its gamma, sums the channels in order, finishes the row (norm_grad.wgsl)
// and writes the dx values of its channels.

#import common
#import epilogue
#import norm_grad
#import norm_group

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read> save_rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<f32>;

fn gamma_at(c: u32) -> f32 {
    if ((g.flags & FLAG_AFFINE) == 0u) {
        return 1.0;
    }
    return gamma[c];
}

@compute @workgroup_size(WG)
fn norm_group_backward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = channel_index(gid, nwg);
    if (row >= g.norm_rows) {
        return;
    }
    let start = group_row_start(row);
    let n = start.n;
    let c0 = start.c0;
    let k0 = start.k0;
    var s = grad_sums_zero();
    for (var c = c0; c < c0 + g.norm_ka; c++) {
        var sc = grad_sums_zero();
        for (var k = k0; k < k0 + g.chunks; k++) {
            let i = partial_index(c, k);
            sc = grad_sums_merge(sc, GradSums(Comp(partials[i], partials[i + 1u]), Comp(partials[i + 2u], partials[i + 3u]), Comp(partials[i + 4u], partials[i + 5u])));
        }
        let gc = gamma_at(c);
        s = GradSums(comp_add(s.dy, gc * comp_sum(sc.dy)), comp_add(s.dyx, gc * comp_sum(sc.dyx)), comp_merge(s.xm, sc.xm));
    }
    let ms = save_mean[row];
    let v = finish_grad_row(row, s, ms, save_rstd[row]);
    let len = group_values_len();
    for (var c = c0; c < c0 + g.norm_ka; c++) {
        let i = group_values_base() + n * g.norm_params + c;
        params[i] = v.x;
        params[i + len] = v.y * gamma_at(c);
        params[i + 2u * len] = v.z;
        params[i + 3u * len] = v.w;
    }
}
