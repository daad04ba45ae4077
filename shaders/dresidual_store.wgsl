// backward_dx.wgsl's residual gradient: the residual entered z before the
// activation, so dresidual is the masked upstream gradient d itself.
@group(0) @binding(6) var<storage, read_write> dresidual: array<V>;

fn store_dresidual(i: u32, d: V) {
    dresidual[i] = d;
}
