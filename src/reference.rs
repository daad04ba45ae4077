//! The CPU reference: docs/SPEC.md's formulas in f64, over `ndarray`.
//!
//! Every GPU kernel is tested against these functions. They are also a public
//! CPU path: tensors and per-channel values may each be `f32` or `f64`,
//! outputs are `f64` (convert with `mapv(|v| v as f32)` where f32 is wanted).
//! Statistics use two passes (mean, then squared deviations), which is exact
//! enough in f64 for any data f32 can hold.

use ndarray::{ArrayD, ArrayViewD};

use crate::error::{Error, Result};
use crate::op::Norm;
use crate::ops::RunningStats;
use crate::options::{check_eps, Activation, Options};
use crate::shape::Shape;

pub use crate::norms::reference::{
    group_norm, group_norm_backward, instance_norm, instance_norm_backward, instance_norm_update_running, layer_norm, layer_norm_backward,
    rms_norm, rms_norm_backward, NormForward, NormGrads,
};

/// Batch statistics of one channel set, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    /// `mean_c`.
    pub mean: Vec<f64>,
    /// Biased variance `var_c` (divides by `m`), the one that normalizes.
    pub var: Vec<f64>,
}

/// Outputs of the training forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainForward {
    /// The normalized, scaled and shifted output.
    pub y: ArrayD<f64>,
    /// `save_mean`, kept for backward.
    pub save_mean: Vec<f64>,
    /// `save_invstd = 1 / sqrt(var + eps)`, kept for backward.
    pub save_invstd: Vec<f64>,
    /// The biased batch variance.
    pub var: Vec<f64>,
}

/// Gradients of the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    /// Gradient with respect to `x`.
    pub dx: ArrayD<f64>,
    /// Gradient with respect to `gamma`.
    pub dgamma: Vec<f64>,
    /// Gradient with respect to `beta`.
    pub dbeta: Vec<f64>,
}

/// Values of the input in standard order, as f64.
fn flat<A: Copy + Into<f64>>(shape: &Shape, what: &'static str, x: &ArrayViewD<A>) -> Result<Vec<f64>> {
    shape.check_same_dims(what, x.shape())?;
    Ok(x.iter().map(|&v| v.into()).collect())
}

fn param(values: Option<&[f64]>, c: usize, default: f64) -> f64 {
    values.map_or(default, |v| v[c])
}

fn to_f64<A: Copy + Into<f64>>(v: &[A]) -> Vec<f64> {
    v.iter().map(|&a| a.into()).collect()
}

/// Calls `f(flat_index)` for every element of channel `c`.
fn for_channel(shape: &Shape, c: usize, mut f: impl FnMut(usize)) {
    for o in 0..shape.outer() {
        let row = shape.index(o, c, 0);
        for i in row..row + shape.inner() {
            f(i);
        }
    }
}

/// Per-channel mean and biased variance of `x`.
pub fn batch_stats<A: Copy + Into<f64>>(shape: &Shape, x: &ArrayViewD<A>) -> Result<BatchStats> {
    let x = flat(shape, "x", x)?;
    Ok(stats_of(shape, &x))
}

fn stats_of(shape: &Shape, x: &[f64]) -> BatchStats {
    let m = shape.per_channel() as f64;
    let (mut mean, mut var) = (Vec::new(), Vec::new());
    for c in 0..shape.channels() {
        let mut sum = 0.0;
        for_channel(shape, c, |i| sum += x[i]);
        let mu = sum / m;
        let mut sq = 0.0;
        for_channel(shape, c, |i| sq += (x[i] - mu) * (x[i] - mu));
        mean.push(mu);
        var.push(sq / m);
    }
    BatchStats { mean, var }
}

/// `y = gamma * (x - mean) * invstd + beta`, channel by channel.
fn normalize(shape: &Shape, x: &[f64], mean: &[f64], invstd: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>) -> ArrayD<f64> {
    let mut y = vec![0.0; x.len()];
    for c in 0..shape.channels() {
        let (g, b) = (param(gamma, c, 1.0), param(beta, c, 0.0));
        for_channel(shape, c, |i| y[i] = g * (x[i] - mean[c]) * invstd[c] + b);
    }
    ArrayD::from_shape_vec(shape.dims(), y).expect("length equals the shape's element count")
}

