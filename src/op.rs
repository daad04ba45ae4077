//! The op model: which normalization runs over which axes ([`Norm`]), and the
//! one set of calls every op takes: prepare, encode and `ndarray`; forward,
//! backward, and for the ops with running statistics the inference forward
//! and its backward; with one options type ([`Options`]), one saved-
//! statistics type ([`NormStats`](crate::NormStats), [`BackwardStats`]) and one set of buffer
//! structs ([`NormForwardBuffers`], [`NormBackwardBuffers`],
//! [`NormInferenceBuffers`]). A caller who has wired one op has wired them
//! all: only the descriptor changes.

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::norms::batch_norm::forward_inference::{ForwardInferenceBuffers, PreparedForwardInference};
use crate::norms::group_norm::group_view;
use crate::norms::instance_norm::instance_view;
use crate::norms::layer_norm::trailing_view;
use crate::norms::{
    affine_pair, check_family_options, NormBackwardBuffers, NormForwardBuffers, NormOutput, PreparedNorm, PreparedNormBackward, RowView,
};
use crate::ops::{BackwardStats, EpilogueBackwardInputs, Gradients, RunningStats};
use crate::options::{check_present, Element, Momentum, Options};
use crate::prepared::{Bound, SlotBytes};
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
///     let out = ctx.norm_blocking(&op, x.view(), None, None, None, &options)?;
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
    /// others (which keep none), RMS norm with `eps = f32::EPSILON`.
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
        match self {
            Norm::Batch(_) => options.validate()?,
            _ => check_family_options(options, matches!(self, Norm::Instance(_)))?,
        }
        Ok(match self.view()? {
            View::Rows(view) => View::Rows(view.typed(options.dtype)),
            batch => batch,
        })
    }

    /// The shape whose channels hold the op's running statistics: batch and
    /// instance norm's (whose inference forward and its backward are batch
    /// norm's over it); an error for the others.
    fn running_shape(&self, options: &Options) -> Result<Shape> {
        self.checked(options)?;
        match self {
            Norm::Batch(shape) | Norm::Instance(shape) => Ok(shape.clone()),
            _ => Err(Error::OptionsMismatch {
                what: "running statistics",
                reason: "only batch and instance norm keep running statistics, which the inference forward uses".into(),
            }),
        }
    }

    /// Instance norm's running statistics' momentum, where tracked.
    fn running(&self, options: &Options) -> Option<Momentum> {
        (matches!(self, Norm::Instance(_)) && options.track_running_stats).then_some(options.momentum)
    }
}

/// The tensors of a forward pass on host arrays: `x`, and batch norm's
/// fused residual (exactly when `options.epilogue.residual`). A view of `x`
/// converts into it (`x.view()` where the calls take `impl Into<NormInputs>`).
#[derive(Debug, Clone)]
pub struct NormInputs<'a, E = f32> {
    /// The input.
    pub x: ArrayViewD<'a, E>,
    /// The residual added before the epilogue's activation, shaped like `x`.
    pub residual: Option<ArrayViewD<'a, E>>,
}

impl<'a, E> From<ArrayViewD<'a, E>> for NormInputs<'a, E> {
    fn from(x: ArrayViewD<'a, E>) -> Self {
        Self { x, residual: None }
    }
}

impl<'a, E> From<&ArrayViewD<'a, E>> for NormInputs<'a, E> {
    fn from(x: &ArrayViewD<'a, E>) -> Self {
        Self { x: x.clone(), residual: None }
    }
}

/// The tensors of a backward pass on host arrays, named so that they cannot be swapped.
#[derive(Debug, Clone)]
pub struct NormBackwardInputs<'a, E = f32> {
    /// The upstream gradient, shaped like `x`: `dL/dy`, or `dL/dz` through
    /// batch norm's fused epilogue.
    pub dy: ArrayViewD<'a, E>,
    /// The forward pass's input.
    pub x: ArrayViewD<'a, E>,
    /// The fused forward's output `z`, exactly when the epilogue has an
    /// activation: the mask is read from it (`z > 0`).
    pub z: Option<ArrayViewD<'a, E>>,
}

