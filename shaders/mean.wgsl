// A statistic's mean from welford.wgsl's two estimates, shared by the batch
// norm epilogues (epilogue_train.wgsl) and the normalization family (norm_finish.wgsl).

#import float_bits

// The mean to report: the shifted one errs by about eps * |mean - shift|, the
// summed one by about eps * |mean| (welford.wgsl), so the summed one unless the
// shift is closer to the mean than zero is, or the sum overflowed.
fn better_mean(shift: f32, offset: f32, summed: f32) -> f32 {
    if (abs(offset) >= abs(summed) && finite(summed)) {
        return summed;
    }
    return shift + offset;
}
