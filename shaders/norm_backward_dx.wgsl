// The normalization family's backward, pass 3 where rows span several chunks:
// dx over chunk w % chunks of row w / chunks from the row's backward values
// (norm_backward_finalize.wgsl).

#import norm_dx

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(3) var<storage, read> gamma: array<V>;
@group(0) @binding(7) var<storage, read> params: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<TensorOut>;

@compute @workgroup_size(WG)
fn norm_backward_dx(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let rc = row_chunk(w);
    let i = row_at(rc.row) * NORM_ROW_FLOATS;
    write_dx(t, rc, vec4<f32>(params[i + R_SHIFT], params[i + R_K], params[i + R_SLOPE], params[i + R_BIAS]));
}
