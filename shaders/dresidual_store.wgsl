// backward_dx.wgsl's residual gradient: the residual entered z before the
// activation, so dresidual is the masked upstream gradient d itself.
@group(0) @binding(6) var<storage, read_write> dresidual: array<TensorOut>;

fn write_dresidual(i: u32, d: V) {
    store_dresidual(i, d);
}
