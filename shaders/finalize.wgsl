// Per-channel epilogues, one invocation per channel, always scalar.
//
// finalize_train merges a channel's partials in a fixed order, writes save_mean,
// save_invstd, the running statistics (PyTorch's rule) and the apply parameters.
// prepare_inference folds the running statistics into the apply parameters.
// The apply pass computes y = (x - shift) * scale + bias, with the offset
// mean - shift folded into bias = beta - offset * scale.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> save_invstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;

const EPILOGUE_WG: u32 = 64u;

fn channel_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * EPILOGUE_WG;
}

fn write_params(c: u32, shift: f32, scale_bias: vec2<f32>) {
    params[P_SHIFT * g.c_pad + c] = shift;
    params[P_SCALE * g.c_pad + c] = scale_bias.x;
    params[P_BIAS * g.c_pad + c] = scale_bias.y;
}

@compute @workgroup_size(EPILOGUE_WG)
fn finalize_train(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    // Partials as stats.wgsl writes them: six floats each.
    let base = 6u * c * g.chunk_stride;
    let shift = partials[base + 3u];
    var a = acc_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let i = base + 6u * k;
        // Windows of one tensor have their own shifts; the difference is exact for nearby values.
        let mean = (partials[i + 3u] - shift) + partials[i + 1u];
        a = merge(a, Acc(partials[i], mean, partials[i + 2u], Comp(partials[i + 4u], partials[i + 5u])));
    }
    write_params(c, shift, finish_train(c, shift, a.mean, a.m2, comp_sum(a.total) / g.count));
}

// The subtraction x - running_mean stays exact for data near the running mean,
// which the folded y = k * x + b would lose (SPEC.md, Numerics).
@compute @workgroup_size(EPILOGUE_WG)
fn prepare_inference(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    write_params(c, running_mean[c], affine_scale_bias(c, 1.0 / sqrt(running_var[c] + g.eps), 0.0));
}
