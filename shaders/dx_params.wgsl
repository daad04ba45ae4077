// The backward's per-channel results, shared by backward_finalize.wgsl (from
// one device's partials) and backward_finalize_sync.wgsl (from sums over
// ranks): dgamma, dbeta and the parameters of
// dx = k * dy + slope * (x - mean) + bias (backward_dx.wgsl), i.e.
// training:  gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)
// inference: gamma * dy / sqrt(running_var + eps).
// Uses the bindings both declare: gamma, dgamma, dbeta, params.
//
// `sum_dyx` is sum dy * (x - mean) at the true mean, `delta` the mean minus
// the shift the dx pass subtracts (params[P_SHIFT], a rounded save_mean), `m`
// the values per channel. With m = 2 the textbook dx is a residual of order
// eps / var of dy that f32 cannot resolve; there dx = k * eps * invstd^2 *
// (dy - mean(dy)) exactly (docs/SPEC.md, Backward).
fn write_dx_params(c: u32, sum_dy: f32, sum_dyx: f32, delta: f32, m: f32, invstd: f32, inference: bool) {
    let sum_dy_xhat = sum_dyx * invstd;
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
        if (m == 2.0) {
            k = k * g.eps * invstd * invstd;
            bias = -k * sum_dy / m;
        } else {
            slope = -k * invstd * sum_dy_xhat / m;
            bias = fma(-slope, delta, -k * sum_dy / m);
        }
    }
    params[P_OFFSET * g.c_pad + c] = k;
    params[P_SCALE * g.c_pad + c] = slope;
    params[P_BIAS * g.c_pad + c] = bias;
}
