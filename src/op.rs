//! The op model: which normalization runs over which axes ([`Norm`]), and the
//! one set of calls every op takes: prepare, encode and `ndarray`, forward and
//! backward, with one options type ([`Options`]), one saved-statistics type
//! ([`NormStats`]) and one set of buffer structs ([`NormForwardBuffers`],
//! [`NormBackwardBuffers`]). A caller who has wired one op has wired them all:
//! only the descriptor changes.

use ndarray::ArrayViewD;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::norms::group_norm::group_view;
use crate::norms::instance_norm::instance_view;
use crate::norms::layer_norm::trailing_view;
use crate::norms::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward, RowView};
use crate::ops::backward::{BackwardBuffers, BackwardStats, ParamGradBuffers};
use crate::ops::forward_train::ForwardTrainBuffers;
use crate::ops::{Affine, BackwardInputs, Gradients, RunningStats};
use crate::options::{check_present, Element, Epilogue, Momentum, Options, RunningVariance};
use crate::prepared::SlotBytes;
use crate::shape::Shape;

/// Which normalization, over which axes: the one argument that differs
/// between the ops. Statistics are kept per "row": per channel for batch
/// norm, per (sample, group) for group norm, per (sample, channel) for
/// instance norm, per row of the trailing `normalized_shape` for layer and
/// RMS norm ([`PreparedNorm::rows`]).
///
/// ```no_run
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, Layout, Norm, Shape};
/// let ctx = GpuContext::new_blocking()?;
/// let x = ArrayD::from_shape_fn(vec![2, 8, 4, 4], |i| (i[1] * 16 + i[2] * 4 + i[3]) as f32);
/// let shape = Shape::new(x.shape(), Layout::ChannelsFirst)?;
/// for op in [
///     Norm::Batch(shape.clone()),
///     Norm::Group { shape: shape.clone(), groups: 4 },
///     Norm::Instance(shape.clone()),
///     Norm::Layer { dims: x.shape().to_vec(), normalized_shape: vec![4, 4] },
///     Norm::Rms { dims: x.shape().to_vec(), normalized_shape: vec![4, 4] },
/// ] {
///     let options = wgpu_batchnorm::Options { affine: false, ..op.default_options() };
///     let out = ctx.norm_blocking(&op, &x.view(), None, None, None, &options)?;
///     assert_eq!(out.rstd.len(), op.rows()?);
/// }
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Norm {
    /// Batch norm (PyTorch's `BatchNorm1d/2d/3d`): statistics per channel
    /// over the samples and positions; `gamma`, `beta` and running statistics per channel.
    Batch(Shape),
    /// Group norm (`GroupNorm`): statistics per (sample, group) over the
    /// group's `C / groups` channels and every position; `gamma` and `beta` per channel.
    Group {
        /// The tensor's shape and layout.
        shape: Shape,
        /// `G`: must divide the channels ([`Error::InvalidGroups`] otherwise).
        groups: usize,
    },
    /// Instance norm (`InstanceNorm1d/2d/3d`): statistics per (sample,
    /// channel) over every position; `gamma`, `beta` and running statistics
    /// (averaged over the batch) per channel.
    Instance(Shape),
    /// Layer norm (`LayerNorm`) of a tensor of `dims` over its trailing
    /// `normalized_shape`; `gamma` and `beta` elementwise over it.
    Layer {
        /// The tensor's dims.
        dims: Vec<usize>,
        /// A non-empty suffix of `dims`.
        normalized_shape: Vec<usize>,
    },
    /// RMS norm (`RMSNorm`): layer norm without centering (no `mean`) and
    /// with `gamma` only (no `beta`, no `dbeta`).
    Rms {
        /// The tensor's dims.
        dims: Vec<usize>,
        /// A non-empty suffix of `dims`.
        normalized_shape: Vec<usize>,
    },
}

/// The op's row view (the engine's description of its rows), `None` for batch norm.
enum View {
    Batch(Shape),
    Rows(RowView),
}

