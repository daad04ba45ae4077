// Fused epilogue activation (src/shaders.rs picks one of activation_*.wgsl per
// variant): none. `activate` maps the pre-activation v to z; `activate_grad`
// maps dL/dz to dL/dv given z (docs/SPEC.md, Fused epilogues).

fn activate(v: V) -> V {
    return v;
}

fn activate_grad(dz: V, z: V) -> V {
    return dz;
}
