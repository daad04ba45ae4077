// Tests of a float's class on its bits. GL's compiler (llvmpipe's, and maybe a
// GPU's) folds `select(v, 0, v < 0)` into `max(v, 0)` and may fold a compare
// with F32_MAX away, which turns a NaN into 0 or a finite value; integer tests
// on the bits have no such folding, so NaN stays NaN on every backend
// (docs/SPEC.md, Numerics).

// v < 0 for a number; false for NaN (and for -0).
fn negative(v: V) -> VB {
    let bits = bitcast<VU>(v);
    return (bits > VU(0x80000000u)) & (bits <= VU(0xff800000u));
}

// Neither infinite nor NaN.
fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) < 0x7f800000u;
}

// A quiet NaN made at run time from `v`'s bits. A NaN that is a constant
// expression, such as `bitcast<f32>(0x7fc00000u)`, makes the shader invalid
// under WGSL's rules, which Chromium's compiler (Tint) enforces and naga does not.
fn nan_from(v: f32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (bitcast<u32>(v) & 0x003fffffu));
}