/// Buffer slices of an inference forward (batch and instance norm at their
/// running statistics): `y = gamma * (x - running_mean) / sqrt(running_var +
/// eps) + beta` per channel. Tensors hold the options' `dtype`, the rest f32;
/// all need `STORAGE` usage and start at a multiple of
/// [`GpuContext::slice_alignment`].
#[derive(Debug, Clone, Copy)]
pub struct NormInferenceBuffers<'a> {
    /// Input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Output, `numel` values of the options' `dtype`: either exactly `x` (in
    /// place) or overlapping no other argument.
    pub y: wgpu::BufferSlice<'a>,
    /// `gamma`, `C` f32s, exactly when `options.affine`.
    pub gamma: Option<wgpu::BufferSlice<'a>>,
    /// `beta`, as `gamma`.
    pub beta: Option<wgpu::BufferSlice<'a>>,
    /// Running mean, `C` f32s.
    pub running_mean: wgpu::BufferSlice<'a>,
    /// Running variance, `C` f32s.
    pub running_var: wgpu::BufferSlice<'a>,
    /// Batch norm's fused residual, exactly when `options.epilogue.residual`;
    /// `y` may be this very slice (in place).
    pub residual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the op's dispatches, [`PreparedNormInference::workspace_bytes`] bytes
    /// (written; no other argument may overlap it), to share one pooled
    /// buffer among ops; `None`: the op's own, made at its first bind.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

/// An inference forward planned for one op and options
/// ([`GpuContext::prepare_norm_inference`]); see [`PreparedNorm`].
#[derive(Debug, Clone)]
pub struct PreparedNormInference {
    op: PreparedForwardInference,
}

impl PreparedNormInference {
    /// The bytes each slice of [`NormInferenceBuffers`] must hold (a framework's allocation
    /// plan); optional ones are listed whatever the options, and the
    /// `workspace` last ([`Self::workspace_bytes`]).
    pub fn slot_bytes(&self) -> Vec<SlotBytes> {
        self.op.program().slot_bytes()
    }

    /// Bytes of the scratch its dispatches share: the least a caller's
    /// `workspace` slice holds (0: the op needs none). A framework that pools
    /// memory sizes one workspace for the largest of its ops and passes it to
    /// each; ops recorded one after another may share it.
    pub fn workspace_bytes(&self) -> u64 {
        self.op.program().workspace_bytes()
    }

    /// Bytes of device memory the op holds of its own: its uniforms, and its
    /// workspace once a bind without the caller's made it.
    pub fn held_bytes(&self) -> u64 {
        self.op.program().held_bytes()
    }

    /// Channels: the length of `gamma`, `beta` and the running statistics.
    pub fn params(&self) -> usize {
        self.op.shape().channels()
    }

    /// Records the op over `b` into `encoder`: every argument is checked
    /// first, and nothing is recorded when one is wrong. The slices are bound
    /// for this record alone: the op keeps none of them.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &NormInferenceBuffers<'_>) -> Result<()> {
        self.op.record(encoder, &inference_buffers(b)?)
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]).
    pub fn bind(&self, b: &NormInferenceBuffers<'_>) -> Result<Bound> {
        self.op.bind(&inference_buffers(b)?)
    }
}

fn inference_buffers<'a>(b: &NormInferenceBuffers<'a>) -> Result<ForwardInferenceBuffers<'a>> {
    Ok(ForwardInferenceBuffers {
        x: b.x,
        y: b.y,
        affine: affine_pair(b.gamma, b.beta)?,
        running_mean: b.running_mean,
        running_var: b.running_var,
        residual: b.residual,
        workspace: b.workspace,
    })
}

impl GpuContext {
    /// Plans the forward of `op` ([`PreparedNorm`]) with the input's own
    /// statistics (training mode, or any mode without running statistics):
    /// pipelines compiled and uniforms written once; each record binds the
    /// caller's slices, and its workspace or the op's own.
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
    ///     gamma: None, beta: None, running: None, residual: None, workspace: None,
    /// };
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// forward.record(&mut encoder, &buffers)?;
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn prepare_norm(&self, op: &Norm, options: &Options) -> Result<PreparedNorm> {
        self.norm_forward_op_for(op, options, false)
    }

    /// Plans the backward of `op` at the forward's saved statistics
    /// ([`BackwardStats::Saved`]), writing `dgamma` and `dbeta` where
    /// `param_grads` (which needs `options.affine`).
    pub fn prepare_norm_backward(&self, op: &Norm, options: &Options, param_grads: bool) -> Result<PreparedNormBackward> {
        self.norm_backward_op_for(op, options, true, param_grads, false)
    }

