#import activation

// The backward kernels' upstream gradient of item i through a fused
// activation: dz (bound as dy) masked by the forward's output z, computed on
// the fly in both passes rather than stored. z is bound at 5 in every kernel
// that imports this (backward_reduce_*.wgsl, backward_dx.wgsl).
@group(0) @binding(5) var<storage, read> z: array<TensorIn>;

fn upstream(i: u32) -> V {
    return activate_grad(load_dy(i), load_z(i));
}