impl Norm {
    /// PyTorch's defaults for the op's module: [`Options::default`] for
    /// batch norm; no affine parameters and no running statistics for
    /// instance norm; affine parameters and no running statistics for the
    /// others (which keep none).
    ///
    /// ```
    /// use wgpu_batchnorm::{Layout, Norm, Shape};
    /// let shape = Shape::new(&[2, 3, 8], Layout::ChannelsFirst)?;
    /// assert!(!Norm::Instance(shape.clone()).default_options().affine);
    /// assert!(Norm::Batch(shape).default_options().track_running_stats);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn default_options(&self) -> Options {
        match self {
            Norm::Batch(_) => Options::default(),
            Norm::Instance(_) => Options { affine: false, track_running_stats: false, ..Options::default() },
            // PyTorch's `eps = None`: the dtype's machine epsilon, f32's for the f32 statistics.
            Norm::Rms { .. } => Options { eps: f32::EPSILON, track_running_stats: false, ..Options::default() },
            _ => Options { track_running_stats: false, ..Options::default() },
        }
    }

    /// The tensor's dims.
    pub fn dims(&self) -> &[usize] {
        match self {
            Norm::Batch(shape) | Norm::Group { shape, .. } | Norm::Instance(shape) => shape.dims(),
            Norm::Layer { dims, .. } | Norm::Rms { dims, .. } => dims,
        }
    }

    /// Rows of statistics: the length of `mean` and `rstd`.
    pub fn rows(&self) -> Result<usize> {
        Ok(match self.view()? {
            View::Batch(shape) => shape.channels(),
            View::Rows(view) => view.rows(),
        })
    }

    /// Affine parameters: the length of `gamma`, `beta`, `dgamma` and `dbeta`.
    pub fn params(&self) -> Result<usize> {
        Ok(match self.view()? {
            View::Batch(shape) => shape.channels(),
            View::Rows(view) => view.params,
        })
    }

    fn view(&self) -> Result<View> {
        Ok(match self {
            Norm::Batch(shape) => View::Batch(shape.clone()),
            Norm::Group { shape, groups } => View::Rows(group_view(shape, *groups)?),
            Norm::Instance(shape) => View::Rows(instance_view(shape)?),
            Norm::Layer { dims, normalized_shape } => View::Rows(trailing_view(dims, normalized_shape, false)?),
            Norm::Rms { dims, normalized_shape } => View::Rows(trailing_view(dims, normalized_shape, true)?),
        })
    }

    /// The names of the op's forward and backward (the context's cache keys).
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Norm::Batch(_) => ("batch_norm", "batch_norm_backward"),
            Norm::Group { .. } => ("group_norm", "group_norm_backward"),
            Norm::Instance(_) => ("instance_norm", "instance_norm_backward"),
            Norm::Layer { .. } => ("layer_norm", "layer_norm_backward"),
            Norm::Rms { .. } => ("rms_norm", "rms_norm_backward"),
        }
    }

    /// The row view for `options`, checking what the options ask of the op.
    fn checked(&self, options: &Options) -> Result<View> {
        options.validate()?;
        if !matches!(self, Norm::Batch(_)) && options.epilogue != Epilogue::default() {
            return Err(Error::OptionsMismatch { what: "epilogue", reason: "only batch norm fuses an epilogue".into() });
        }
        match self {
            Norm::Batch(_) => {}
            Norm::Instance(_) if options.track_running_stats && options.running_variance != RunningVariance::Unbiased => {
                let reason = "instance norm's running variance is unbiased over each instance".into();
                return Err(Error::OptionsMismatch { what: "running_variance", reason });
            }
            Norm::Instance(_) => {}
            _ if options.track_running_stats => {
                let reason = "only batch and instance norm keep running statistics".into();
                return Err(Error::OptionsMismatch { what: "track_running_stats", reason });
            }
            _ => {}
        }
        Ok(match self.view()? {
            View::Rows(view) => View::Rows(view.typed(options.dtype)),
            batch => batch,
        })
    }

    /// Checks what `options` ask of the op: running statistics only for
    /// batch and instance norm, an epilogue only for batch norm.
    pub(crate) fn check_options(&self, options: &Options) -> Result<()> {
        self.checked(options).map(drop)
    }

    /// Instance norm's running statistics' momentum, where tracked.
    fn running(&self, options: &Options) -> Option<Momentum> {
        (matches!(self, Norm::Instance(_)) && options.track_running_stats).then_some(options.momentum)
    }
}

/// The two tensors of a backward pass, named so that they cannot be swapped.
#[derive(Debug, Clone)]
pub struct NormBackwardInputs<'a, E = f32> {
    /// The upstream gradient, `dL/dy`, shaped like `x`.
    pub dy: ArrayViewD<'a, E>,
    /// The forward pass's input.
    pub x: ArrayViewD<'a, E>,
}

/// Batch norm's forward slices from the family's.
pub(crate) fn train_buffers<'a>(b: &NormForwardBuffers<'a>) -> Result<ForwardTrainBuffers<'a>> {
    let mean = batch_mean(b.stats.mean)?;
    Ok(ForwardTrainBuffers {
        x: b.x,
        y: b.y,
        save_mean: mean,
        save_invstd: b.stats.rstd,
        affine: affine_pair(b.gamma, b.beta)?,
        running: b.running,
        residual: b.residual,
    })
}

