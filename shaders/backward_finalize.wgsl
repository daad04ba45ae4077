// Backward, pass 2, one invocation per channel: sums the partials in a fixed
// order into dbeta and dgamma, and writes the dx parameters so that
// dx = k * dy + slope * (x - mean) + bias (backward_dx.wgsl), i.e.
// training:  gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)
// inference: gamma * dy / sqrt(running_var + eps).
// `invstd_or_var` is save_invstd in training, running_var in inference.
//
// Training mode takes the gradient at the batch's mean, of which save_mean is
// an f32 rounding: delta = mean(x - save_mean), from the exact differences,
// corrects sum dy * (x - save_mean) by delta * sum dy and moves the dx
// parameters by it, so nothing depends on how save_mean was rounded.
// With m = 2 the textbook dx is a residual of order eps / var of dy that f32
// cannot resolve; there dx = k * eps * invstd^2 * (dy - mean(dy)) exactly
// (docs/SPEC.md, Backward).

#import common
#import compensated
#import epilogue

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> invstd_or_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;

@compute @workgroup_size(WG)
fn backward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    // Partials as backward_reduce.wgsl writes them.
    var s_dy = comp_zero();
    var s_dyx = comp_zero();
    var s_xm = comp_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = PARTIAL_FLOATS * (c * g.chunk_stride + k);
        s_dy = comp_merge(s_dy, Comp(partials[i], partials[i + 1u]));
        s_dyx = comp_merge(s_dyx, Comp(partials[i + 2u], partials[i + 3u]));
        s_xm = comp_merge(s_xm, Comp(partials[i + 4u], partials[i + 5u]));
    }
    let sum_dy = comp_sum(s_dy);
    let inference = (g.flags & FLAG_INFERENCE) != 0u;
    var invstd = invstd_or_var[c];
    var delta = 0.0;
    if (inference) {
        invstd = 1.0 / sqrt(invstd_or_var[c] + g.eps);
    } else {
        delta = comp_sum(s_xm) / g.count;
    }
    let sum_dy_xhat = fma(-delta, sum_dy, comp_sum(s_dyx)) * invstd;
    if ((g.flags & FLAG_WRITE_GRADS) != 0u) {
        dbeta[c] = sum_dy;
        dgamma[c] = sum_dy_xhat;
    }
    var k = invstd;
    if ((g.flags & FLAG_AFFINE) != 0u) {
        k = gamma[c] * invstd;
    }
    var slope = 0.0;
    var bias = 0.0;
    if (!inference) {
        if (g.count == 2.0) {
            k = k * g.eps * invstd * invstd;
            bias = -k * sum_dy / g.count;
        } else {
            slope = -k * invstd * sum_dy_xhat / g.count;
            bias = fma(-slope, delta, -k * sum_dy / g.count);
        }
    }
    params[P_OFFSET * g.c_pad + c] = k;
    params[P_SCALE * g.c_pad + c] = slope;
    params[P_BIAS * g.c_pad + c] = bias;
}
