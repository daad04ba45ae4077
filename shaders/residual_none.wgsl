#import activation

// The forward kernels' fused epilogue without a residual: z = act(y) for the
// item at flat index i (src/shaders.rs picks residual_none or residual_add).
fn finish(i: u32, y: V) -> V {
    return activate(y);
}
