//! Instance normalization (PyTorch's `InstanceNorm1d/2d/3d`): statistics per
//! (sample, channel) over every position; group norm with one channel a group.
//! With `track_running_stats`, training also updates running statistics
//! averaged over the batch (`norm_running.wgsl`), which eval mode then
//! normalizes with: that is batch norm's inference forward
//! ([`GpuContext::forward_inference`]), per channel.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, AtRunning, NormLayer, Running};
use super::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward, RowView};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::backward::BackwardStats;
use crate::ops::forward_inference::ForwardInferenceBuffers;
use crate::ops::{Affine, BackwardInputs, Gradients, RunningStats};
use crate::options::{check_present, Dtype, Element, Momentum, Options, DEFAULT_EPS};
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
    /// The element type of `x`, `y`, `dy` and `dx`: of the slices, or of the
    /// `ndarray` calls' and the layer's arrays ([`Element`](crate::Element)).
    pub dtype: Dtype,
}

impl Default for InstanceNormOptions {
    fn default() -> Self {
        Self { eps: DEFAULT_EPS, momentum: Momentum::default(), affine: false, track_running_stats: false, dtype: Dtype::F32 }
    }
}

impl InstanceNormOptions {
    /// Batch norm's options for eval mode with the running statistics.
    pub(crate) fn inference_options(&self) -> Options {
        Options {
            eps: self.eps,
            momentum: self.momentum,
            affine: self.affine,
            track_running_stats: true,
            dtype: self.dtype,
            ..Options::default()
        }
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
        self.norm_forward_op(
            "instance_norm",
            instance_view(shape)?.typed(options.dtype),
            options.eps,
            options.affine,
            running_momentum(options),
            false,
        )
    }

    /// Plans an instance norm backward, writing `dgamma` and `dbeta` where `param_grads`.
    pub fn prepare_instance_norm_backward(
        &self,
        shape: &Shape,
        options: &InstanceNormOptions,
        param_grads: bool,
    ) -> Result<PreparedNormBackward> {
        self.norm_backward_op(
            "instance_norm_backward",
            instance_view(shape)?.typed(options.dtype),
            options.eps,
            options.affine,
            param_grads,
            false,
        )
    }

