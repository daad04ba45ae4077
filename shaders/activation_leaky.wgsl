// Fused epilogue activation: LeakyReLU with the slope src/shaders.rs compiles
// in as SLOPE (finite, >= 0, so z > 0 exactly where v > 0); the gradient is
// dz where z > 0 and SLOPE * dz where z <= 0.

fn activate(v: V) -> V {
    return select(v, v * SLOPE, v < splat(0.0));
}

fn activate_grad(dz: V, z: V) -> V {
    return select(dz * SLOPE, dz, z > splat(0.0));
}