/// Training forward with batch statistics. `gamma` and `beta` are `None`
/// for `affine = false`. The batch variance is in [`TrainForward::var`];
/// pass the statistics to [`update_running`] as [`BatchStats`].
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{reference, Layout, Shape};
/// let shape = Shape::new(&[1, 2, 1, 3], Layout::ChannelsFirst).unwrap();
/// let x = ArrayD::from_shape_vec(shape.dims(), vec![-1f32, 0., 1., 2., 3., 4.]).unwrap();
/// let out = reference::forward_train(&shape, &x.view(), Some(&[1.0, 1.5]), Some(&[0.0, 1.0]), 1e-5).unwrap();
/// assert!((out.y[[0, 1, 0, 2]] - 2.8371035).abs() < 1e-6);
/// ```
pub fn forward_train<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    x: &ArrayViewD<A>,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> Result<TrainForward> {
    check_eps(eps as f32)?;
    shape.check_trainable()?;
    let (gamma, beta) = (gamma.map(to_f64), beta.map(to_f64));
    check_params(shape, gamma.as_deref(), beta.as_deref())?;
    let x = flat(shape, "x", x)?;
    let BatchStats { mean, var } = stats_of(shape, &x);
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = normalize(shape, &x, &mean, &invstd, gamma.as_deref(), beta.as_deref());
    Ok(TrainForward { y, save_mean: mean, save_invstd: invstd, var })
}

/// The forward of any op ([`Norm`]) with its own statistics: the CPU twin of
/// [`GpuContext::norm`](crate::GpuContext::norm). `mean` is per row (0 for
/// RMS norm), `rstd` and the biased `var` too; `beta` is ignored by RMS norm.
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{reference, Norm};
/// let x = ArrayD::from_shape_vec(vec![2, 2], vec![1f32, 3., 10., 10.]).unwrap();
/// let op = Norm::Layer { dims: vec![2, 2], normalized_shape: vec![2] };
/// let out = reference::norm::<f32, f32>(&op, &x.view(), None, Some(&[0.5, 0.25]), 0.0).unwrap();
/// assert_eq!(out.y.as_slice().unwrap()[..2], [-0.5, 1.25]);
/// ```
pub fn norm<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    op: &Norm,
    x: &ArrayViewD<A>,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> Result<NormForward> {
    match op {
        Norm::Batch(shape) => {
            let out = forward_train(shape, x, gamma, beta, eps)?;
            Ok(NormForward { y: out.y, mean: out.save_mean, rstd: out.save_invstd, var: out.var })
        }
        Norm::Group { shape, groups } => group_norm(shape, x, *groups, gamma, beta, eps),
        Norm::Instance(shape) => instance_norm(shape, x, gamma, beta, eps),
        Norm::Layer { normalized_shape, .. } => {
            op_dims(op, x)?;
            layer_norm(x, normalized_shape, gamma, beta, eps)
        }
        Norm::Rms { normalized_shape, .. } => {
            op_dims(op, x)?;
            rms_norm(x, normalized_shape, gamma, eps)
        }
    }
}

/// The backward of any op at its saved `mean` (ignored by RMS norm) and
/// `rstd`: the CPU twin of [`GpuContext::norm_backward`](crate::GpuContext::norm_backward).
pub fn norm_backward<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    op: &Norm,
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    mean: &[P],
    rstd: &[P],
    gamma: Option<&[P]>,
) -> Result<NormGrads> {
    match op {
        Norm::Batch(shape) => {
            let g = backward_train(shape, dy, x, mean, rstd, gamma)?;
            Ok(NormGrads { dx: g.dx, dgamma: g.dgamma, dbeta: g.dbeta })
        }
        Norm::Group { shape, groups } => group_norm_backward(shape, dy, x, *groups, mean, rstd, gamma),
        Norm::Instance(shape) => instance_norm_backward(shape, dy, x, mean, rstd, gamma),
        Norm::Layer { normalized_shape, .. } => {
            op_dims(op, x)?;
            layer_norm_backward(dy, x, normalized_shape, mean, rstd, gamma)
        }
        Norm::Rms { normalized_shape, .. } => {
            op_dims(op, x)?;
            rms_norm_backward(dy, x, normalized_shape, rstd, gamma)
        }
    }
}

/// Checks `x` against the op's dims (layer and RMS norm's references take them from `x`).
fn op_dims<A>(op: &Norm, x: &ArrayViewD<A>) -> Result<()> {
    if x.shape() != op.dims() {
        return Err(Error::ShapeMismatch { what: "x", expected: format!("{:?}", op.dims()), got: format!("{:?}", x.shape()) });
    }
    Ok(())
}