    /// Records an instance norm forward into `encoder` over the caller's slices.
    pub fn encode_instance_norm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &InstanceNormOptions,
        b: &NormForwardBuffers<'_>,
    ) -> Result<()> {
        let op = self.norm_forward_op(
            "instance_norm",
            instance_view(shape)?.typed(options.dtype),
            options.eps,
            options.affine,
            running_momentum(options),
            true,
        )?;
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
        let view = instance_view(shape)?.typed(options.dtype);
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
    pub async fn instance_norm<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &InstanceNormOptions,
    ) -> Result<NormOutput<E>> {
        check_present("gamma and beta", "affine", options.affine, affine.is_some())?;
        check_present("running statistics", "track_running_stats", options.track_running_stats, running.is_some())?;
        let view = instance_view(&Shape::new(x.shape(), layout)?)?.typed(options.dtype);
        let running = running.map(|r| (r, options.momentum));
        self.norm_forward_host("instance_norm", x, view, options.eps, affine.map(|a| a.gamma), affine.map(|a| a.beta), running).await
    }

    /// Blocking [`GpuContext::instance_norm`].
    pub fn instance_norm_blocking<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &InstanceNormOptions,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.instance_norm(x, layout, affine, running, options))
    }

    /// Instance norm in eval mode with running statistics (PyTorch's
    /// `use_input_stats = False`): batch norm's inference forward. Needs
    /// `options.track_running_stats` ([`Error::OptionsMismatch`] otherwise:
    /// without tracked statistics, eval mode normalizes with the input's own,
    /// which is [`GpuContext::instance_norm`]).
    pub async fn instance_norm_inference<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<ArrayD<E>> {
        check_present("running statistics", "track_running_stats", options.track_running_stats, true)?;
        self.forward_inference(x, layout, affine, running, &options.inference_options()).await
    }

    /// Blocking [`GpuContext::instance_norm_inference`].
    pub fn instance_norm_inference_blocking<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<ArrayD<E>> {
        pollster::block_on(self.instance_norm_inference(x, layout, affine, running, options))
    }

    /// The backward of [`GpuContext::instance_norm_inference`]: batch norm's
    /// backward at the running statistics, `dgamma` and `dbeta` exactly when
    /// `options.affine`. Needs `options.track_running_stats`, as the forward does.
    pub async fn instance_norm_inference_backward<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        gamma: Option<&[f32]>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<Gradients<E>> {
        check_present("running statistics", "track_running_stats", options.track_running_stats, true)?;
        let stats = BackwardStats::Running { mean: running.mean.as_slice(), var: running.var.as_slice() };
        self.backward(inputs, stats, gamma, &options.inference_options()).await
    }

    /// Blocking [`GpuContext::instance_norm_inference_backward`].
    pub fn instance_norm_inference_backward_blocking<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        gamma: Option<&[f32]>,
        running: &RunningStats,
        options: &InstanceNormOptions,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.instance_norm_inference_backward(inputs, gamma, running, options))
    }

    /// Instance norm's backward on host arrays, at the forward's
    /// [`NormOutput::stats`]; `dgamma` and `dbeta` exactly when `options.affine`.
    /// (The backward of [`GpuContext::instance_norm_inference`] is
    /// [`GpuContext::instance_norm_inference_backward`].)
    pub async fn instance_norm_backward<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &InstanceNormOptions,
    ) -> Result<Gradients<E>> {
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        let view = instance_view(&Shape::new(inputs.x.shape(), inputs.layout)?)?.typed(options.dtype);
        self.norm_backward_host("instance_norm_backward", &inputs.dy, &inputs.x, view, options.eps, stats, gamma).await
    }

    /// Blocking [`GpuContext::instance_norm_backward`].
    pub fn instance_norm_backward_blocking<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &InstanceNormOptions,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.instance_norm_backward(inputs, stats, gamma, options))
    }
}

/// An instance norm layer, as PyTorch's `InstanceNorm1d/2d/3d(num_features)`:
/// in training mode (and in eval mode without running statistics) each
/// instance is normalized with its own statistics; with
/// `track_running_stats`, training updates running statistics averaged over
/// the batch and eval mode normalizes with them.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, InstanceNorm, InstanceNormOptions, Layout};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let options = InstanceNormOptions { affine: true, track_running_stats: true, ..Default::default() };
/// let mut norm = InstanceNorm::new(ctx, 3, options)?;
/// let x = ArrayD::from_shape_fn(vec![4, 3, 32, 32], |i| (i[2] * i[3]) as f32);
/// let y = norm.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// let grads = norm.backward_blocking(&y.view())?;
/// norm.eval();
/// let y = norm.forward_blocking(&x.view(), Layout::ChannelsFirst)?; // running statistics
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct InstanceNorm {
    layer: NormLayer,
    options: InstanceNormOptions,
    running: Option<(wgpu::Buffer, wgpu::Buffer)>,
    num_batches_tracked: u64,
    training: bool,
}

impl InstanceNorm {
    /// A layer over `channels` channels in training mode, with `gamma = 1`,
    /// `beta = 0`, `running_mean = 0`, `running_var = 1` where it has them.
    pub fn new(ctx: Arc<GpuContext>, channels: usize, options: InstanceNormOptions) -> Result<Self> {
        options.momentum.validate()?;
        let running = match options.track_running_stats {
            true => {
                let init = RunningStats::<f32>::new(channels);
                Some((ctx.upload("running_mean", &init.mean)?, ctx.upload("running_var", &init.var)?))
            }
            false => None,
        };
        let layer = NormLayer::new(
            ctx,
            ("instance_norm", "instance_norm_backward"),
            channels,
            (options.eps, options.dtype),
            options.affine,
            false,
        )?;
        Ok(Self { layer, options, running, num_batches_tracked: 0, training: true })
    }