    /// Plans the inference forward of batch or instance norm at the running
    /// statistics (`options.track_running_stats`; without running statistics
    /// eval normalizes with the input's own: [`GpuContext::prepare_norm`]).
    /// Other ops are [`Error::OptionsMismatch`].
    pub fn prepare_norm_inference(&self, op: &Norm, options: &Options) -> Result<PreparedNormInference> {
        let shape = op.running_shape(options)?;
        Ok(PreparedNormInference { op: self.prepare_forward_inference(&shape, options)? })
    }

    /// Plans the backward of the inference forward, at the running
    /// statistics ([`BackwardStats::Running`], constants for the gradient).
    pub fn prepare_norm_inference_backward(&self, op: &Norm, options: &Options, param_grads: bool) -> Result<PreparedNormBackward> {
        self.norm_backward_op_for(op, options, false, param_grads, false)
    }

    /// Records the forward of `op` into `encoder` over the caller's slices,
    /// through a prepared op the context keeps.
    pub fn encode_norm(&self, encoder: &mut wgpu::CommandEncoder, op: &Norm, options: &Options, b: &NormForwardBuffers<'_>) -> Result<()> {
        self.norm_forward_op_for(op, options, true)?.record(encoder, b)
    }

    /// Records the backward of `op` into `encoder` over the caller's slices,
    /// at the statistics `b.stats` names, through a prepared op the context keeps.
    pub fn encode_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Norm,
        options: &Options,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        self.norm_backward_op_for(op, options, b.stats.is_saved(), b.param_grads.is_some(), true)?.record(encoder, b)
    }

    /// Records the inference forward of `op` into `encoder` over the
    /// caller's slices, through a prepared op the context keeps.
    pub fn encode_norm_inference(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        op: &Norm,
        options: &Options,
        b: &NormInferenceBuffers<'_>,
    ) -> Result<()> {
        let shape = op.running_shape(options)?;
        self.cached_forward_inference(&shape, options)?.record(encoder, &inference_buffers(b)?)
    }

    /// The forward of `op` on host arrays with the input's own statistics
    /// (training mode, or any mode without running statistics): `y` and the
    /// saved statistics, as [`NormForwardBuffers`] on the GPU. `gamma`
    /// exactly when `options.affine`, `beta` too but for RMS norm; `running`
    /// exactly when `options.track_running_stats`, updated in place.
    /// `inputs` is `x.view()`, or [`NormInputs`] with batch norm's residual.
    pub async fn norm<'a, E: Element>(
        &self,
        op: &Norm,
        inputs: impl Into<NormInputs<'a, E>>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<NormOutput<E>> {
        let inputs = inputs.into();
        let view = op.checked(options)?;
        check_dims(op, inputs.x.shape())?;
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        check_present("beta", "affine (and not RMS norm)", options.affine && !matches!(op, Norm::Rms { .. }), beta.is_some())?;
        check_present("running statistics", "track_running_stats", options.track_running_stats, running.is_some())?;
        match view {
            View::Batch(shape) => {
                let (x, residual) = (&inputs.x, inputs.residual.as_ref());
                let out = self.forward_train_epilogue(x, residual, shape.layout(), affine_pair(gamma, beta)?, running, options).await?;
                Ok(NormOutput { y: out.y, mean: Some(out.save_mean), rstd: out.save_invstd })
            }
            View::Rows(view) => {
                options.epilogue.check_residual("residual", inputs.residual.is_some())?;
                let running = running.zip(op.running(options));
                self.norm_forward_host(op.names().0, &inputs.x, view, options.eps, gamma, beta, running).await
            }
        }
    }

    /// Blocking [`GpuContext::norm`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn norm_blocking<'a, E: Element>(
        &self,
        op: &Norm,
        inputs: impl Into<NormInputs<'a, E>>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.norm(op, inputs, gamma, beta, running, options))
    }

    /// The backward of `op` on host arrays at `stats`: the forward's
    /// ([`NormOutput::stats`]), or batch and instance norm's running
    /// statistics ([`RunningStats::backward_stats`], the backward of
    /// [`GpuContext::norm_inference`]). Returns `dx`, `dgamma` and `dbeta`
    /// exactly when `options.affine` (then `gamma` is given; RMS norm has no
    /// `dbeta`), and `dresidual` exactly when batch norm's epilogue has a residual.
    pub async fn norm_backward<'s, E: Element>(
        &self,
        op: &Norm,
        inputs: &NormBackwardInputs<'_, E>,
        stats: impl Into<BackwardStats<&'s [f32]>>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients<E>> {
        let stats = stats.into();
        let view = op.checked(options)?;
        check_dims(op, inputs.x.shape())?;
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        // Batch norm's backward, and at running statistics instance norm's too (batch norm's over its shape).
        let shape = match (view, stats) {
            (View::Rows(view), BackwardStats::Saved(saved)) => {
                options.epilogue.check_z(inputs.z.is_some())?;
                return self.norm_backward_host(op.names().1, &inputs.dy, &inputs.x, view, options.eps, saved, gamma).await;
            }
            (View::Batch(shape), _) => shape,
            (View::Rows(_), BackwardStats::Running { .. }) => op.running_shape(options)?,
        };
        let inputs = EpilogueBackwardInputs { dz: inputs.dy.view(), z: inputs.z.clone(), x: inputs.x.view(), layout: shape.layout() };
        self.backward_epilogue(&inputs, stats, gamma, options).await
    }

    /// Blocking [`GpuContext::norm_backward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn norm_backward_blocking<'s, E: Element>(
        &self,
        op: &Norm,
        inputs: &NormBackwardInputs<'_, E>,
        stats: impl Into<BackwardStats<&'s [f32]>>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.norm_backward(op, inputs, stats, gamma, options))
    }

    /// The inference forward of batch or instance norm on host arrays, at
    /// `running` (`options.track_running_stats`): `gamma` and `beta` exactly
    /// when `options.affine`; `inputs` as [`GpuContext::norm`]'s.
    pub async fn norm_inference<'a, E: Element>(
        &self,
        op: &Norm,
        inputs: impl Into<NormInputs<'a, E>>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<ArrayD<E>> {
        let inputs = inputs.into();
        let shape = op.running_shape(options)?;
        check_dims(op, inputs.x.shape())?;
        let affine = affine_pair(gamma, beta)?;
        self.forward_inference_epilogue(&inputs.x, inputs.residual.as_ref(), shape.layout(), affine, running, options).await
    }

    /// Blocking [`GpuContext::norm_inference`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn norm_inference_blocking<'a, E: Element>(
        &self,
        op: &Norm,
        inputs: impl Into<NormInputs<'a, E>>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<ArrayD<E>> {
        pollster::block_on(self.norm_inference(op, inputs, gamma, beta, running, options))
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

    /// A prepared backward at the saved statistics (`saved`) or the running ones.
    fn norm_backward_op_for(
        &self,
        op: &Norm,
        options: &Options,
        saved: bool,
        param_grads: bool,
        cache: bool,
    ) -> Result<PreparedNormBackward> {
        let view = op.checked(options)?;
        let shape = match view {
            View::Batch(shape) => shape,
            _ if !saved => op.running_shape(options)?,
            View::Rows(view) => return self.norm_backward_op(op.names().1, view, options.eps, options.affine, param_grads, cache),
        };
        let batch = if cache {
            self.cached_backward(&shape, options, saved, param_grads)?
        } else {
            self.prepare_backward(&shape, options, saved, param_grads)?
        };
        Ok(PreparedNormBackward::batch(batch))
    }
}

