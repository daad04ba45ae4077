//! Inference folding: batch norm in inference mode folded into the layer
//! before it (docs/SPEC.md, Inference folding). Per output channel `c`,
//!
//! ```text
//! k_c  = gamma_c / sqrt(running_var_c + eps)
//! W'   = W * k_c                                  every weight of output channel c
//! b'_c = (b_c - running_mean_c) * k_c + beta_c    a missing bias counts as zero
//! ```
//!
//! for convolution weights `(C_out, C_in / groups, k...)` or linear weights
//! `(C_out, C_in)`. On the CPU in f64 ([`fold`], [`scale_shift`]) and on the
//! GPU over the caller's buffers ([`GpuContext::encode_fold`],
//! [`GpuContext::encode_scale_shift`]) or host arrays ([`GpuContext::fold`],
//! [`GpuContext::scale_shift`]). The GPU folds the weights with `apply.wgsl`
//! over the weights viewed as a `(1, C_out, K)` tensor, after
//! `fold_params.wgsl` has computed each channel's `k` and folded bias.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::{GpuContext, PreparedKey};
use crate::device::Unused;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::ops::{all, channels, per_channel, per_window, Affine, RunningStats};
use crate::options::{Dtype, Options};
use crate::prepared::{Arg, Prepared, Slot, SlotKind};
use crate::shaders::{Kernel, FLAG_AFFINE, FLAG_BIAS};
use crate::shape::Shape;

/// Batch norm in inference mode as one multiply-add per channel,
/// `y = scale_c * x + shift_c`, for a caller's own fusion.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleShift {
    /// `k_c = gamma_c / sqrt(running_var_c + eps)`.
    pub scale: Vec<f32>,
    /// `beta_c - running_mean_c * k_c`.
    pub shift: Vec<f32>,
}

/// A layer's weights and bias with batch norm folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    /// `W * k` per output channel, shaped like the weights given.
    pub weight: ArrayD<f32>,
    /// `(b - running_mean) * k + beta`, `C_out` values.
    pub bias: Vec<f32>,
}

/// The weights as the `(1, C_out, K)` tensor the kernels scale, `K` the
/// weights of one output channel.
fn weight_shape(dims: &[usize]) -> Result<Shape> {
    match dims {
        [c_out, rest @ ..] if !rest.is_empty() => {
            let per_channel =
                rest.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(|| Error::TooManyElements { dims: dims.to_vec() })?;
            Shape::new(&[1, *c_out, per_channel], Layout::ChannelsFirst).map_err(|e| match e {
                Error::EmptyTensor { .. } => Error::EmptyTensor { dims: dims.to_vec() },
                other => other,
            })
        }
        _ => Err(Error::ShapeMismatch {
            what: "weight",
            expected: "(C_out, C_in / groups, k...) or (C_out, C_in)".into(),
            got: format!("dims {dims:?}"),
        }),
    }
}

/// Checks the per-channel arguments of a fold of `c` channels against `options`.
fn check_channels(c: usize, affine: Option<Affine<&[f32]>>, running: &RunningStats, bias: Option<&[f32]>, options: &Options) -> Result<()> {
    options.validate()?;
    options.check_affine(affine.is_some())?;
    options.check_running(true)?;
    let shape = Shape::new(&[1, c], Layout::ChannelsFirst)?;
    let mut lens = vec![("running_mean", running.mean.len()), ("running_var", running.var.len())];
    if let Some(a) = affine.map(Affine::with_shift).transpose()? {
        lens.extend([("gamma", a.gamma.len()), ("beta", a.beta.len())]);
    }
    if let Some(b) = bias {
        lens.push(("bias", b.len()));
    }
    lens.into_iter().try_for_each(|(what, len)| shape.check_channel_len(what, len))
}

