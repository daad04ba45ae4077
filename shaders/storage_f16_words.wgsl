// f16 tensors two to a 32-bit word (the lower index in the low half), for
// devices without `wgpu::Features::SHADER_F16`: the conversions of the tensor
// accessors src/shaders.rs generates.
//
// Bit operations rather than WGSL's `pack2x16float`/`unpack2x16float`: those
// need naga's SHADER_FLOAT16_IN_FLOAT32, which lavapipe grants only with
// SHADER_F16 itself, and leave values outside f16's range (NaN included)
// undefined. These run on every adapter and round to nearest, ties to even,
// subnormals included, on every one alike.

// Exact: every f16 is an f32.
fn unpack_word(w: u32) -> vec2<f32> {
    let h = vec2(w & 0xffffu, w >> 16u);
    let sign = (h & vec2(0x8000u)) << vec2(16u);
    let exponent = (h >> vec2(10u)) & vec2(0x1fu);
    let mantissa = h & vec2(0x3ffu);
    // Normal: the exponent rebiased from 15 to 127 (112 << 23 added).
    let normal = bitcast<vec2<f32>>(((h & vec2(0x7fffu)) << vec2(13u)) + vec2(0x38000000u));
    // Subnormal: mantissa * 2^-24, exact in f32, without an f32 subnormal a device might flush.
    let subnormal = vec2<f32>(mantissa) * 5.9604645e-8;
    let special = bitcast<vec2<f32>>(vec2(0x7f800000u) | (mantissa << vec2(13u)));
    let magnitude = select(select(normal, subnormal, exponent == vec2(0u)), special, exponent == vec2(0x1fu));
    return bitcast<vec2<f32>>(bitcast<vec2<u32>>(magnitude) | sign);
}

fn pack_word(v: vec2<f32>) -> u32 {
    let bits = bitcast<vec2<u32>>(v);
    let sign = (bits >> vec2(16u)) & vec2(0x8000u);
    let mag = bits & vec2(0x7fffffffu);
    // Normal f16 (from 2^-14): the exponent rebiased, 13 bits rounded off
    // (adding 0xfff plus the lowest kept bit carries exactly above the tie, or
    // at it when the kept half is odd; a carry into the exponent is right).
    let rebiased = mag - vec2(0x38000000u);
    let normal = (rebiased + vec2(0xfffu) + ((rebiased >> vec2(13u)) & vec2(1u))) >> vec2(13u);
    // Below 2^-14: multiples of 2^-24, `round` ties to even; 2^-14 itself may come out.
    let subnormal = vec2<u32>(round(bitcast<vec2<f32>>(mag) * 16777216.0));
    var h = select(subnormal, normal, mag >= vec2(0x38800000u));
    // From 65520 on (the tie above 65504), rounding gives inf; a NaN stays a quiet NaN.
    h = select(h, vec2(0x7c00u), mag >= vec2(0x477ff000u));
    h = select(h, vec2(0x7e00u), mag > vec2(0x7f800000u)) | sign;
    return h.x | (h.y << 16u);
}
