// f16 tensors through WGSL's `f16` type, on devices with
// `wgpu::Features::SHADER_F16`: the store conversion of the tensor accessors
// src/shaders.rs generates (loads convert with `V(..)`).

// Rounds as the f16 conversion does. Beyond f16's finite range, where that
// conversion's result is not defined, gives what rounding to nearest gives:
// the largest finite value below 65520 in magnitude, ±inf from there on, and
// NaN as a NaN.
fn to_f16(v: V) -> TensorOut {
    let mag = bitcast<VU>(v) & VU(0x7fffffffu);
    let finite = TensorOut(clamp(v, V(-65504.0), V(65504.0)));
    // ±65504 doubled overflows to ±inf when the shader runs.
    let rounded = select(finite, finite * TensorOut(2.0), mag >= VU(0x477ff000u));
    return select(rounded, TensorOut(v), mag > VU(0x7f800000u));
}