/// `(k_c, beta_c, running_mean_c)` in f64.
fn folding_f64(c: usize, affine: Option<Affine<&[f32]>>, running: &RunningStats, eps: f32) -> Vec<(f64, f64, f64)> {
    (0..c)
        .map(|i| {
            let invstd = 1.0 / (f64::from(running.var[i]) + f64::from(eps)).sqrt();
            let gamma = affine.map_or(1.0, |a| f64::from(a.gamma[i]));
            let beta = affine.and_then(|a| a.beta).map_or(0.0, |b| f64::from(b[i]));
            (gamma * invstd, beta, f64::from(running.mean[i]))
        })
        .collect()
}

/// The per-channel `(scale, shift)` of batch norm in inference mode, on the
/// CPU in f64, rounded once to f32. `affine` must be given as
/// `options.affine` says, and `options.track_running_stats` must be true.
/// `options.epilogue` is not part of it: an activation or residual stays
/// after the scale and shift, for the caller to apply.
///
/// ```
/// use wgpu_batchnorm::{fold, Affine, Options, RunningStats};
/// let running = RunningStats { mean: vec![1.0], var: vec![3.0], num_batches_tracked: 1 };
/// let affine = Some(Affine { gamma: &[2.0f32][..], beta: Some(&[0.5f32][..]) });
/// let ss = fold::scale_shift(affine, &running, &Options { eps: 1.0, ..Options::default() })?;
/// assert_eq!((ss.scale[0], ss.shift[0]), (1.0, -0.5));
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
pub fn scale_shift(affine: Option<Affine<&[f32]>>, running: &RunningStats, options: &Options) -> Result<ScaleShift> {
    let c = running.mean.len();
    check_channels(c, affine, running, None, options)?;
    let (scale, shift) =
        folding_f64(c, affine, running, options.eps).into_iter().map(|(k, beta, mean)| (k as f32, (beta - mean * k) as f32)).unzip();
    Ok(ScaleShift { scale, shift })
}

/// Folds batch norm in inference mode into the layer before it, on the CPU
/// in f64: weights `(C_out, C_in / groups, k...)` or `(C_out, C_in)`, and
/// that layer's bias (`None` counts as zero). `affine` must be given as
/// `options.affine` says; `options.track_running_stats` must be true;
/// `options.epilogue` is not folded (apply its activation after the folded layer).
///
/// ```
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{fold, Options, RunningStats};
/// let w = ArrayD::from_shape_vec(vec![2, 1, 1, 1], vec![1.0f32, 2.0]).unwrap();
/// let running = RunningStats { mean: vec![1.0, 0.0], var: vec![3.0, 0.0], num_batches_tracked: 1 };
/// let options = Options { eps: 1.0, affine: false, ..Options::default() };
/// let f = fold::fold(&w.view(), Some(&[3.0, 1.0]), None, &running, &options)?;
/// assert_eq!((f.weight.as_slice().unwrap(), &f.bias[..]), (&[0.5, 2.0][..], &[1.0, 1.0][..]));
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
pub fn fold(
    weight: &ArrayViewD<'_, f32>,
    bias: Option<&[f32]>,
    affine: Option<Affine<&[f32]>>,
    running: &RunningStats,
    options: &Options,
) -> Result<Folded> {
    let shape = weight_shape(weight.shape())?;
    let c = shape.channels();
    check_channels(c, affine, running, bias, options)?;
    let folding = folding_f64(c, affine, running, options.eps);
    let per_channel = shape.inner();
    let w: Vec<f32> = weight.iter().enumerate().map(|(i, &w)| (f64::from(w) * folding[i / per_channel].0) as f32).collect();
    let bias = folding
        .iter()
        .enumerate()
        .map(|(i, &(k, beta, mean))| ((bias.map_or(0.0, |b| f64::from(b[i])) - mean) * k + beta) as f32)
        .collect();
    Ok(Folded { weight: ArrayD::from_shape_vec(weight.shape(), w).map_err(|e| Error::Readback(e.to_string()))?, bias })
}