fn check_params(shape: &Shape, gamma: Option<&[f64]>, beta: Option<&[f64]>) -> Result<()> {
    if let Some(g) = gamma {
        shape.check_channel_len("gamma", g.len())?;
    }
    if let Some(b) = beta {
        shape.check_channel_len("beta", b.len())?;
    }
    Ok(())
}

/// The running-statistics rule, applied after one training batch of
/// `per_channel` values a channel: increments `num_batches_tracked`, then
/// `running = (1 - f) * running + f * batch` with `f` from `options.momentum`
/// ([`crate::Momentum::factor`]) and the variance `options.running_variance` names
/// (unbiased `var * m / (m - 1)` by default).
pub fn update_running(running: &mut RunningStats<f64>, batch: &BatchStats, per_channel: usize, options: &Options) {
    running.num_batches_tracked = running.num_batches_tracked.saturating_add(1);
    let f = f64::from(options.momentum.factor(running.num_batches_tracked));
    let unbias = options.running_variance.factor(per_channel);
    for c in 0..running.mean.len() {
        running.mean[c] = (1.0 - f) * running.mean[c] + f * batch.mean[c];
        running.var[c] = (1.0 - f) * running.var[c] + f * batch.var[c] * unbias;
    }
}

/// Inference forward with running statistics:
/// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`.
pub fn forward_inference<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    x: &ArrayViewD<A>,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    running_mean: &[P],
    running_var: &[P],
    eps: f64,
) -> Result<ArrayD<f64>> {
    check_eps(eps as f32)?;
    let (gamma, beta) = (gamma.map(to_f64), beta.map(to_f64));
    check_params(shape, gamma.as_deref(), beta.as_deref())?;
    shape.check_channel_len("running_mean", running_mean.len())?;
    shape.check_channel_len("running_var", running_var.len())?;
    let x = flat(shape, "x", x)?;
    let invstd: Vec<f64> = to_f64(running_var).iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Ok(normalize(shape, &x, &to_f64(running_mean), &invstd, gamma.as_deref(), beta.as_deref()))
}

/// Per-channel `sum dy` and `sum dy * (x - mean) * invstd`.
fn reduce_grads(shape: &Shape, dy: &[f64], x: &[f64], mean: &[f64], invstd: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut dbeta, mut dgamma) = (Vec::new(), Vec::new());
    for c in 0..shape.channels() {
        let (mut sdy, mut sdyx) = (0.0, 0.0);
        for_channel(shape, c, |i| {
            sdy += dy[i];
            sdyx += dy[i] * (x[i] - mean[c]) * invstd[c];
        });
        dbeta.push(sdy);
        dgamma.push(sdyx);
    }
    (dbeta, dgamma)
}

/// Backward of the training forward (statistics from the batch):
/// `dx = gamma * invstd * (dy - dbeta / m - xhat * dgamma / m)`.
pub fn backward_train<A: Copy + Into<f64>, P: Copy + Into<f64>, G: Copy + Into<f64>>(
    shape: &Shape,
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    save_mean: &[P],
    save_invstd: &[P],
    gamma: Option<&[G]>,
) -> Result<Grads> {
    shape.check_trainable()?;
    let gamma = gamma.map(to_f64);
    check_params(shape, gamma.as_deref(), None)?;
    shape.check_channel_len("save_mean", save_mean.len())?;
    shape.check_channel_len("save_invstd", save_invstd.len())?;
    let (dy, x) = (flat(shape, "dy", dy)?, flat(shape, "x", x)?);
    let (mean, invstd) = (to_f64(save_mean), to_f64(save_invstd));
    let (dbeta, dgamma) = reduce_grads(shape, &dy, &x, &mean, &invstd);
    let m = shape.per_channel() as f64;
    let mut dx = vec![0.0; x.len()];
    for c in 0..shape.channels() {
        let k = param(gamma.as_deref(), c, 1.0) * invstd[c];
        for_channel(shape, c, |i| {
            let xhat = (x[i] - mean[c]) * invstd[c];
            dx[i] = k * (dy[i] - dbeta[c] / m - xhat * dgamma[c] / m);
        });
    }
    Ok(Grads { dx: ArrayD::from_shape_vec(shape.dims(), dx).expect("length equals the shape's element count"), dgamma, dbeta })
}

