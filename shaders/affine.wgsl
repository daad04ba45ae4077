// The apply pass's scale and bias for channel c, y = (x - shift) * scale + bias.
// Uses the bindings of the kernels that import it: gamma and beta.

// (scale, bias) with the small offset mean - shift folded into bias, so that
// x - shift stays exact for data near the shift (docs/SPEC.md, Numerics).
fn affine_scale_bias(c: u32, invstd: f32, offset: f32) -> vec2<f32> {
    var scale = invstd;
    var bias = 0.0;
    if ((g.flags & FLAG_AFFINE) != 0u) {
        scale = gamma[c] * invstd;
        bias = beta[c];
    }
    return vec2<f32>(scale, fma(-offset, scale, bias));
}
