// bf16 tensors two to a 32-bit word (the lower index in the low half), through
// bit operations (WGSL has no bf16): the conversions of the tensor accessors
// src/shaders.rs generates. A bf16 is the upper half of an f32.

fn unpack_word(w: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(vec2(w << 16u, w & 0xffff0000u));
}

// Rounds to nearest, ties to even: adding 0x7fff plus the lowest kept bit
// carries into the kept half exactly when the dropped half is above the tie,
// or at it with the kept half odd; past the largest finite value that carry
// gives ±inf. A NaN stays a NaN (quieted, so that no payload rounds it to inf).
fn pack_word(v: vec2<f32>) -> u32 {
    let bits = bitcast<vec2<u32>>(v);
    let rounded = (bits + vec2(0x7fffu) + ((bits >> vec2(16u)) & vec2(1u))) >> vec2(16u);
    let nan = (bits & vec2(0x7fffffffu)) > vec2(0x7f800000u);
    let h = select(rounded, (bits >> vec2(16u)) | vec2(0x40u), nan);
    return h.x | (h.y << 16u);
}
