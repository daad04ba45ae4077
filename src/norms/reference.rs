//! The normalization family in f64: the CPU reference the kernels are tested
//! against (re-exported from [`crate::reference`]). Statistics in two passes
//! (mean, then squared deviations), as batch norm's reference.

use ndarray::{ArrayD, ArrayViewD};

use super::group_norm::group_view;
use super::instance_norm::instance_view;
use super::layer_norm::trailing_view;
use super::RowView;
use crate::error::{Error, Result};
use crate::ops::RunningStats;
use crate::options::{check_eps, Momentum};
use crate::shape::Shape;

/// Outputs of a forward pass of the family.
#[derive(Debug, Clone, PartialEq)]
pub struct NormForward {
    /// The normalized, scaled and shifted output.
    pub y: ArrayD<f64>,
    /// Mean per row (0 for RMS norm, which does not center).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` per row (`1 / sqrt(mean(x^2) + eps)` for RMS norm).
    pub rstd: Vec<f64>,
    /// Biased variance per row (mean of squares for RMS norm).
    pub var: Vec<f64>,
}

/// Gradients of a backward pass of the family.
#[derive(Debug, Clone, PartialEq)]
pub struct NormGrads {
    /// Gradient with respect to `x`.
    pub dx: ArrayD<f64>,
    /// Gradient with respect to `gamma`, one per affine parameter.
    pub dgamma: Vec<f64>,
    /// Gradient with respect to `beta` (the sum of `dy` per parameter).
    pub dbeta: Vec<f64>,
}

fn to_f64<A: Copy + Into<f64>>(v: &[A]) -> Vec<f64> {
    v.iter().map(|&a| a.into()).collect()
}

/// Calls `f(flat index, affine index)` for every value of row `r`.
fn for_row(v: &RowView, r: usize, mut f: impl FnMut(usize, usize)) {
    let (b, k) = (r / v.k, r % v.k);
    for o in 0..v.o {
        for l in 0..v.l {
            f(((b * v.o + o) * v.k + k) * v.l + l, k * v.ka + l / v.ld);
        }
    }
}

fn check_params(v: &RowView, gamma: Option<&[f64]>, beta: Option<&[f64]>) -> Result<()> {
    for (what, p) in [("gamma", gamma), ("beta", beta)] {
        if let Some(p) = p {
            super::check_len(what, p.len(), v.params, "one per affine parameter")?;
        }
    }
    Ok(())
}

fn forward(v: &RowView, dims: &[usize], x: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>, eps: f64) -> Result<NormForward> {
    check_eps(eps as f32)?;
    check_params(v, gamma, beta)?;
    let n = v.row_len() as f64;
    let mut y = vec![0.0; x.len()];
    let (mut means, mut rstds, mut vars) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..v.rows() {
        let mut sum = 0.0;
        for_row(v, r, |i, _| sum += x[i]);
        let mean = if v.rms { 0.0 } else { sum / n };
        let mut sq = 0.0;
        for_row(v, r, |i, _| sq += (x[i] - mean) * (x[i] - mean));
        let var = sq / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for_row(v, r, |i, a| {
            let g = gamma.map_or(1.0, |g| g[a]);
            let b = beta.map_or(0.0, |b| b[a]);
            y[i] = g * (x[i] - mean) * rstd + b;
        });
        means.push(mean);
        rstds.push(rstd);
        vars.push(var);
    }
    let y = ArrayD::from_shape_vec(dims, y).expect("length equals the shape's element count");
    Ok(NormForward { y, mean: means, rstd: rstds, var: vars })
}

fn backward(v: &RowView, dims: &[usize], dy: &[f64], x: &[f64], mean: &[f64], rstd: &[f64], gamma: Option<&[f64]>) -> Result<NormGrads> {
    check_params(v, gamma, None)?;
    super::check_len("mean", mean.len(), v.rows(), "one per row")?;
    super::check_len("rstd", rstd.len(), v.rows(), "one per row")?;
    let n = v.row_len() as f64;
    let mut dx = vec![0.0; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; v.params], vec![0.0; v.params]);
    for r in 0..v.rows() {
        let (m, s) = (if v.rms { 0.0 } else { mean[r] }, rstd[r]);
        let (mut sum_dyg, mut sum_dyg_xhat) = (0.0, 0.0);
        for_row(v, r, |i, a| {
            let dyg = dy[i] * gamma.map_or(1.0, |g| g[a]);
            let xhat = (x[i] - m) * s;
            sum_dyg += dyg;
            sum_dyg_xhat += dyg * xhat;
            dgamma[a] += dy[i] * xhat;
            dbeta[a] += dy[i];
        });
        let centered = if v.rms { 0.0 } else { sum_dyg / n };
        for_row(v, r, |i, a| {
            let dyg = dy[i] * gamma.map_or(1.0, |g| g[a]);
            let xhat = (x[i] - m) * s;
            dx[i] = s * (dyg - centered - xhat * sum_dyg_xhat / n);
        });
    }
    let dx = ArrayD::from_shape_vec(dims, dx).expect("length equals the shape's element count");
    Ok(NormGrads { dx, dgamma, dbeta })
}

