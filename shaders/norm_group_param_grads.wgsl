// Channels-last group and instance norm's dgamma and dbeta (norm_group.wgsl),
// one invocation per channel c: over the samples in order, the sample's
// partial sums merged over its chunks; dgamma sums dy * xhat with
// xhat = ((x - ms) - delta) * rstd (the row's backward values, norm_grad.wgsl),
// as norm_param_partials.wgsl does; dbeta sums dy.

#import common
#import epilogue
#import grad_sums
#import norm

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read> partials: array<f32>;
@group(0) @binding(7) var<storage, read> params: array<f32>;

@compute @workgroup_size(WG)
fn norm_group_param_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.norm_params) {
        return;
    }
    let groups = g.norm_params / g.norm_ka;
    let samples = g.norm_rows / groups;
    var dg = comp_zero();
    var db = comp_zero();
    for (var n = 0u; n < samples; n++) {
        var s = grad_sums_zero();
        for (var k = n * g.chunks; k < (n + 1u) * g.chunks; k++) {
            let i = partial_index(c, k);
            s = grad_sums_merge(s, GradSums(Comp(partials[i], partials[i + 1u]), Comp(partials[i + 2u], partials[i + 3u]), Comp(partials[i + 4u], partials[i + 5u])));
        }
        let row = (n * groups + c / g.norm_ka) * NORM_ROW_FLOATS;
        let dyx = fma(-params[row + R_DELTA], comp_sum(s.dy), comp_sum(s.dyx));
        dg = comp_add(dg, params[row + R_RSTD] * dyx);
        db = comp_merge(db, s.dy);
    }
    dgamma[c] = comp_sum(dg);
    dbeta[c] = comp_sum(db);
}
