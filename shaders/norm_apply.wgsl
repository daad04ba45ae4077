// The normalization family's forward, pass 3 where rows span several chunks:
// y over chunk w % chunks of row w / chunks, from the row's values
// (norm_forward_finalize.wgsl).

#import norm_y

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(3) var<storage, read_write> y: array<TensorOut>;
@group(0) @binding(4) var<storage, read> gamma: array<V>;
@group(0) @binding(5) var<storage, read> beta: array<V>;
@group(0) @binding(8) var<storage, read> params: array<f32>;

@compute @workgroup_size(WG)
fn norm_apply(
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
    write_y(t, rc, vec4<f32>(params[i + R_SHIFT], params[i + R_RSTD], params[i + R_BIAS], 0.0));
}