    /// The layer's options.
    pub fn options(&self) -> &InstanceNormOptions {
        &self.options
    }

    /// Training mode: each instance's own statistics, running statistics updated.
    pub fn train(&mut self) {
        self.training = true;
    }

    /// Eval mode: the running statistics where tracked, else each instance's own.
    pub fn eval(&mut self) {
        self.training = false;
    }

    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Training batches seen.
    pub fn num_batches_tracked(&self) -> u64 {
        self.num_batches_tracked
    }

    /// Replaces the running statistics and the batch count (a checkpoint's):
    /// [`Error::InvalidState`] without `track_running_stats`,
    /// [`Error::ShapeMismatch`] unless each holds `C` values.
    pub fn set_running_stats(&mut self, stats: &RunningStats) -> Result<()> {
        let Some((mean, var)) = &self.running else {
            return Err(Error::InvalidState("set_running_stats on a layer with track_running_stats = false".into()));
        };
        super::check_len("running_mean", stats.mean.len(), self.layer.params(), "the layer's channels")?;
        super::check_len("running_var", stats.var.len(), self.layer.params(), "the layer's channels")?;
        let ctx = self.layer.context();
        ctx.write(mean, &stats.mean)?;
        ctx.write(var, &stats.var)?;
        self.num_batches_tracked = stats.num_batches_tracked;
        Ok(())
    }

    /// The running statistics, read back (`None` if not tracked).
    pub async fn running_stats(&self) -> Result<Option<RunningStats>> {
        let Some((mean, var)) = &self.running else { return Ok(None) };
        let c = self.layer.params();
        let mut out = self.layer.context().download(&[(mean, c), (var, c)]).await?.into_iter();
        Ok(Some(RunningStats {
            mean: out.next().unwrap_or_default(),
            var: out.next().unwrap_or_default(),
            num_batches_tracked: self.num_batches_tracked,
        }))
    }

    /// Blocking [`InstanceNorm::running_stats`].
    pub fn running_stats_blocking(&self) -> Result<Option<RunningStats>> {
        pollster::block_on(self.running_stats())
    }

    fn view(&self, shape: &Shape) -> Result<RowView> {
        super::check_len("channels", shape.channels(), self.layer.params(), "the layer's")?;
        instance_view(shape)
    }

    /// Whether this forward normalizes with the running statistics.
    fn uses_running(&self) -> bool {
        !self.training && self.running.is_some()
    }