/// Buffer slices of an inference fold on the GPU. All hold f32, need
/// `STORAGE` usage and start at a multiple of [`GpuContext::slice_alignment`];
/// outputs may be exactly their inputs (in place) and overlap nothing else.
#[derive(Debug, Clone, Copy)]
pub struct FoldBuffers<'a> {
    /// The previous layer's weights, `C_out * K` f32s in `(C_out, ...)` order.
    pub weight: wgpu::BufferSlice<'a>,
    /// Its bias, `C_out` f32s, or `None` (zero).
    pub bias: Option<wgpu::BufferSlice<'a>>,
    /// The folded weights out; may be `weight` itself.
    pub weight_out: wgpu::BufferSlice<'a>,
    /// The folded bias out, `C_out` f32s; may be `bias` itself.
    pub bias_out: wgpu::BufferSlice<'a>,
    /// Batch norm's `gamma` and `beta`, exactly when `options.affine`.
    pub affine: Option<Affine<wgpu::BufferSlice<'a>>>,
    /// Running mean, `C_out` f32s.
    pub running_mean: wgpu::BufferSlice<'a>,
    /// Running variance, `C_out` f32s.
    pub running_var: wgpu::BufferSlice<'a>,
}

/// Buffer slices of the scale-and-shift export on the GPU, `C` f32s each.
#[derive(Debug, Clone, Copy)]
pub struct ScaleShiftBuffers<'a> {
    /// `gamma` and `beta`, exactly when `options.affine`.
    pub affine: Option<Affine<wgpu::BufferSlice<'a>>>,
    /// Running mean.
    pub running_mean: wgpu::BufferSlice<'a>,
    /// Running variance.
    pub running_var: wgpu::BufferSlice<'a>,
    /// `k_c` out.
    pub scale: wgpu::BufferSlice<'a>,
    /// `beta_c - running_mean_c * k_c` out.
    pub shift: wgpu::BufferSlice<'a>,
}

const FOLD_SLOTS: [Slot; 8] = [
    Slot { name: "weight", kind: SlotKind::Tensor, output: false },
    Slot { name: "weight_out", kind: SlotKind::Tensor, output: true },
    Slot { name: "bias", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "bias_out", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "gamma", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "beta", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_mean", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_var", kind: SlotKind::PerChannel(1), output: false },
];

const SCALE_SHIFT_SLOTS: [Slot; 6] = [
    Slot { name: "gamma", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "beta", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_mean", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_var", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "scale", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "shift", kind: SlotKind::PerChannel(1), output: true },
];

impl GpuContext {
    fn cached_fold(&self, shape: &Shape, options: &Options, bias: bool) -> Result<Arc<Prepared>> {
        options.validate()?;
        options.check_running(true)?;
        let key = PreparedKey::new("fold", shape, [options.eps.to_bits(), 0], u32::from(options.affine) | u32::from(bias) << 1);
        self.cached(key, || {
            self.check_alive()?;
            let plan = self.plan(shape, Dtype::F32)?;
            let params = [
                (0, Arg::Uniform),
                (2, channels(4, Unused::Read)),
                (3, channels(5, Unused::Read)),
                (6, Arg::Params),
                (7, channels(6, Unused::Read)),
                (8, channels(7, Unused::Read)),
                (9, channels(2, Unused::Read)),
                (10, channels(3, Unused::WriteA)),
            ];
            let mut steps = vec![per_channel(&plan, Kernel::FoldParams, &params)];
            let apply = [(0, Arg::Uniform), (1, Arg::Tensor(0)), (2, Arg::Params), (3, Arg::Tensor(1))];
            steps.extend(per_window(&plan, |_| Kernel::Apply, |p| p.variant(), |p| p.stream_grid, &apply));
            Prepared::new(&self.parts(), shape, &plan, self.slice_alignment(), &FOLD_SLOTS, &[(1, 0), (3, 2)], steps, |g| {
                g.eps = options.eps;
                if options.affine {
                    g.flags |= FLAG_AFFINE;
                }
                if bias {
                    g.flags |= FLAG_BIAS;
                }
            })
        })
    }

