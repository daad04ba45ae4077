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
const F32_MAX: f32 = 3.40282347e38;

fn channel_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * EPILOGUE_WG;
}

fn write_params(c: u32, shift: f32, offset: f32, invstd: f32) {
    var scale = invstd;
    var bias = 0.0;
    if ((g.flags & FLAG_AFFINE) != 0u) {
        scale = gamma[c] * invstd;
        bias = beta[c];
    }
    params[P_SHIFT * g.c_pad + c] = shift;
    params[P_SCALE * g.c_pad + c] = scale;
    params[P_BIAS * g.c_pad + c] = fma(-offset, scale, bias);
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
    let variance = a.m2 / g.count;
    let invstd = 1.0 / sqrt(variance + g.eps);
    // The shifted mean errs by about eps * |mean - shift|, the summed one by about
    // eps * |mean| (welford.wgsl): report the summed mean unless the shift is
    // closer to the mean than zero is, or the sum overflowed.
    let summed = comp_sum(a.total) / g.count;
    var mean = shift + a.mean;
    if (abs(a.mean) >= abs(summed) && abs(summed) <= F32_MAX) {
        mean = summed;
    }
    save_mean[c] = mean;
    save_invstd[c] = invstd;
    write_params(c, shift, a.mean, invstd);
    // A variance past f32's range would give invstd = 0 and y = beta, a silent
    // wrong answer; the channel's y is NaN instead (README, numerical guarantees).
    if (variance > F32_MAX) {
        let nan = bitcast<f32>(0x7fc00000u);
        params[P_SCALE * g.c_pad + c] = nan;
        params[P_BIAS * g.c_pad + c] = nan;
    }
    if ((g.flags & FLAG_RUNNING) != 0u) {
        running_mean[c] = (1.0 - g.factor) * running_mean[c] + g.factor * mean;
        running_var[c] = (1.0 - g.factor) * running_var[c] + g.factor * (variance * g.unbias);
    }
}

// The subtraction x - running_mean stays exact for data near the running mean,
// which the folded y = k * x + b would lose (SPEC.md, Numerics).
@compute @workgroup_size(EPILOGUE_WG)
fn prepare_inference(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = channel_index(gid, nwg);
    if (c >= g.channels) {
        return;
    }
    write_params(c, running_mean[c], 0.0, 1.0 / sqrt(running_var[c] + g.eps));
}