/// Batch norm's backward slices from the family's.
pub(crate) fn backward_buffers<'a>(b: &NormBackwardBuffers<'a>) -> Result<BackwardBuffers<'a>> {
    let mean = batch_mean(b.stats.mean)?;
    let param_grads = match b.param_grads {
        Some(p) => {
            let dbeta = p.dbeta.ok_or_else(|| Error::OptionsMismatch { what: "dbeta", reason: "batch norm writes dbeta".into() })?;
            Some(ParamGradBuffers { dgamma: p.dgamma, dbeta })
        }
        None => None,
    };
    Ok(BackwardBuffers {
        dy: b.dy,
        x: b.x,
        dx: b.dx,
        stats: BackwardStats::Batch { save_mean: mean, save_invstd: b.stats.rstd },
        gamma: b.gamma,
        param_grads,
        z: b.z,
        dresidual: b.dresidual,
    })
}

/// Batch norm's slots under the names of [`NormForwardBuffers`] and
/// [`NormBackwardBuffers`]: its saved statistics are `mean` and `rstd` there.
pub(crate) fn unified_names(mut slots: Vec<SlotBytes>) -> Vec<SlotBytes> {
    for slot in &mut slots {
        slot.name = match slot.name {
            "save_mean" | "save_mean or running_mean" => "mean",
            "save_invstd" | "save_invstd or running_var" => "rstd",
            name => name,
        };
    }
    slots
}

/// Batch norm's saved mean, which it always has.
fn batch_mean<T>(mean: Option<T>) -> Result<T> {
    mean.ok_or_else(|| Error::OptionsMismatch { what: "mean", reason: "batch norm centers, but no mean was given".into() })
}

/// `gamma` and `beta`, both or neither.
fn affine_pair<T>(gamma: Option<T>, beta: Option<T>) -> Result<Option<Affine<T>>> {
    match (gamma, beta) {
        (Some(gamma), Some(beta)) => Ok(Some(Affine { gamma, beta })),
        (None, None) => Ok(None),
        _ => Err(Error::OptionsMismatch { what: "gamma and beta", reason: "batch norm takes both or neither".into() }),
    }
}

impl GpuContext {
    /// Plans the forward of `op` ([`PreparedNorm`]): pipelines compiled,
    /// uniforms and scratch created once; each record binds the caller's slices.
    ///
    /// ```no_run
    /// use wgpu_batchnorm::{GpuContext, Layout, Norm, NormForwardBuffers, NormStats, Shape};
    /// let ctx = GpuContext::new_blocking()?;
    /// let op = Norm::Group { shape: Shape::new(&[8, 32, 16, 16], Layout::ChannelsFirst)?, groups: 8 };
    /// let options = wgpu_batchnorm::Options { affine: false, ..op.default_options() };
    /// let forward = ctx.prepare_norm(&op, &options)?;
    /// let (x, y) = (ctx.storage("x", 8 * 32 * 256)?, ctx.storage("y", 8 * 32 * 256)?);
    /// let stats = ctx.storage("mean and rstd", 128)?; // 64 rows each, 256 bytes apart
    /// let buffers = NormForwardBuffers {
    ///     x: x.slice(..), y: y.slice(..),
    ///     stats: NormStats { mean: Some(stats.slice(..256)), rstd: stats.slice(256..) },
    ///     gamma: None, beta: None, running: None, residual: None,
    /// };
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// forward.record(&mut encoder, &buffers)?;
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn prepare_norm(&self, op: &Norm, options: &Options) -> Result<PreparedNorm> {
        self.norm_forward_op_for(op, options, false)
    }

    /// Plans the backward of `op` ([`PreparedNormBackward`]) at the forward's
    /// saved statistics, writing `dgamma` and `dbeta` where `param_grads`
    /// (which needs `options.affine`).
    pub fn prepare_norm_backward(&self, op: &Norm, options: &Options, param_grads: bool) -> Result<PreparedNormBackward> {
        self.norm_backward_op_for(op, options, param_grads, false)
    }