fn flat<A: Copy + Into<f64>>(dims: &[usize], what: &'static str, x: &ArrayViewD<A>) -> Result<Vec<f64>> {
    if x.shape() != dims {
        return Err(crate::Error::ShapeMismatch { what, expected: format!("{dims:?}"), got: format!("{:?}", x.shape()) });
    }
    Ok(x.iter().map(|&v| v.into()).collect())
}

/// Group norm (PyTorch's `group_norm`): statistics per (sample, group) over the
/// group's `C / num_groups` channels and every position; per-channel `gamma`, `beta`.
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{reference, Layout, Shape};
/// let shape = Shape::new(&[1, 2, 2], Layout::ChannelsFirst).unwrap();
/// let x = ArrayD::from_shape_vec(shape.dims(), vec![1f32, 3., 5., 7.]).unwrap();
/// let out = reference::group_norm::<f32, f32>(&shape, &x.view(), 1, None, None, 0.0).unwrap();
/// assert!((out.y[[0, 1, 1]] - 3.0 / 5f64.sqrt()).abs() < 1e-12);
/// ```
pub fn group_norm<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    x: &ArrayViewD<A>,
    num_groups: usize,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> Result<NormForward> {
    let v = group_view(shape, num_groups)?;
    forward(&v, shape.dims(), &flat(shape.dims(), "x", x)?, gamma.map(to_f64).as_deref(), beta.map(to_f64).as_deref(), eps)
}

/// Backward of [`group_norm`] at its saved `mean` and `rstd`.
pub fn group_norm_backward<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    num_groups: usize,
    mean: &[P],
    rstd: &[P],
    gamma: Option<&[P]>,
) -> Result<NormGrads> {
    let v = group_view(shape, num_groups)?;
    let (dy, x) = (flat(shape.dims(), "dy", dy)?, flat(shape.dims(), "x", x)?);
    backward(&v, shape.dims(), &dy, &x, &to_f64(mean), &to_f64(rstd), gamma.map(to_f64).as_deref())
}

/// Instance norm with the instance's own statistics (PyTorch's `instance_norm`
/// with `use_input_stats`): per (sample, channel) over every position.
pub fn instance_norm<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    x: &ArrayViewD<A>,
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> Result<NormForward> {
    let v = instance_view(shape)?;
    forward(&v, shape.dims(), &flat(shape.dims(), "x", x)?, gamma.map(to_f64).as_deref(), beta.map(to_f64).as_deref(), eps)
}

/// Backward of [`instance_norm`] at its saved `mean` and `rstd`.
pub fn instance_norm_backward<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    shape: &Shape,
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    mean: &[P],
    rstd: &[P],
    gamma: Option<&[P]>,
) -> Result<NormGrads> {
    let v = instance_view(shape)?;
    let (dy, x) = (flat(shape.dims(), "dy", dy)?, flat(shape.dims(), "x", x)?);
    backward(&v, shape.dims(), &dy, &x, &to_f64(mean), &to_f64(rstd), gamma.map(to_f64).as_deref())
}

/// Instance norm's running statistics after one batch, as PyTorch's
/// `InstanceNorm` with `track_running_stats`: increments
/// `num_batches_tracked`, then `running = (1 - f) * running + f * batch`
/// where the batch's mean and variance are the averages over the samples of
/// each instance's mean and unbiased variance (`out` from [`instance_norm`]).
/// `running` must hold `C` values of each statistic and `out` `N * C` (`N` at
/// least 1), else [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) and
/// nothing changes.
pub fn instance_norm_update_running(
    running: &mut RunningStats<f64>,
    out: &NormForward,
    per_instance: usize,
    momentum: Momentum,
) -> Result<()> {
    let c = running.mean.len();
    let mismatch = |what, expected: String, got: usize| Error::ShapeMismatch { what, expected, got: got.to_string() };
    if c == 0 || running.var.len() != c {
        return Err(mismatch("running.var", format!("as many values as running.mean ({c}), at least one"), running.var.len()));
    }
    if out.mean.is_empty() || !out.mean.len().is_multiple_of(c) || out.var.len() != out.mean.len() {
        return Err(mismatch("out.mean", format!("N * {c} values, N >= 1, as many in out.var ({})", out.var.len()), out.mean.len()));
    }
    running.num_batches_tracked = running.num_batches_tracked.saturating_add(1);
    let f = f64::from(momentum.factor(running.num_batches_tracked));
    let n = out.mean.len() / c;
    let unbias = if per_instance > 1 { per_instance as f64 / (per_instance as f64 - 1.0) } else { 1.0 };
    for k in 0..c {
        let mean = (0..n).map(|b| out.mean[b * c + k]).sum::<f64>() / n as f64;
        let var = (0..n).map(|b| out.var[b * c + k]).sum::<f64>() / n as f64 * unbias;
        running.mean[k] = (1.0 - f) * running.mean[k] + f * mean;
        running.var[k] = (1.0 - f) * running.var[k] + f * var;
    }
    Ok(())
}

