// Writes channel c's apply parameters, y = (x - shift) * scale + bias, into
// the `params` binding of finalize_train and prepare_inference.

fn write_params(c: u32, shift: f32, scale_bias: vec2<f32>) {
    params[P_SHIFT * g.c_pad + c] = shift;
    params[P_SCALE * g.c_pad + c] = scale_bias.x;
    params[P_BIAS * g.c_pad + c] = scale_bias.y;
}