    /// Records an inference fold into `encoder`: batch norm's running
    /// statistics, `gamma`, `beta` and `eps` folded into the weights (dims
    /// `weight_dims`, `(C_out, C_in / groups, k...)` or `(C_out, C_in)`) and
    /// bias of the layer before it, `W' = W * k`, `b' = (b - running_mean) * k + beta`
    /// ([`fold`] on the CPU). Checks every argument before recording anything;
    /// `options.track_running_stats` must be true. `options.epilogue` is not
    /// folded: an activation or residual stays after the folded layer.
    ///
    /// ```no_run
    /// use wgpu_batchnorm::{fold::FoldBuffers, GpuContext, Options};
    /// let ctx = GpuContext::new_blocking()?;
    /// let (c_out, c_in) = (64, 32);
    /// let weight = ctx.upload("conv weight", &vec![0.1; c_out * c_in * 9])?;
    /// let bias = ctx.storage("conv bias", c_out)?;
    /// let (mean, var) = (ctx.upload("running_mean", &vec![0.0; c_out])?, ctx.upload("running_var", &vec![1.0; c_out])?);
    /// let options = Options { affine: false, ..Options::default() };
    /// let buffers = FoldBuffers {
    ///     weight: weight.slice(..), bias: Some(bias.slice(..)), weight_out: weight.slice(..), bias_out: bias.slice(..),
    ///     affine: None, running_mean: mean.slice(..), running_var: var.slice(..),
    /// };
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// ctx.encode_fold(&mut encoder, &[c_out, c_in, 3, 3], &options, &buffers)?; // in place
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn encode_fold(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        weight_dims: &[usize],
        options: &Options,
        b: &FoldBuffers<'_>,
    ) -> Result<()> {
        self.record_fold(encoder, weight_dims, options, b)
    }

    fn record_fold(&self, encoder: &mut wgpu::CommandEncoder, dims: &[usize], options: &Options, b: &FoldBuffers<'_>) -> Result<()> {
        let shape = weight_shape(dims)?;
        options.check_affine(b.affine.is_some())?;
        let affine = b.affine.map(Affine::with_shift).transpose()?;
        let prepared = self.cached_fold(&shape, options, b.bias.is_some())?;
        let slices = [
            Some(b.weight),
            Some(b.weight_out),
            b.bias,
            Some(b.bias_out),
            affine.map(|a| a.gamma),
            affine.map(|a| a.beta),
            Some(b.running_mean),
            Some(b.running_var),
        ];
        prepared.record(encoder, &slices, None, None)
    }

