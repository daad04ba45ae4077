// Inference folding, pass 1, one invocation per output channel of the
// previous layer: its folded bias, and the apply parameters (shift 0, scale k,
// bias 0) with which apply.wgsl then scales the weights, W' = W * k, over the
// weight tensor viewed as (1, C_out, K). The layer's own bias (FLAG_BIAS)
// counts as zero when absent.

#import common
#import epilogue
#import fold
#import apply_params

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read> running_var: array<f32>;
@group(0) @binding(9) var<storage, read> bias: array<f32>;
@group(0) @binding(10) var<storage, read_write> bias_out: array<f32>;

@compute @workgroup_size(WG)
fn fold_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    let k = fold_scale(c);
    var b = 0.0;
    if ((g.flags & FLAG_BIAS) != 0u) {
        b = bias[c];
    }
    // Read before the write: bias_out may be bias itself.
    let folded = fold_bias(c, b, k);
    bias_out[c] = folded;
    write_params(c, 0.0, vec2<f32>(k, 0.0));
}