/// Layer norm (PyTorch's `layer_norm`): statistics per row over the trailing
/// `normalized_shape` dims of `x`; `gamma` and `beta` elementwise over them.
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::reference;
/// let x = ArrayD::from_shape_vec(vec![2, 2], vec![1f32, 3., 10., 10.]).unwrap();
/// let out = reference::layer_norm::<f32, f32>(&x.view(), &[2], None, Some(&[0.5, 0.25]), 0.0).unwrap();
/// assert_eq!(out.y.as_slice().unwrap()[..2], [-0.5, 1.25]);
/// ```
pub fn layer_norm<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    x: &ArrayViewD<A>,
    normalized_shape: &[usize],
    gamma: Option<&[P]>,
    beta: Option<&[P]>,
    eps: f64,
) -> Result<NormForward> {
    let v = trailing_view(x.shape(), normalized_shape, false)?;
    forward(&v, x.shape(), &flat(x.shape(), "x", x)?, gamma.map(to_f64).as_deref(), beta.map(to_f64).as_deref(), eps)
}

/// Backward of [`layer_norm`] at its saved `mean` and `rstd`.
pub fn layer_norm_backward<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    normalized_shape: &[usize],
    mean: &[P],
    rstd: &[P],
    gamma: Option<&[P]>,
) -> Result<NormGrads> {
    let v = trailing_view(x.shape(), normalized_shape, false)?;
    let dims = x.shape().to_vec();
    let (dy, x) = (flat(&dims, "dy", dy)?, flat(&dims, "x", x)?);
    backward(&v, &dims, &dy, &x, &to_f64(mean), &to_f64(rstd), gamma.map(to_f64).as_deref())
}

/// RMS norm (PyTorch's `rms_norm`): `y = x / sqrt(mean(x^2) + eps) * gamma`
/// per row over the trailing `normalized_shape` dims.
pub fn rms_norm<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    x: &ArrayViewD<A>,
    normalized_shape: &[usize],
    gamma: Option<&[P]>,
    eps: f64,
) -> Result<NormForward> {
    let v = trailing_view(x.shape(), normalized_shape, true)?;
    forward(&v, x.shape(), &flat(x.shape(), "x", x)?, gamma.map(to_f64).as_deref(), None, eps)
}

