// Fused epilogue activation: ReLU. NaN stays NaN (float_bits.wgsl says why
// not v < 0); the gradient passes where z > 0 only, so a tie at z == 0 gets none.

#import float_bits

fn activate(v: V) -> V {
    return select(v, splat(0.0), negative(v));
}

fn activate_grad(dz: V, z: V) -> V {
    return select(splat(0.0), dz, z > splat(0.0));
}