    /// The forward on host arrays. In eval mode with running statistics it is
    /// batch norm's inference forward over the layer's buffers, and the
    /// layer's backward is then batch norm's at those statistics
    /// ([`GpuContext::instance_norm_inference_backward`]).
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        crate::options::check_element::<E>(self.options.dtype)?;
        let shape = Shape::new(x.shape(), layout)?;
        if self.uses_running() {
            self.layer.set_at_running(None);
            let ctx = self.layer.context();
            let serial = ctx.serialize().await;
            // Sizes checked before the array is copied.
            ctx.plan(&shape, E::DTYPE)?;
            let (xb, y) = (ctx.upload_tensor("x", &crate::ops::host_data(x))?, ctx.tensor_storage("y", E::DTYPE, shape.numel())?);
            let buffers = self.inference_buffers(&shape, xb.slice(..), y.slice(..))?;
            ctx.run(|encoder| ctx.encode_forward_inference(encoder, &shape, &self.options.inference_options(), &buffers)).await?;
            let out = ctx.download_serialized(&[(&y, E::DTYPE.tensor_words(shape.numel()))]).await?.remove(0);
            drop(serial);
            let at = self.at_running(&shape, Some(xb))?;
            self.layer.set_at_running(Some(at));
            return crate::ops::from_words(out, x.shape());
        }
        let view = self.view(&shape)?;
        let running = self.running_for_step();
        let y = match &running {
            Some(r) => self.layer_forward(x, view, Some(r)).await?,
            None => self.layer_forward(x, view, None).await?,
        };
        if running.is_some() {
            self.num_batches_tracked = self.num_batches_tracked.saturating_add(1);
        }
        Ok(y)
    }

    /// What the backward of an eval forward over `shape` needs: the running statistics, and `x` where the layer holds it.
    fn at_running(&self, shape: &Shape, x: Option<wgpu::Buffer>) -> Result<AtRunning> {
        let (mean, var) = self.running.clone().ok_or_else(|| Error::InvalidState("no running statistics".into()))?;
        Ok(AtRunning { shape: shape.clone(), options: self.options.inference_options(), mean, var, x })
    }

    /// Batch norm's inference buffers over the layer's parameters and running statistics.
    fn inference_buffers<'a>(
        &'a self,
        shape: &Shape,
        x: wgpu::BufferSlice<'a>,
        y: wgpu::BufferSlice<'a>,
    ) -> Result<ForwardInferenceBuffers<'a>> {
        super::check_len("channels", shape.channels(), self.layer.params(), "the layer's")?;
        let (mean, var) = self.running.as_ref().ok_or_else(|| Error::InvalidState("no running statistics".into()))?;
        let affine = self.layer.gamma.as_ref().zip(self.layer.beta.as_ref()).map(|(g, b)| Affine { gamma: g.slice(..), beta: b.slice(..) });
        Ok(ForwardInferenceBuffers { x, y, affine, running_mean: mean.slice(..), running_var: var.slice(..), residual: None })
    }

    async fn layer_forward<E: Element>(
        &mut self,
        x: &ArrayViewD<'_, E>,
        view: RowView,
        running: Option<&(wgpu::Buffer, wgpu::Buffer)>,
    ) -> Result<ArrayD<E>> {
        let running = running.map(|(mean, var)| Running {
            mean,
            var,
            num_batches_tracked: self.num_batches_tracked,
            momentum: self.options.momentum,
        });
        self.layer.forward(x, view, running.as_ref()).await
    }

    /// The running statistics this training step updates, if any.
    fn running_for_step(&self) -> Option<(wgpu::Buffer, wgpu::Buffer)> {
        self.running.clone().filter(|_| self.training)
    }

    /// Blocking [`InstanceNorm::forward`].
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Records the forward over the caller's slices: with the instances' own
    /// statistics (updating the running statistics in training mode), or in
    /// eval mode with running statistics batch norm's inference forward
    /// ([`GpuContext::encode_forward_inference`]; `y` may then be `x`), whose
    /// backward `encode_backward` records at the running statistics.
    pub fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        x: wgpu::BufferSlice<'_>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        if self.uses_running() {
            self.layer.set_at_running(None);
            let buffers = self.inference_buffers(shape, x, y)?;
            self.layer.context().encode_forward_inference(encoder, shape, &self.options.inference_options(), &buffers)?;
            let at = self.at_running(shape, None)?;
            self.layer.set_at_running(Some(at));
            return Ok(());
        }
        let view = self.view(shape)?;
        let running = self.running_for_step();
        let r = running.as_ref().map(|(mean, var)| Running {
            mean,
            var,
            num_batches_tracked: self.num_batches_tracked,
            momentum: self.options.momentum,
        });
        self.layer.encode_forward(encoder, view, shape.dims(), x, y, r.as_ref())?;
        if running.is_some() {
            self.num_batches_tracked = self.num_batches_tracked.saturating_add(1);
        }
        Ok(())
    }

    /// The running mean and variance buffers (`C` f32s each), where tracked.
    pub fn running_buffers(&self) -> Option<(&wgpu::Buffer, &wgpu::Buffer)> {
        self.running.as_ref().map(|(m, v)| (m, v))
    }
}

norm_layer_methods!(InstanceNorm);
