// Fused epilogue activation: ReLU. NaN stays NaN (v < 0 is false for it);
// the gradient passes where z > 0 only, so a tie at z == 0 gets none.

fn activate(v: V) -> V {
    return select(v, splat(0.0), v < splat(0.0));
}

fn activate_grad(dz: V, z: V) -> V {
    return select(splat(0.0), dz, z > splat(0.0));
}
