// Inference folding's export, one invocation per channel: batch norm in
// inference mode as y = scale * x + shift, for a caller's own fusion.

#import common
#import epilogue
#import fold

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(7) var<storage, read> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read> running_var: array<f32>;
@group(0) @binding(10) var<storage, read_write> scale: array<f32>;
@group(0) @binding(11) var<storage, read_write> shift: array<f32>;

@compute @workgroup_size(WG)
fn scale_shift(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let k = fold_scale(c);
    scale[c] = k;
    shift[c] = fold_bias(c, 0.0, k);
}