    /// Records the forward of `op` into `encoder` over the caller's slices,
    /// through a prepared op the context keeps.
    pub fn encode_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &Norm, options: &Options, b: &NormForwardBuffers<'_>) -> Result<()> {
        self.norm_forward_op_for(op, options, true)?.record(encoder, b)
    }

    /// Records the backward of `op` into `encoder` over the caller's slices,
    /// through a prepared op the context keeps.
    pub fn encode_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Norm,
        options: &Options,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        self.norm_backward_op_for(op, options, b.param_grads.is_some(), true)?.record(encoder, b)
    }

    /// The forward of `op` on host arrays (training mode, or any mode
    /// without running statistics): `y` and the saved statistics, as
    /// [`NormForwardBuffers`] on the GPU. `gamma` exactly when
    /// `options.affine`, `beta` too but for RMS norm; `running` exactly when
    /// `options.track_running_stats`, updated in place. A fused residual is
    /// an encoder-level argument ([`NormForwardBuffers::residual`]).
    pub async fn norm<E: Element>(
        &self,
        op: &Norm,
        x: &ArrayViewD<'_, E>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<NormOutput<E>> {
        let view = op.checked(options)?;
        check_dims(op, x.shape())?;
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        check_present("beta", "affine (and not RMS norm)", options.affine && !matches!(op, Norm::Rms { .. }), beta.is_some())?;
        check_present("running statistics", "track_running_stats", options.track_running_stats, running.is_some())?;
        match view {
            View::Batch(shape) => {
                let out = self.forward_train(x, shape.layout(), affine_pair(gamma, beta)?, running, options).await?;
                Ok(NormOutput { y: out.y, mean: Some(out.save_mean), rstd: out.save_invstd })
            }
            View::Rows(view) => {
                let running = running.zip(op.running(options));
                self.norm_forward_host(op.names().0, x, view, options.eps, gamma, beta, running).await
            }
        }
    }

    /// Blocking [`GpuContext::norm`].
    pub fn norm_blocking<E: Element>(
        &self,
        op: &Norm,
        x: &ArrayViewD<'_, E>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.norm(op, x, gamma, beta, running, options))
    }

    /// The backward of `op` on host arrays, at the forward's
    /// [`NormOutput::stats`]: `dx`, and `dgamma` and `dbeta` exactly when
    /// `options.affine` (then `gamma` is given; RMS norm has no `dbeta`).
    pub async fn norm_backward<E: Element>(
        &self,
        op: &Norm,
        inputs: &NormBackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients<E>> {
        let view = op.checked(options)?;
        check_dims(op, inputs.x.shape())?;
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        match view {
            View::Batch(shape) => {
                let save_mean = batch_mean(stats.mean)?;
                let inputs = BackwardInputs { dy: inputs.dy.view(), x: inputs.x.view(), layout: shape.layout() };
                let stats = BackwardStats::Batch { save_mean, save_invstd: stats.rstd };
                self.backward(&inputs, stats, gamma, options).await
            }
            View::Rows(view) => self.norm_backward_host(op.names().1, &inputs.dy, &inputs.x, view, options.eps, stats, gamma).await,
        }
    }

    /// Blocking [`GpuContext::norm_backward`].
    pub fn norm_backward_blocking<E: Element>(
        &self,
        op: &Norm,
        inputs: &NormBackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.norm_backward(op, inputs, stats, gamma, options))
    }

    fn norm_forward_op_for(&self, op: &Norm, options: &Options, cache: bool) -> Result<PreparedNorm> {
        match op.checked(options)? {
            View::Batch(shape) => {
                let batch = if cache { self.cached_forward_train(&shape, options)? } else { self.prepare_forward_train(&shape, options)? };
                Ok(PreparedNorm::batch(batch))
            }
            View::Rows(view) => self.norm_forward_op(op.names().0, view, options.eps, options.affine, op.running(options), cache),
        }
    }

    fn norm_backward_op_for(&self, op: &Norm, options: &Options, param_grads: bool, cache: bool) -> Result<PreparedNormBackward> {
        match op.checked(options)? {
            View::Batch(shape) => {
                let batch = if cache {
                    self.cached_backward(&shape, options, true, param_grads)?
                } else {
                    self.prepare_backward(&shape, options, true, param_grads)?
                };
                Ok(PreparedNormBackward::batch(batch))
            }
            View::Rows(view) => self.norm_backward_op(op.names().1, view, options.eps, options.affine, param_grads, cache),
        }
    }
}

/// Checks a host array's dims against the descriptor's.
fn check_dims(op: &Norm, dims: &[usize]) -> Result<()> {
    if dims != op.dims() {
        return Err(Error::ShapeMismatch { what: "x", expected: format!("{:?} (the op's dims)", op.dims()), got: format!("{dims:?}") });
    }
    Ok(())
}
