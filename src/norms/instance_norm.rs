//! Instance normalization (PyTorch's `InstanceNorm1d/2d/3d`): statistics per
//! (sample, channel) over every position; group norm with one channel a group.
//! With `track_running_stats`, training also updates running statistics
//! averaged over the batch (`norm_running.wgsl`), which eval mode then
//! normalizes with: that is batch norm's inference forward
//! ([`GpuContext::norm_inference`] of [`Norm::Instance`](crate::Norm::Instance)), per channel.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, AtRunning, NormLayer, Running};
use super::RowView;
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::norms::batch_norm::forward_inference::ForwardInferenceBuffers;
use crate::ops::{ChannelAffine, RunningStats};
use crate::options::{Element, Options};
use crate::shape::Shape;

/// The row view of instance norm of `shape`: PyTorch's "more than 1 spatial
/// element" rule, as batch norm's `TooFewValuesPerChannel`.
pub(crate) fn instance_view(shape: &Shape) -> Result<RowView> {
    let view = RowView::groups(shape, shape.channels());
    if view.row_len() <= 1 {
        return Err(Error::TooFewValuesPerChannel { count: view.row_len(), dims: shape.dims().to_vec() });
    }
    Ok(view)
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
/// use wgpu_batchnorm::{GpuContext, InstanceNorm, Layout, Options};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let options = Options { affine: true, track_running_stats: true, ..Options::default() };
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
    options: Options,
    running: Option<(wgpu::Buffer, wgpu::Buffer)>,
    num_batches_tracked: u64,
}

impl InstanceNorm {
    /// A layer over `channels` channels in training mode, with `gamma = 1`,
    /// `beta = 0`, `running_mean = 0`, `running_var = 1` where it has them.
    pub fn new(ctx: Arc<GpuContext>, channels: usize, options: Options) -> Result<Self> {
        super::check_family_options(&options, true)?;
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
        Ok(Self { layer, options, running, num_batches_tracked: 0 })
    }

    /// The layer's options.
    pub fn options(&self) -> &Options {
        &self.options
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
    #[cfg(not(target_arch = "wasm32"))]
    pub fn running_stats_blocking(&self) -> Result<Option<RunningStats>> {
        pollster::block_on(self.running_stats())
    }

    fn view(&self, shape: &Shape) -> Result<RowView> {
        super::check_len("channels", shape.channels(), self.layer.params(), "the layer's")?;
        instance_view(shape)
    }

    /// Whether this forward normalizes with the running statistics.
    fn uses_running(&self) -> bool {
        !self.layer.training && self.running.is_some()
    }

    /// The forward on host arrays. In eval mode with running statistics it is
    /// batch norm's inference forward over the layer's buffers, and the
    /// layer's backward is then batch norm's at those statistics
    /// ([`GpuContext::norm_backward`] at [`RunningStats::backward_stats`]).
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
            ctx.run(|encoder| ctx.encode_forward_inference(encoder, &shape, &self.options, &buffers)).await?;
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
        Ok(AtRunning { shape: shape.clone(), options: self.options, mean, var, x })
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
        let affine =
            self.layer.gamma.as_ref().zip(self.layer.beta.as_ref()).map(|(g, b)| ChannelAffine { gamma: g.slice(..), beta: b.slice(..) });
        Ok(ForwardInferenceBuffers {
            x,
            y,
            affine,
            running_mean: mean.slice(..),
            running_var: var.slice(..),
            residual: None,
            workspace: None,
        })
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
        self.running.clone().filter(|_| self.layer.training)
    }

    /// Blocking [`InstanceNorm::forward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Records the forward over the caller's slices: with the instances' own
    /// statistics (updating the running statistics in training mode), or in
    /// eval mode with running statistics batch norm's inference forward
    /// ([`GpuContext::encode_norm_inference`]; `y` may then be `x`), whose
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
            self.layer.context().encode_forward_inference(encoder, shape, &self.options, &buffers)?;
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
