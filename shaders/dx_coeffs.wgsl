// The backward's per-channel results, shared by backward_finalize.wgsl (from
// one device's partials), backward_finalize_sync.wgsl (from sums over ranks)
// and backward_lanes.wgsl (from one invocation's sums): dgamma, dbeta and the
// coefficients (k, slope, bias) of dx = k * dy + slope * (x - mean) + bias, i.e.
// training:  gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)
// inference: gamma * dy / sqrt(running_var + eps).
// Uses the bindings all three declare: gamma, dgamma, dbeta.
//
// `sum_dyx` is sum dy * (x - mean) at the true mean, `delta` the mean minus
// the shift the dx pass subtracts (a rounded save_mean), `m` the values per
// channel. With m = 2 the textbook dx is a residual of order eps / var of dy
// that f32 cannot resolve; there dx = k * eps * invstd^2 * (dy - mean(dy))
// exactly (docs/SPEC.md, Backward).
fn dx_coeffs(c: u32, sum_dy: f32, sum_dyx: f32, delta: f32, m: f32, invstd: f32, inference: bool) -> vec3<f32> {
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
    return vec3<f32>(k, slope, bias);
}

// dx_coeffs of one device's sums of channel c: dy, dy * (x - shift) and
// x - shift, the shift being the mean the gradient is taken at as the dx pass
// subtracts it; `invstd_or_var` is save_invstd in training, running_var in
// inference. Training takes the gradient at the batch's mean, of which
// save_mean is an f32 rounding: delta = mean(x - save_mean), from the exact
// differences, corrects sum dy * (x - save_mean) by delta * sum dy and moves
// the dx coefficients by it, so nothing depends on how save_mean was rounded.
fn device_dx_coeffs(c: u32, sum_dy: f32, sum_dyx: f32, sum_xm: f32, invstd_or_var: f32) -> vec3<f32> {
    let inference = (g.flags & FLAG_INFERENCE) != 0u;
    var invstd = invstd_or_var;
    var delta = 0.0;
    if (inference) {
        invstd = 1.0 / sqrt(invstd_or_var + g.eps);
    } else {
        delta = sum_xm / g.count;
    }
    return dx_coeffs(c, sum_dy, fma(-delta, sum_dy, sum_dyx), delta, g.count, invstd, inference);
}
