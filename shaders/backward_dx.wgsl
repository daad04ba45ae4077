// Backward, pass 2: dx = k * dy + slope * (x - mean) + bias per channel, with
// mean, k, slope and bias in params[P_SHIFT], [P_OFFSET], [P_SCALE], [P_BIAS]
// (written by backward_finalize). Through a fused epilogue dy is dz masked by
// z (upstream_*.wgsl), and with a residual it is also dresidual (dresidual_*.wgsl).

#import stream
#import upstream
#import dresidual

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(3) var<storage, read> params: array<V>;
@group(0) @binding(4) var<storage, read_write> dx: array<TensorOut>;

fn dx_value(i: u32, k: Coeffs, d: V) -> V {
    return fma(k.offset, d, fma(k.scale, load_x(i) - k.shift, k.bias));
}

fn item(i: u32, k: Coeffs) {
    let d = upstream(i);
    write_dresidual(i, d);
    store_dx(i, dx_value(i, k, d));
}

fn item_pair(w: u32, k: Coeffs) {
    let i = 2u * w;
    let d0 = upstream(i);
    let d1 = upstream(i + 1u);
    write_dresidual_pair(w, d0, d1);
    store_dx_pair(w, dx_value(i, k, d0), dx_value(i + 1u, k, d1));
}

@compute @workgroup_size(WG)
fn backward_dx(
    @builtin(local_invocation_index) lid: u32,
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    stream(lid, gid, wid, nwg);
}
