// The normalization family's dgamma and dbeta, pass 2, one invocation per
// affine parameter: its chunks' partial sums (norm_param_partials.wgsl)
// merged in a fixed order. RMS norm has no beta.

#import common
#import epilogue
#import norm
#import grad_sums

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read> partials: array<f32>;

fn read_grad_partial(i: u32) -> GradSums {
    return GradSums(Comp(partials[i], partials[i + 1u]), Comp(partials[i + 2u], partials[i + 3u]), Comp(partials[i + 4u], partials[i + 5u]));
}

@compute @workgroup_size(WG)
fn norm_param_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let a = channel_index(gid, nwg);
    if (a >= g.norm_params) {
        return;
    }
    var s = grad_sums_zero();
    for (var k = 0u; k < g.param_chunks; k++) {
        s = grad_sums_merge(s, read_grad_partial(PARTIAL_FLOATS * (a * g.param_chunks + k)));
    }
    dgamma[a] = comp_sum(s.dyx);
    if (!rms()) {
        dbeta[a] = comp_sum(s.dy);
    }
}
