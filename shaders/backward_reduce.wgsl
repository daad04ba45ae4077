// Backward, pass 1: per-channel partial sums in one read of x and dy, shared
// by backward_reduce_inner.wgsl and backward_reduce_rows.wgsl: dy,
// dy * (x - mean) and x - mean as compensated sums (grad_sums.wgsl), with the
// same chunking and fixed tree as stats.wgsl. `mean` sits in params[P_SHIFT]
// (backward_prepare.wgsl). The upstream gradient is dy, or dz masked through
// a fused activation (upstream_*.wgsl).

#import common
#import params
#import grad_sums
#import tree
#import upstream

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(3) var<storage, read_write> params: array<V>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

// A partial result: each sum's value and compensation, PARTIAL_FLOATS floats.
fn write_partial(c: u32, k: u32, s: GradSums, l: u32) {
    let i = partial_index(c, k);
    partials[i] = lane(s.dy.value, l);
    partials[i + 1u] = lane(s.dy.comp, l);
    partials[i + 2u] = lane(s.dyx.value, l);
    partials[i + 3u] = lane(s.dyx.comp, l);
    partials[i + 4u] = lane(s.xm.value, l);
    partials[i + 5u] = lane(s.xm.comp, l);
}
