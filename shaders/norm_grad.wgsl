// A row's backward values from its gradient sums, shared by norm_backward.wgsl
// (a row in one chunk) and norm_backward_finalize.wgsl (merged chunks). `s`
// sums dy * gamma, dy * gamma * (x - ms) and x - ms, with ms the saved mean
// (0 for RMS norm). As the batch-norm backward does (backward_finalize.wgsl),
// delta = mean(x) - ms corrects for the rounding of ms, and a row of two
// values takes the exact closed form dx = k * eps * rstd^2 * (dy * gamma - mean),
// where the textbook formula cancels to noise (docs/SPEC.md); so does RMS norm
// over one value, dx = k * eps * rstd^2 * dy * gamma.
// Writes the row's backward values into `params`; returns (ms, k, slope, bias)
// of dx = k * dy * gamma + slope * (x - ms) + bias.

#import grad_sums
#import norm

// `s` has the row's sums in every lane (grad_sums_lanes), or is scalar.
fn finish_grad_row(row: u32, s: GradSums, ms: f32, rstd: f32) -> vec4<f32> {
    let n = g.count;
    let sum_dy = lane(comp_sum(s.dy), 0u);
    var delta = 0.0;
    var sum_dyx = lane(comp_sum(s.dyx), 0u);
    if (!rms()) {
        delta = lane(comp_sum(s.xm), 0u) / n;
        sum_dyx = fma(-delta, sum_dy, sum_dyx);
    }
    var k = rstd;
    var slope = -k * rstd * (sum_dyx * rstd) / n;
    var bias = -slope * delta;
    if (rms() && n == 1.0) {
        k = k * g.eps * rstd * rstd;
        slope = 0.0;
    }
    if (!rms()) {
        if (n == 2.0) {
            k = k * g.eps * rstd * rstd;
            slope = 0.0;
            bias = -k * sum_dy / n;
        } else {
            bias = fma(-slope, delta, -k * sum_dy / n);
        }
    }
    let i = row_at(row) * NORM_ROW_FLOATS;
    params[i + R_SHIFT] = ms;
    params[i + R_RSTD] = rstd;
    params[i + R_DELTA] = delta;
    params[i + R_K] = k;
    params[i + R_SLOPE] = slope;
    params[i + R_BIAS] = bias;
    return vec4<f32>(ms, k, slope, bias);
}