/// Backward of the inference forward (running statistics are constants):
/// `dx = dy * gamma / sqrt(running_var + eps)`.
pub fn backward_inference<A: Copy + Into<f64>, P: Copy + Into<f64>, G: Copy + Into<f64>>(
    shape: &Shape,
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    running_mean: &[P],
    running_var: &[P],
    gamma: Option<&[G]>,
    eps: f64,
) -> Result<Grads> {
    check_eps(eps as f32)?;
    let gamma = gamma.map(to_f64);
    check_params(shape, gamma.as_deref(), None)?;
    shape.check_channel_len("running_mean", running_mean.len())?;
    shape.check_channel_len("running_var", running_var.len())?;
    let (dy, x) = (flat(shape, "dy", dy)?, flat(shape, "x", x)?);
    let mean = to_f64(running_mean);
    let invstd: Vec<f64> = to_f64(running_var).iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let (dbeta, dgamma) = reduce_grads(shape, &dy, &x, &mean, &invstd);
    let mut dx = vec![0.0; x.len()];
    for (c, invstd) in invstd.iter().enumerate() {
        let k = param(gamma.as_deref(), c, 1.0) * invstd;
        for_channel(shape, c, |i| dx[i] = dy[i] * k);
    }
    Ok(Grads { dx: ArrayD::from_shape_vec(shape.dims(), dx).expect("length equals the shape's element count"), dgamma, dbeta })
}

/// The fused epilogue's activation of one value (docs/SPEC.md, Fused epilogues).
pub fn activate(v: f64, activation: Activation) -> f64 {
    match activation {
        Activation::Identity => v,
        Activation::Relu if v < 0.0 => 0.0,
        Activation::LeakyRelu(slope) if v < 0.0 => v * f64::from(slope),
        _ => v,
    }
}

/// The gradient through the activation of one value, read from its output:
/// `dz` where `z > 0`; where `z <= 0` (ties at 0 included), nothing for ReLU
/// and `slope * dz` for LeakyReLU.
pub fn activate_grad(dz: f64, z: f64, activation: Activation) -> f64 {
    match activation {
        Activation::Identity => dz,
        _ if z > 0.0 => dz,
        Activation::Relu => 0.0,
        Activation::LeakyRelu(slope) => dz * f64::from(slope),
    }
}

fn check_like<A>(what: &'static str, want: &[usize], got: &ArrayViewD<A>) -> Result<()> {
    if got.shape() == want {
        return Ok(());
    }
    Err(Error::ShapeMismatch { what, expected: format!("dims {want:?}"), got: format!("dims {:?}", got.shape()) })
}

/// The fused epilogue of a forward pass: `z = activation(y + residual)`
/// elementwise, from batch norm's output `y` ([`forward_train`]'s or
/// [`forward_inference`]'s) and a residual shaped like it.
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{reference, Activation};
/// let y = ArrayD::from_shape_vec(vec![1, 3], vec![-1.0, 0.5, 2.0]).unwrap();
/// let r = ArrayD::from_shape_vec(vec![1, 3], vec![0.25f32, -1.0, 1.0]).unwrap();
/// let z = reference::epilogue(&y.view(), Some(&r.view()), Activation::Relu).unwrap();
/// assert_eq!(z.as_slice().unwrap(), &[0.0, 0.0, 3.0]);
/// ```
pub fn epilogue<R: Copy + Into<f64>>(y: &ArrayViewD<f64>, residual: Option<&ArrayViewD<R>>, activation: Activation) -> Result<ArrayD<f64>> {
    let mut z = y.to_owned();
    if let Some(r) = residual {
        check_like("residual", y.shape(), r)?;
        z.zip_mut_with(r, |z, &r| *z += r.into());
    }
    z.mapv_inplace(|v| activate(v, activation));
    Ok(z)
}