    /// [`GpuContext::encode_fold`] on host arrays: uploads, folds, downloads.
    /// As there, `options.epilogue` is not folded: it stays after the folded layer.
    pub async fn fold(
        &self,
        weight: &ArrayViewD<'_, f32>,
        bias: Option<&[f32]>,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<Folded> {
        let shape = weight_shape(weight.shape())?;
        let c = shape.channels();
        check_channels(c, affine, running, bias, options)?;
        let _serial = self.serialize().await;
        self.plan(&shape, Dtype::F32)?;
        self.check_alive()?;
        let data: Vec<f32> = weight.iter().copied().collect();
        let (w, w_out) = (self.upload("weight", &data)?, self.storage("weight_out", data.len())?);
        let b = bias.map(|b| self.upload("bias", b)).transpose()?;
        let b_out = self.storage("bias_out", c)?;
        let affine_buffers = self.upload_affine(affine.map(Affine::with_shift).transpose()?)?;
        let (mean, var) = (self.upload("running_mean", &running.mean)?, self.upload("running_var", &running.var)?);
        let buffers = FoldBuffers {
            weight: all(&w),
            bias: b.as_ref().map(all),
            weight_out: all(&w_out),
            bias_out: all(&b_out),
            affine: affine_buffers.as_ref().map(|a| Affine { gamma: all(&a.gamma), beta: Some(all(&a.beta)) }),
            running_mean: all(&mean),
            running_var: all(&var),
        };
        self.run(|encoder| self.record_fold(encoder, weight.shape(), options, &buffers)).await?;
        let mut out = self.download_serialized(&[(&w_out, data.len()), (&b_out, c)]).await?.into_iter();
        let weight = ArrayD::from_shape_vec(weight.shape(), out.next().unwrap_or_default()).map_err(|e| Error::Readback(e.to_string()))?;
        Ok(Folded { weight, bias: out.next().unwrap_or_default() })
    }

    /// Blocking [`GpuContext::fold`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn fold_blocking(
        &self,
        weight: &ArrayViewD<'_, f32>,
        bias: Option<&[f32]>,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<Folded> {
        pollster::block_on(self.fold(weight, bias, affine, running, options))
    }

    /// Records the export of batch norm in inference mode as per-channel
    /// `(scale, shift)` for `channels` channels ([`scale_shift`] on the CPU).
    /// `options.epilogue` is not part of it: an activation or residual stays
    /// after the scale and shift.
    pub fn encode_scale_shift(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        channels: usize,
        options: &Options,
        b: &ScaleShiftBuffers<'_>,
    ) -> Result<()> {
        self.record_scale_shift(encoder, channels, options, b)
    }

    fn record_scale_shift(&self, encoder: &mut wgpu::CommandEncoder, c: usize, options: &Options, b: &ScaleShiftBuffers<'_>) -> Result<()> {
        options.validate()?;
        options.check_running(true)?;
        options.check_affine(b.affine.is_some())?;
        let shape = Shape::new(&[1, c, 1], Layout::ChannelsFirst)?;
        let key = PreparedKey::new("scale_shift", &shape, [options.eps.to_bits(), 0], u32::from(options.affine));
        let prepared = self.cached(key, || {
            self.check_alive()?;
            let plan = self.plan(&shape, Dtype::F32)?;
            let args = [
                (0, Arg::Uniform),
                (2, channels(0, Unused::Read)),
                (3, channels(1, Unused::Read)),
                (7, channels(2, Unused::Read)),
                (8, channels(3, Unused::Read)),
                (10, channels(4, Unused::WriteA)),
                (11, channels(5, Unused::WriteB)),
            ];
            let steps = vec![per_channel(&plan, Kernel::ScaleShift, &args)];
            Prepared::new(&self.parts(), &shape, &plan, self.slice_alignment(), &SCALE_SHIFT_SLOTS, &[], steps, |g| {
                g.eps = options.eps;
                if options.affine {
                    g.flags |= FLAG_AFFINE;
                }
            })
        })?;
        let affine = b.affine.map(Affine::with_shift).transpose()?;
        let slices =
            [affine.map(|a| a.gamma), affine.map(|a| a.beta), Some(b.running_mean), Some(b.running_var), Some(b.scale), Some(b.shift)];
        prepared.record(encoder, &slices, None, None)
    }

    /// [`GpuContext::encode_scale_shift`] on host arrays.
    pub async fn scale_shift(&self, affine: Option<Affine<&[f32]>>, running: &RunningStats, options: &Options) -> Result<ScaleShift> {
        let c = running.mean.len();
        check_channels(c, affine, running, None, options)?;
        let _serial = self.serialize().await;
        self.check_alive()?;
        let affine_buffers = self.upload_affine(affine.map(Affine::with_shift).transpose()?)?;
        let (mean, var) = (self.upload("running_mean", &running.mean)?, self.upload("running_var", &running.var)?);
        let (scale, shift) = (self.storage("scale", c)?, self.storage("shift", c)?);
        let buffers = ScaleShiftBuffers {
            affine: affine_buffers.as_ref().map(|a| Affine { gamma: all(&a.gamma), beta: Some(all(&a.beta)) }),
            running_mean: all(&mean),
            running_var: all(&var),
            scale: all(&scale),
            shift: all(&shift),
        };
        self.run(|encoder| self.record_scale_shift(encoder, c, options, &buffers)).await?;
        let mut out = self.download_serialized(&[(&scale, c), (&shift, c)]).await?.into_iter();
        Ok(ScaleShift { scale: out.next().unwrap_or_default(), shift: out.next().unwrap_or_default() })
    }

    /// Blocking [`GpuContext::scale_shift`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scale_shift_blocking(&self, affine: Option<Affine<&[f32]>>, running: &RunningStats, options: &Options) -> Result<ScaleShift> {
        pollster::block_on(self.scale_shift(affine, running, options))
    }
}
