#import activation

// The forward kernels' fused epilogue with a residual: z = act(y + residual),
// the residual bound at 9 in every kernel that imports this (apply.wgsl,
// forward_fused.wgsl).
@group(0) @binding(9) var<storage, read> residual: array<TensorIn>;

fn finish(i: u32, y: V) -> V {
    return activate(y + load_residual(i));
}
