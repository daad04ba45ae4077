// Fused normalize-scale-shift, for training (batch statistics) and inference
// (running statistics): y = (x - shift) * scale + bias per channel, where
// finalize_train.wgsl folded the small offset mean - shift into bias. x - shift is exact
// for data near the shift, and both terms are O(1), so nothing cancels. The
// fused epilogue (`finish`, residual_*.wgsl) is the identity unless asked for.

#import stream
#import residual

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> params: array<V>;
@group(0) @binding(3) var<storage, read_write> y: array<TensorOut>;

fn value(i: u32, k: Coeffs) -> V {
    return finish(i, fma(load_x(i) - k.shift, k.scale, k.bias));
}

fn item(i: u32, k: Coeffs) {
    store_y(i, value(i, k));
}

fn item_pair(w: u32, k: Coeffs) {
    store_y_pair(w, value(2u * w, k), value(2u * w + 1u, k));
}

@compute @workgroup_size(WG)
fn apply(
    @builtin(local_invocation_index) lid: u32,
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    stream(lid, gid, wid, nwg);
}
