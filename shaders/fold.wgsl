// Inference folding (docs/SPEC.md, Inference folding): channel c's batch norm
// in inference mode as y = k * x + shift, with k = gamma / sqrt(running_var + eps)
// and shift = beta - running_mean * k. Uses the bindings of the kernels that
// import it: gamma, beta (with FLAG_AFFINE), running_mean, running_var.

fn fold_scale(c: u32) -> f32 {
    let invstd = 1.0 / sqrt(running_var[c] + g.eps);
    if ((g.flags & FLAG_AFFINE) != 0u) {
        return gamma[c] * invstd;
    }
    return invstd;
}

fn fold_beta(c: u32) -> f32 {
    if ((g.flags & FLAG_AFFINE) != 0u) {
        return beta[c];
    }
    return 0.0;
}

// The folded bias of a layer whose own bias is b: (b - running_mean) * k + beta.
fn fold_bias(c: u32, b: f32, k: f32) -> f32 {
    return fma(b - running_mean[c], k, fold_beta(c));
}
