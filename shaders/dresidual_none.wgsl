// backward_dx.wgsl's residual gradient (src/shaders.rs picks dresidual_none or
// dresidual_store): no residual, nothing to write.
fn write_dresidual(i: u32, d: V) {
}

fn write_dresidual_pair(w: u32, a: V, b: V) {
}