/// Checks a host array's dims against the descriptor's.
fn check_dims(op: &Norm, dims: &[usize]) -> Result<()> {
    if dims != op.dims() {
        return Err(Error::ShapeMismatch { what: "x", expected: format!("{:?} (the op's dims)", op.dims()), got: format!("{dims:?}") });
    }
    Ok(())
}

/// Each binding is written twice, in the WGSL (`@binding(n)`) and in the
/// Rust step that binds it (`(n, Arg)`): every step of every op, dtype,
/// epilogue and tuning binds exactly the bindings its kernel's entry point
/// uses, a uniform where the WGSL has one. A binding added, renumbered or
/// dropped on one side only fails here, by kernel and number.
#[cfg(test)]
mod bindings {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::layout::Layout;
    use crate::options::{Activation, Dtype, Epilogue};
    use crate::plan::Tuning;
    use crate::prepared::{Arg, Prepared};
    use crate::shaders::Kernel;

    /// Binding number -> (whether it is a uniform, whether it is written),
    /// of what `kernel` as `variant` uses.
    fn used(kernel: crate::shaders::Kernel, variant: crate::shaders::Variant) -> BTreeMap<u32, (bool, bool)> {
        let (module, info) = crate::shaders::tests::parse(kernel, variant);
        let entry = info.get_entry_point(0);
        module
            .global_variables
            .iter()
            .filter(|(handle, _)| !entry[*handle].is_empty())
            .filter_map(|(_, var)| {
                let written = matches!(var.space, naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE));
                Some((var.binding.as_ref()?.binding, (matches!(var.space, naga::AddressSpace::Uniform), written)))
            })
            .collect()
    }

    fn check(what: &str, program: &Prepared, seen: &mut HashSet<Kernel>) {
        for step in program.steps() {
            seen.insert(step.kernel);
            let bound: BTreeMap<u32, bool> = step.args.iter().map(|(n, arg)| (*n, matches!(arg, Arg::Uniform))).collect();
            let want = used(step.kernel, step.variant);
            let uniforms: BTreeMap<u32, bool> = want.iter().map(|(n, (uniform, _))| (*n, *uniform)).collect();
            assert_eq!(
                bound,
                uniforms,
                "{what}: `{}` {:?} binds (number, uniform) {bound:?}; its WGSL uses {uniforms:?}",
                step.kernel.name(),
                step.variant
            );
            // The partials and the params lie in one workspace buffer, which a
            // dispatch may not bind both read-only and read-write.
            let written = |wanted: fn(&Arg) -> bool| step.args.iter().find(|(_, a)| wanted(a)).map(|(n, _)| want[n].1);
            if let (Some(partials), Some(params)) = (written(|a| matches!(a, Arg::Partials)), written(|a| matches!(a, Arg::Params))) {
                assert_eq!(partials, params, "{what}: `{}` writes partials {partials} and params {params}", step.kernel.name());
            }
        }
    }

    /// Every op over shapes that take each plan: short and long rows, few
    /// and many channels, both layouts.
    fn ops() -> Vec<Norm> {
        let mut ops = Vec::new();
        // The last pair's channels are short and many enough for batch norm's
        // one-dispatch kernels under the CPU tuning.
        for (first, last) in [
            ([4, 8, 6, 5], [4, 6, 5, 8]),
            ([2, 64, 64, 64], [2, 64, 64, 64]),
            ([16, 3, 2, 2], [16, 2, 2, 3]),
            ([8, 64, 3, 3], [8, 3, 3, 256]),
        ] {
            for (dims, layout) in [(first, Layout::ChannelsFirst), (last, Layout::ChannelsLast)] {
                let shape = Shape::new(&dims, layout).unwrap();
                let groups = if shape.channels().is_multiple_of(4) { 4 } else { 1 };
                ops.extend([Norm::Batch(shape.clone()), Norm::Group { shape: shape.clone(), groups }, Norm::Instance(shape)]);
            }
        }
        for (dims, d) in [(vec![64, 48], 48), (vec![4, 8192], 8192), (vec![7, 3], 3)] {
            ops.push(Norm::Layer { dims: dims.clone(), normalized_shape: vec![d] });
            ops.push(Norm::Rms { dims, normalized_shape: vec![d] });
        }
        ops
    }

    #[test]
    fn every_step_binds_exactly_what_its_kernel_uses() {
        let tunings = [None, Some(Tuning { subgroups: false, ..Tuning::CPU })];
        let mut seen = HashSet::new();
        for tuning in tunings {
            let ctx = GpuContext::new_blocking().unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"));
            let ctx = match tuning {
                Some(t) => ctx.with_tuning(t),
                None => ctx,
            };
            for op in ops() {
                let batch = matches!(op, Norm::Batch(_));
                let keeps_running = matches!(op, Norm::Batch(_) | Norm::Instance(_));
                let epilogues: &[Epilogue] = if batch {
                    &[Epilogue::default(), Epilogue { activation: Activation::Relu, residual: true }]
                } else {
                    &[Epilogue::default()]
                };
                for &dtype in &[Dtype::F32, Dtype::Bf16] {
                    for &epilogue in epilogues {
                        for (affine, running) in [(true, keeps_running), (false, false)] {
                            let options = Options { affine, track_running_stats: running, epilogue, dtype, ..op.default_options() };
                            let what = format!("{op:?} {options:?} {:?}", ctx.tuning());
                            check(&what, ctx.prepare_norm(&op, &options).unwrap().program(), &mut seen);
                            check(&what, ctx.prepare_norm_backward(&op, &options, affine).unwrap().program(), &mut seen);
                            if running {
                                check(&what, ctx.prepare_norm_inference(&op, &options).unwrap().op.program(), &mut seen);
                                check(&what, ctx.prepare_norm_inference_backward(&op, &options, affine).unwrap().program(), &mut seen);
                            }
                        }
                    }
                }
            }
        }
        // The CPU tuning's one-dispatch kernels were among those checked.
        assert!(seen.contains(&Kernel::ForwardLanes) && seen.contains(&Kernel::BackwardLanes), "{seen:?}");
    }
}