/// Backward of [`rms_norm`] at its saved `rstd`; `dbeta` is the sum of `dy`
/// per parameter (RMS norm itself has no `beta`).
pub fn rms_norm_backward<A: Copy + Into<f64>, P: Copy + Into<f64>>(
    dy: &ArrayViewD<A>,
    x: &ArrayViewD<A>,
    normalized_shape: &[usize],
    rstd: &[P],
    gamma: Option<&[P]>,
) -> Result<NormGrads> {
    let v = trailing_view(x.shape(), normalized_shape, true)?;
    let dims = x.shape().to_vec();
    let (dy, x) = (flat(&dims, "dy", dy)?, flat(&dims, "x", x)?);
    backward(&v, &dims, &dy, &x, &vec![0.0; v.rows()], &to_f64(rstd), gamma.map(to_f64).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use ndarray::Dimension;

    /// Central differences of `L = sum(w * y)` through `forward` against the
    /// analytic `grads`, for x, gamma and beta.
    fn check_finite_differences(
        x: &ArrayD<f64>,
        gamma: &[f64],
        beta: &[f64],
        forward: impl Fn(&ArrayD<f64>, &[f64], &[f64]) -> NormForward,
        backward: impl Fn(&ArrayD<f64>, &ArrayD<f64>, &NormForward, &[f64]) -> NormGrads,
    ) {
        let w = ArrayD::from_shape_fn(x.shape(), |i| ((i.slice().iter().sum::<usize>() * 7 + i[0] * 3) % 11) as f64 * 0.2 - 1.0);
        let loss = |x: &ArrayD<f64>, g: &[f64], b: &[f64]| (&forward(x, g, b).y * &w).sum();
        let out = forward(x, gamma, beta);
        let grads = backward(&w, x, &out, gamma);
        let h = 1e-6;
        let numeric = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        for (i, dx) in grads.dx.iter().enumerate() {
            let num = numeric(&|e| {
                let mut xp = x.clone();
                xp.as_slice_mut().unwrap()[i] += e;
                loss(&xp, gamma, beta)
            });
            assert!((num - dx).abs() < 1e-6, "dx[{i}]: numeric {num}, analytic {dx}");
        }
        for a in 0..gamma.len() {
            let num = numeric(&|e| {
                let mut g = gamma.to_vec();
                g[a] += e;
                loss(x, &g, beta)
            });
            assert!((num - grads.dgamma[a]).abs() < 1e-6, "dgamma[{a}]: numeric {num}, analytic {}", grads.dgamma[a]);
            let num = numeric(&|e| {
                let mut b = beta.to_vec();
                b[a] += e;
                loss(x, gamma, &b)
            });
            assert!((num - grads.dbeta[a]).abs() < 1e-6, "dbeta[{a}]");
        }
    }

    fn data(dims: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_fn(dims, |i| {
            ((i.slice().iter().enumerate().map(|(d, &v)| v * (5 + 4 * d)).sum::<usize>() * 13) % 17) as f64 * 0.3 - 2.0
        })
    }

    #[test]
    fn group_and_instance_norm_backward_match_finite_differences() {
        for (dims, layout, groups) in [(vec![2, 4, 3], Layout::ChannelsFirst, 2), (vec![2, 3, 2, 4], Layout::ChannelsLast, 2)] {
            let shape = Shape::new(&dims, layout).unwrap();
            let x = data(&dims);
            let (gamma, beta) = ([0.7, -1.3, 0.4, 1.1], [0.2, 0.4, -0.1, 0.3]);
            check_finite_differences(
                &x,
                &gamma,
                &beta,
                |x, g, b| group_norm(&shape, &x.view(), groups, Some(g), Some(b), 1e-3).unwrap(),
                |w, x, out, g| group_norm_backward(&shape, &w.view(), &x.view(), groups, &out.mean, &out.rstd, Some(g)).unwrap(),
            );
            check_finite_differences(
                &x,
                &gamma,
                &beta,
                |x, g, b| instance_norm(&shape, &x.view(), Some(g), Some(b), 1e-3).unwrap(),
                |w, x, out, g| instance_norm_backward(&shape, &w.view(), &x.view(), &out.mean, &out.rstd, Some(g)).unwrap(),
            );
        }
    }

    #[test]
    fn layer_and_rms_norm_backward_match_finite_differences() {
        let x = data(&[3, 2, 3]);
        let (gamma, beta) = ([0.7, -1.3, 0.4, 1.1, 0.9, -0.5], [0.2, 0.4, -0.1, 0.3, 0.0, 0.6]);
        check_finite_differences(
            &x,
            &gamma,
            &beta,
            |x, g, b| layer_norm(&x.view(), &[2, 3], Some(g), Some(b), 1e-3).unwrap(),
            |w, x, out, g| layer_norm_backward(&w.view(), &x.view(), &[2, 3], &out.mean, &out.rstd, Some(g)).unwrap(),
        );
        // RMS norm has no beta: its "dbeta" is sum dy, which is what a beta added after it would get.
        check_finite_differences(
            &x,
            &gamma,
            &beta,
            |x, g, b| {
                let mut out = rms_norm(&x.view(), &[2, 3], Some(g), 1e-3).unwrap();
                let y = out.y.as_slice_mut().unwrap();
                for (i, v) in y.iter_mut().enumerate() {
                    *v += b[i % b.len()];
                }
                out
            },
            |w, x, out, g| rms_norm_backward(&w.view(), &x.view(), &[2, 3], &out.rstd, Some(g)).unwrap(),
        );
    }

    #[test]
    fn normalized_shape_must_be_a_suffix() {
        let x = ArrayD::<f64>::zeros(vec![2, 3, 4]);
        assert!(matches!(layer_norm::<f64, f64>(&x.view(), &[3], None, None, 1e-5), Err(crate::Error::ShapeMismatch { .. })));
        assert!(layer_norm::<f64, f64>(&x.view(), &[3, 4], None, None, 1e-5).is_ok());
        let shape = Shape::new(&[2, 6, 4], Layout::ChannelsFirst).unwrap();
        assert!(matches!(group_norm::<f64, f64>(&shape, &x.view(), 4, None, None, 1e-5), Err(crate::Error::InvalidGroups { .. })));
    }
}
