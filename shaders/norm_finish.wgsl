// A row's statistics from its merged state, shared by norm_forward.wgsl (a row
// in one chunk) and norm_forward_finalize.wgsl (merged chunks): writes
// save_mean (not for RMS norm) and save_rstd, and the row's forward values in
// `params`. Uses the bindings both declare: save_mean, save_rstd, params.
//
// `a` is relative to `shift`, the row's first value: x - shift is exact for
// data far from zero, and y = (x - shift) * rstd - (mean - shift) * rstd keeps
// it so (docs/SPEC.md, normalization family). RMS norm takes
// mean(x^2) = var + mean^2, two non-negative terms.

#import welford
#import mean
#import norm

// `a` has one state in every lane (merge_lanes), or is scalar.
fn finish_row(row: u32, shift: f32, a: Acc) -> vec4<f32> {
    let variance = lane(a.m2, 0u) / a.n;
    let mean = better_mean(shift, lane(a.mean, 0u), lane(comp_sum(a.total), 0u) / a.n);
    var p = vec4<f32>(shift, 0.0, 0.0, variance);
    var stat = variance;
    var offset = lane(a.mean, 0u);
    if (rms()) {
        stat = variance + mean * mean;
        p.x = 0.0;
        offset = 0.0;
    } else {
        save_mean[row_at(row)] = mean;
    }
    let rstd = 1.0 / sqrt(stat + g.eps);
    save_rstd[row_at(row)] = rstd;
    p.y = rstd;
    p.z = -offset * rstd;
    // A statistic past f32's range would give rstd = 0 and y = beta, a silent
    // wrong answer; the row's y is NaN instead.
    if (!finite(stat)) {
        p.y = nan_from(stat);
    }
    let i = row_at(row) * NORM_ROW_FLOATS;
    params[i + R_SHIFT] = p.x;
    params[i + R_RSTD] = p.y;
    params[i + R_BIAS] = p.z;
    params[i + R_VAR] = p.w;
    return p;
}
