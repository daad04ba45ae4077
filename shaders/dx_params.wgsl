// Writes channel c's dx coefficients (dx_coeffs.wgsl) into the `params`
// binding of backward_finalize and backward_finalize_sync, for backward_dx.wgsl.

#import dx_coeffs

fn write_dx_params(c: u32, k: vec3<f32>) {
    params[P_OFFSET * g.c_pad + c] = k.x;
    params[P_SCALE * g.c_pad + c] = k.y;
    params[P_BIAS * g.c_pad + c] = k.z;
}
