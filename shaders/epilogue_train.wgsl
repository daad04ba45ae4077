// A channel's training statistics, shared by finalize_train.wgsl (from merged
// partials) and forward_fused.wgsl (from values in registers). Uses the
// bindings both declare: gamma, beta, save_mean, save_invstd, running_mean,
// running_var.

#import affine

const F32_MAX: f32 = 3.40282347e38;

// Writes save_mean, save_invstd and the running statistics of channel c, and
// returns its (scale, bias). `offset` is mean - shift, `m2` the sum of squared
// deviations, `summed` the mean from the compensated plain sum.
fn finish_train(c: u32, shift: f32, offset: f32, m2: f32, summed: f32) -> vec2<f32> {
    let variance = m2 / g.count;
    let invstd = 1.0 / sqrt(variance + g.eps);
    // The shifted mean errs by about eps * |mean - shift|, the summed one by about
    // eps * |mean| (welford.wgsl): report the summed mean unless the shift is
    // closer to the mean than zero is, or the sum overflowed.
    var mean = shift + offset;
    if (abs(offset) >= abs(summed) && abs(summed) <= F32_MAX) {
        mean = summed;
    }
    save_mean[c] = mean;
    save_invstd[c] = invstd;
    if ((g.flags & FLAG_RUNNING) != 0u) {
        running_mean[c] = (1.0 - g.factor) * running_mean[c] + g.factor * mean;
        running_var[c] = (1.0 - g.factor) * running_var[c] + g.factor * (variance * g.unbias);
    }
    // A variance past f32's range would give invstd = 0 and y = beta, a silent
    // wrong answer; the channel's y is NaN instead (docs/SPEC.md, Accuracy).
    if (variance > F32_MAX) {
        let nan = bitcast<f32>(0x7fc00000u);
        return vec2<f32>(nan, nan);
    }
    return affine_scale_bias(c, invstd, offset);
}
