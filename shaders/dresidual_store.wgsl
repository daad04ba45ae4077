// backward_dx.wgsl's residual gradient: the residual entered z before the
// activation, so dresidual is the masked upstream gradient d itself.
@group(0) @binding(6) var<storage, read_write> dresidual: array<TensorOut>;

fn write_dresidual(i: u32, d: V) {
    store_dresidual(i, d);
}

fn write_dresidual_pair(w: u32, a: V, b: V) {
    store_dresidual_pair(w, a, b);
}