/// The upstream gradient of batch norm's output through a fused epilogue:
/// `dy = dz` masked by the forward's output `z` ([`activate_grad`]). Feed it
/// to [`backward_train`] or [`backward_inference`]; with a residual, it is
/// also `dresidual`.
pub fn epilogue_grad<A: Copy + Into<f64>>(dz: &ArrayViewD<A>, z: &ArrayViewD<A>, activation: Activation) -> Result<ArrayD<f64>> {
    check_like("z", dz.shape(), z)?;
    let mut dy = dz.mapv(|v| v.into());
    dy.zip_mut_with(z, |d, &z| *d = activate_grad(*d, z.into(), activation));
    Ok(dy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::Momentum;

    fn onnx() -> (Shape, ArrayD<f64>) {
        let shape = Shape::new(&[1, 2, 1, 3], Layout::ChannelsFirst).unwrap();
        let x = ArrayD::from_shape_vec(shape.dims(), vec![-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]).unwrap();
        (shape, x)
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn onnx_example_vectors() {
        let (shape, x) = onnx();
        let (gamma, beta) = ([1.0, 1.5], [0.0, 1.0]);
        let y = forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &[0.0, 3.0], &[1.0, 1.5], 1e-5).unwrap();
        let want = [-0.999995, 0.0, 0.999995, -0.2247408, 1.0, 2.2247408];
        assert_close(y.as_slice().unwrap(), &want, 1e-6);

        let t = forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        let want = [-1.2247357, 0.0, 1.2247357, -0.8371035, 1.0, 2.8371035];
        assert_close(t.y.as_slice().unwrap(), &want, 1e-6);

        // docs/SPEC.md's running_var = [1.0, 1.45] starts from the example's mean and var.
        let start = RunningStats { mean: vec![0.0, 3.0], var: vec![1.0, 1.5], num_batches_tracked: 0 };
        let batch = BatchStats { mean: t.save_mean.clone(), var: t.var.clone() };
        let mut running = start.clone();
        update_running(&mut running, &batch, shape.per_channel(), &Options { momentum: Momentum::Exponential(0.1), ..Options::default() });
        // Momentum is an f32: 0.1f32 is 0.100000001, hence 1e-8 and not 1e-12.
        assert_close(&running.var, &[1.0, 1.45], 1e-8);
        assert_close(&running.mean, &[0.0, 3.0], 1e-8);
        // ONNX: momentum 0.9 is the old value's weight, and the variance is biased
        // (1 - 0.9 in f32 is 0.100000024, hence 1e-7).
        let onnx =
            Options { momentum: Momentum::Exponential(1.0 - 0.9), running_variance: crate::RunningVariance::Biased, ..Options::default() };
        let mut running = start;
        update_running(&mut running, &batch, shape.per_channel(), &onnx);
        assert_close(&running.var, &[0.9 + 0.1 * 2.0 / 3.0, 0.9 * 1.5 + 0.1 * 2.0 / 3.0], 1e-7);
    }

    #[test]
    fn channels_last_matches_channels_first() {
        let cf = Shape::new(&[2, 3, 4], Layout::ChannelsFirst).unwrap();
        let cl = Shape::new(&[2, 4, 3], Layout::ChannelsLast).unwrap();
        let x = ArrayD::from_shape_fn(cf.dims(), |i| (i[0] * 7 + i[1] * 13 + i[2] * 5) as f64 % 11.0);
        let xl = x.view().permuted_axes(vec![0, 2, 1]).as_standard_layout().into_owned();
        let a = forward_train::<f64, f64>(&cf, &x.view(), None, None, 1e-5).unwrap();
        let b = forward_train::<f64, f64>(&cl, &xl.view(), None, None, 1e-5).unwrap();
        assert_close(&a.save_mean, &b.save_mean, 1e-12);
        assert_close(&a.save_invstd, &b.save_invstd, 1e-12);
        let ay = a.y.view().permuted_axes(vec![0, 2, 1]).as_standard_layout().into_owned();
        assert_close(ay.as_slice().unwrap(), b.y.as_slice().unwrap(), 1e-12);
    }

    /// The analytic backward against central differences of a scalar loss
    /// `L = sum(w * y)` through the training forward.
    #[test]
    fn backward_matches_finite_differences() {
        let shape = Shape::new(&[3, 2, 5], Layout::ChannelsFirst).unwrap();
        let x = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 31 + i[1] * 17 + i[2] * 7) % 13) as f64 * 0.3 - 1.0);
        let w = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 5 + i[1] * 3 + i[2] * 11) % 7) as f64 * 0.25 - 0.5);
        let (gamma, beta) = (vec![0.7, -1.3], vec![0.2, 0.4]);
        let eps = 1e-3;
        let loss = |x: &ArrayD<f64>, g: &[f64], b: &[f64]| {
            let y = forward_train(&shape, &x.view(), Some(g), Some(b), eps).unwrap().y;
            (&y * &w).sum()
        };
        let f = forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), eps).unwrap();
        let g = backward_train(&shape, &w.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
        let h = 1e-6;
        for (i, dx) in g.dx.iter().enumerate() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.as_slice_mut().unwrap()[i] += h;
            xm.as_slice_mut().unwrap()[i] -= h;
            let num = (loss(&xp, &gamma, &beta) - loss(&xm, &gamma, &beta)) / (2.0 * h);
            assert!((num - dx).abs() < 1e-6, "dx[{i}]: numeric {num}, analytic {dx}");
        }
        for c in 0..2 {
            let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
            gp[c] += h;
            gm[c] -= h;
            let num = (loss(&x, &gp, &beta) - loss(&x, &gm, &beta)) / (2.0 * h);
            assert!((num - g.dgamma[c]).abs() < 1e-6, "dgamma[{c}]");
            let (mut bp, mut bm) = (beta.clone(), beta.clone());
            bp[c] += h;
            bm[c] -= h;
            let num = (loss(&x, &gamma, &bp) - loss(&x, &gamma, &bm)) / (2.0 * h);
            assert!((num - g.dbeta[c]).abs() < 1e-6, "dbeta[{c}]");
        }
    }

    /// The backward of `L = sum(w * z)` through `z = leaky_relu(bn(x) + r)`
    /// (the reference's `epilogue_grad`, then `backward_train`) against central
    /// differences, for `x`, `gamma` and the residual.
    #[test]
    fn epilogue_backward_matches_finite_differences() {
        let shape = Shape::new(&[3, 2, 5], Layout::ChannelsFirst).unwrap();
        let x = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 31 + i[1] * 17 + i[2] * 7) % 13) as f64 * 0.3 - 1.0);
        let r = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 3 + i[1] * 5 + i[2] * 2) % 9) as f64 * 0.21 - 0.83);
        let w = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 5 + i[1] * 3 + i[2] * 11) % 7) as f64 * 0.25 - 0.5);
        let (gamma, beta) = (vec![0.7, -1.3], vec![0.2, 0.4]);
        let act = Activation::LeakyRelu(0.125);
        let z_of = |x: &ArrayD<f64>, r: &ArrayD<f64>, g: &[f64]| {
            let y = forward_train(&shape, &x.view(), Some(g), Some(&beta[..]), 1e-3).unwrap().y;
            epilogue(&y.view(), Some(&r.view()), act).unwrap()
        };
        let loss = |x: &ArrayD<f64>, r: &ArrayD<f64>, g: &[f64]| (&z_of(x, r, g) * &w).sum();
        let z = z_of(&x, &r, &gamma);
        assert!(z.iter().all(|v| v.abs() > 1e-3), "no value sits on the kink");
        let dy = epilogue_grad(&w.view(), &z.view(), act).unwrap();
        let f = forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-3).unwrap();
        let g = backward_train(&shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
        let h = 1e-6;
        let nudge = |a: &ArrayD<f64>, i: usize, d: f64| {
            let mut a = a.clone();
            a.as_slice_mut().unwrap()[i] += d;
            a
        };
        for i in 0..x.len() {
            let num = (loss(&nudge(&x, i, h), &r, &gamma) - loss(&nudge(&x, i, -h), &r, &gamma)) / (2.0 * h);
            assert!((num - g.dx.as_slice().unwrap()[i]).abs() < 1e-6, "dx[{i}]");
            let num = (loss(&x, &nudge(&r, i, h), &gamma) - loss(&x, &nudge(&r, i, -h), &gamma)) / (2.0 * h);
            assert!((num - dy.as_slice().unwrap()[i]).abs() < 1e-6, "dresidual[{i}]");
        }
        for c in 0..2 {
            let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
            gp[c] += h;
            gm[c] -= h;
            let num = (loss(&x, &r, &gp) - loss(&x, &r, &gm)) / (2.0 * h);
            assert!((num - g.dgamma[c]).abs() < 1e-6, "dgamma[{c}]");
        }
    }

    #[test]
    fn training_needs_two_values_per_channel() {
        let shape = Shape::new(&[1, 4], Layout::ChannelsFirst).unwrap();
        let x = ArrayD::<f64>::zeros(shape.dims());
        assert!(matches!(
            forward_train::<f64, f64>(&shape, &x.view(), None, None, 1e-5),
            Err(crate::Error::TooFewValuesPerChannel { count: 1, .. })
        ));
    }
}
