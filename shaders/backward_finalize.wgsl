// Backward, per-channel epilogue: sums the partials in a fixed order into dbeta
// and dgamma, and writes the dx parameters so that
// dx = scale * dy + offset_k * (x - mean) + bias, i.e.
// training:  gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)
// inference: gamma * dy / sqrt(running_var + eps).
// `invstd_or_var` is save_invstd in training, running_var in inference.
// backward_prepare runs first: it puts the mean (save_mean or running_mean) in
// params[P_SHIFT], padded for the vec4 reads of backward_reduce and backward_dx.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> invstd_or_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(6) var<storage, read_write> params: array<f32>;
@group(0) @binding(7) var<storage, read> mean: array<f32>;

const EPILOGUE_WG: u32 = 64u;

fn channel_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * EPILOGUE_WG;
}

@compute @workgroup_size(EPILOGUE_WG)
fn backward_prepare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c < g.channels) {
        params[P_SHIFT * g.c_pad + c] = mean[c];
    }
}

@compute @workgroup_size(EPILOGUE_WG)
fn backward_finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    var dy_sum = comp_zero();
    var dyx_sum = comp_zero();
    for (var k = 0u; k < g.chunk_stride; k++) {
        let p = partials[c * g.chunk_stride + k];
        dy_sum = comp_merge(dy_sum, Comp(p.x, p.z));
        dyx_sum = comp_merge(dyx_sum, Comp(p.y, p.w));
    }
    let s_dy = comp_sum(dy_sum);
    let s_dyx = comp_sum(dyx_sum);
    let inference = (g.flags & FLAG_INFERENCE) != 0u;
    var invstd = invstd_or_var[c];
    if (inference) {
        invstd = 1.0 / sqrt(invstd_or_var[c] + g.eps);
    }
    let sum_dy = s_dy;
    let sum_dy_xhat = s_dyx * invstd;
    if ((g.flags & FLAG_WRITE_GRADS) != 0u) {
        dbeta[c] = sum_dy;
        dgamma[c] = sum_dy_xhat;
    }
    var k = invstd;
    if ((g.flags & FLAG_AFFINE) != 0u) {
        k = gamma[c] * invstd;
    }
    var slope = 0.0;
    var bias = 0.0;
    if (!inference) {
        slope = -k * invstd * sum_dy_xhat / g.count;
        bias = -k * sum_dy / g.count;
    }
    params[P_OFFSET * g.c_pad + c] = k;
    params[P_SCALE * g.c_pad + c] = slope;
    params[P_BIAS * g.c_pad + c] = bias;
}
