// Fused epilogue activation: LeakyReLU with the uniform's slope g.slope
// (finite, >= 0, so z > 0 exactly where v > 0; a runtime value, so every slope
// shares one pipeline); the gradient is dz where z > 0 and g.slope * dz where z <= 0.

fn activate(v: V) -> V {
    return select(v, v * g.slope, v < splat(0.0));
}

fn activate_grad(dz: V, z: V) -> V {
    return select(dz * g.slope, dz, z > splat(0.0));
}
