//! Instance normalization (PyTorch's `InstanceNorm1d/2d/3d`): statistics per
//! (sample, channel) over every position; group norm with one channel a group.
//! With `track_running_stats`, training also updates running statistics
//! averaged over the batch (`norm_running.wgsl`), which eval mode then
//! normalizes with: that is batch norm's inference forward
//! ([`GpuContext::forward_inference`]), per channel.

use ndarray::{ArrayD, ArrayViewD};

use super::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward, RowView};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{Affine, BackwardInputs, Gradients, RunningStats};
use crate::options::{check_present, Momentum, Options, DEFAULT_EPS};
use crate::shape::{Layout, Shape};

/// The options of an instance norm call or layer, with PyTorch's defaults
/// (no affine parameters, no running statistics).
///
/// ```
/// let o = wgpu_batchnorm::InstanceNormOptions::default();
/// assert!(!o.affine && !o.track_running_stats);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceNormOptions {
    /// Added to the variance before the square root; finite and `>= 0`.
    pub eps: f32,
    /// How running statistics follow the batch's, where tracked.
    pub momentum: Momentum,
    /// Per-channel `gamma` and `beta`.
    pub affine: bool,
    /// Keep running statistics (averaged over each batch's instances) for eval mode.
    pub track_running_stats: bool,
}

impl Default for InstanceNormOptions {
    fn default() -> Self {
        Self { eps: DEFAULT_EPS, momentum: Momentum::default(), affine: false, track_running_stats: false }
    }
}

impl InstanceNormOptions {
    /// Batch norm's options for eval mode with the running statistics.
    pub(crate) fn inference_options(&self) -> Options {
        Options { eps: self.eps, momentum: self.momentum, affine: self.affine, track_running_stats: true, ..Options::default() }
    }
}

/// The row view of instance norm of `shape`: PyTorch's "more than 1 spatial
/// element" rule, as batch norm's `TooFewValuesPerChannel`.
pub(crate) fn instance_view(shape: &Shape) -> Result<RowView> {
    let view = RowView::groups(shape, shape.channels());
    if view.row_len() <= 1 {
        return Err(Error::TooFewValuesPerChannel { count: view.row_len(), dims: shape.dims().to_vec() });
    }
    Ok(view)
}

fn running_momentum(options: &InstanceNormOptions) -> Option<Momentum> {
    options.track_running_stats.then_some(options.momentum)
}

impl GpuContext {
    /// Plans an instance norm forward with the instances' own statistics
    /// ([`PreparedNorm`]): `mean` and `rstd` hold `N * C` values, `gamma`,
    /// `beta` and the running statistics `C`.
    pub fn prepare_instance_norm(&self, shape: &Shape, options: &InstanceNormOptions) -> Result<PreparedNorm> {
        self.norm_forward_op("instance_norm", instance_view(shape)?, options.eps, options.affine, running_momentum(options), false)
    }

    /// Plans an instance norm backward, writing `dgamma` and `dbeta` where `param_grads`.
    pub fn prepare_instance_norm_backward(
        &self,
        shape: &Shape,
        options: &InstanceNormOptions,
        param_grads: bool,
    ) -> Result<PreparedNormBackward> {
        self.norm_backward_op("instance_norm_backward", instance_view(shape)?, options.eps, options.affine, param_grads, false)
    }

    /// Records an instance norm forward into `encoder` over the caller's slices.
    pub fn encode_instance_norm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &InstanceNormOptions,
        b: &NormForwardBuffers<'_>,
    ) -> Result<()> {
        let op =
            self.norm_forward_op("instance_norm", instance_view(shape)?, options.eps, options.affine, running_momentum(options), true)?;
        op.record(encoder, b)
    }

    /// Records an instance norm backward into `encoder` over the caller's slices.
    pub fn encode_instance_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &InstanceNormOptions,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        let view = instance_view(shape)?;
        self.norm_backward_op("instance_norm_backward", view, options.eps, options.affine, b.param_grads.is_some(), true)?
            .record(encoder, b)
    }

    /// Instance norm on host arrays with the instances' own statistics
    /// (training mode, or eval without running statistics): `y` and the
    /// per-(sample, channel) `mean` and `rstd`, in the order `n * C + c`.
    /// `running` is updated exactly when `options.track_running_stats`.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{GpuContext, InstanceNormOptions, Layout};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![2, 3, 8, 8], |i| (i[2] * 8 + i[3]) as f32);
    /// let out = ctx.instance_norm_blocking(&x.view(), Layout::ChannelsFirst, None, None, &InstanceNormOptions::default())?;
    /// assert_eq!(out.rstd.len(), 2 * 3);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn instance_norm(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &InstanceNormOptions,
    ) -> Result<NormOutput> {
        check_present("gamma and beta", "affine", options.affine, affine.is_some())?;
        check_present("running statistics", "track_running_stats", options.track_running_stats, running.is_some())?;
        let view = instance_view(&Shape::new(x.shape(), layout)?)?;
        let running = running.map(|r| (r, options.momentum));
        self.norm_forward_host("instance_norm", x, view, options.eps, affine.map(|a| a.gamma), affine.map(|a| a.beta), running).await
    }

    /// Blocking [`GpuContext::instance_norm`].
    pub fn instance_norm_blocking(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &InstanceNormOptions,
    ) -> Result<NormOutput> {
        pollster::block_on(self.instance_norm(x, layout, affine, running, options))
    }

    /// Instance norm in eval mode with running statistics (PyTorch's
    /// `use_input_stats = False`): batch norm's inference forward.
    pub async fn instance_norm_inference(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<ArrayD<f32>> {
        self.forward_inference(x, layout, affine, running, &options.inference_options()).await
    }

    /// Blocking [`GpuContext::instance_norm_inference`].
    pub fn instance_norm_inference_blocking(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<ArrayD<f32>> {
        pollster::block_on(self.instance_norm_inference(x, layout, affine, running, options))
    }

    /// Instance norm's backward on host arrays, at the forward's
    /// [`NormOutput::stats`]; `dgamma` and `dbeta` exactly when `options.affine`.
    /// (The backward of [`GpuContext::instance_norm_inference`] is batch
    /// norm's inference backward, [`GpuContext::backward`].)
    pub async fn instance_norm_backward(
        &self,
        inputs: &BackwardInputs<'_>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &InstanceNormOptions,
    ) -> Result<Gradients> {
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        let view = instance_view(&Shape::new(inputs.x.shape(), inputs.layout)?)?;
        self.norm_backward_host("instance_norm_backward", &inputs.dy, &inputs.x, view, options.eps, stats, gamma).await
    }

    /// Blocking [`GpuContext::instance_norm_backward`].
    pub fn instance_norm_backward_blocking(
        &self,
        inputs: &BackwardInputs<'_>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &InstanceNormOptions,
    ) -> Result<Gradients> {
        pollster::block_on(self.instance_norm_backward(inputs, stats, gamma, options))
    }
}
