// A channel's training statistics, shared by finalize_train.wgsl (from merged
// partials), forward_fused.wgsl (from values in registers) and
// finalize_sync.wgsl (from statistics merged across ranks). Uses the bindings
// they declare: gamma, beta, save_mean, save_invstd, running_mean, running_var.

#import affine
#import mean

// Writes save_mean, save_invstd and the running statistics of channel c from
// its mean and biased variance (`unbias` scales the variance the running one
// averages), and returns (scale, bias) of y = (x - shift) * scale + bias,
// `offset` being mean - shift.
fn save_train(c: u32, mean: f32, offset: f32, variance: f32, unbias: f32) -> vec2<f32> {
    let invstd = 1.0 / sqrt(variance + g.eps);
    save_mean[c] = mean;
    save_invstd[c] = invstd;
    if ((g.flags & FLAG_RUNNING) != 0u) {
        let factor = running_factor();
        running_mean[c] = (1.0 - factor) * running_mean[c] + factor * mean;
        running_var[c] = (1.0 - factor) * running_var[c] + factor * (variance * unbias);
    }
    // A variance past f32's range would give invstd = 0 and y = beta, a silent
    // wrong answer; the channel's y is NaN instead (docs/SPEC.md, Accuracy).
    if (!finite(variance)) {
        let nan = nan_from(variance);
        return vec2<f32>(nan, nan);
    }
    return affine_scale_bias(c, invstd, offset);
}

// save_train for one device's statistics: `m2` the sum of squared deviations
// of the channel's g.count values, `summed` the mean from the compensated plain sum.
fn finish_train(c: u32, shift: f32, offset: f32, m2: f32, summed: f32) -> vec2<f32> {
    return save_train(c, better_mean(shift, offset, summed), offset, m2 / g.count, g.unbias);
}
