//! A batch-norm layer holding its parameters and running statistics on the GPU.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::norms::batch_norm::backward::{BackwardBuffers, ParamGradBuffers};
use crate::norms::batch_norm::forward_inference::ForwardInferenceBuffers;
use crate::norms::batch_norm::forward_train::{ForwardTrainBuffers, RunningBuffers};
use crate::ops::{all, from_words, host_data, Affine, BackwardStats, ChannelAffine, Gradients, NormStats, RunningStats};
use crate::options::{check_element, Element, Options};
use crate::shape::Shape;

/// What the last forward pass was.
#[derive(Debug, Clone)]
struct Last {
    shape: Shape,
    /// Whether it normalized with the batch's statistics (then in `saved`).
    batch: bool,
    /// Whether it updated the running statistics: a batch tracked.
    tracked: bool,
}

/// A layer's parameters, running statistics and the buffers its passes fill,
/// on the GPU: shared by [`BatchNorm`] and [`SyncBatchNorm`](crate::SyncBatchNorm).
#[derive(Debug)]
pub(crate) struct LayerState {
    pub channels: usize,
    pub affine: Option<ChannelAffine<wgpu::Buffer>>,
    pub running: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// `save_mean` and `save_invstd` of the last forward that used the batch's statistics.
    pub saved: (wgpu::Buffer, wgpu::Buffer),
    /// `dgamma` and `dbeta` of the last backward, where `affine`.
    pub grads: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

impl LayerState {
    /// PyTorch's initial values: `gamma = 1`, `beta = 0`, `running_mean = 0`, `running_var = 1`.
    pub fn new(ctx: &GpuContext, channels: usize, options: &Options) -> Result<Self> {
        options.validate()?;
        if channels == 0 {
            return Err(Error::EmptyTensor { dims: vec![0] });
        }
        let affine = match options.affine {
            true => {
                Some(ChannelAffine { gamma: ctx.upload("gamma", &vec![1.0; channels])?, beta: ctx.upload("beta", &vec![0.0; channels])? })
            }
            false => None,
        };
        let running = match options.track_running_stats {
            true => {
                let init = RunningStats::new(channels);
                Some((ctx.upload("running_mean", &init.mean)?, ctx.upload("running_var", &init.var)?))
            }
            false => None,
        };
        let grads = match options.affine {
            true => Some((ctx.storage("dgamma", channels)?, ctx.storage("dbeta", channels)?)),
            false => None,
        };
        Ok(Self { channels, affine, running, saved: (ctx.storage("save_mean", channels)?, ctx.storage("save_invstd", channels)?), grads })
    }

    fn check_len(&self, what: &'static str, values: &[f32]) -> Result<()> {
        if values.len() != self.channels {
            return Err(Error::ShapeMismatch {
                what,
                expected: format!("{} values", self.channels),
                got: format!("{} values", values.len()),
            });
        }
        Ok(())
    }

    pub fn set_affine(&self, ctx: &GpuContext, affine: Affine<&[f32]>) -> Result<()> {
        let Some(a) = &self.affine else {
            return Err(Error::InvalidState("set_affine on a layer with affine = false".into()));
        };
        let beta = affine.beta.ok_or_else(|| Error::OptionsMismatch { what: "beta", reason: "batch norm has a shift".into() })?;
        self.check_len("gamma", affine.gamma)?;
        self.check_len("beta", beta)?;
        ctx.write(&a.gamma, affine.gamma)?;
        ctx.write(&a.beta, beta)
    }

    pub fn set_running(&self, ctx: &GpuContext, stats: &RunningStats) -> Result<()> {
        let Some((mean, var)) = &self.running else {
            return Err(Error::InvalidState("set_running_stats on a layer with track_running_stats = false".into()));
        };
        self.check_len("running_mean", &stats.mean)?;
        self.check_len("running_var", &stats.var)?;
        ctx.write(mean, &stats.mean)?;
        ctx.write(var, &stats.var)
    }

    /// `gamma` and `beta`'s buffers (`None` for `affine = false`).
    pub fn affine_buffers(&self) -> Option<Affine<&wgpu::Buffer>> {
        self.affine.as_ref().map(|a| Affine { gamma: &a.gamma, beta: Some(&a.beta) })
    }

    /// `gamma` and `beta`, read back (`None` for `affine = false`).
    pub async fn affine(&self, ctx: &GpuContext) -> Result<Option<Affine<Vec<f32>>>> {
        let Some(a) = &self.affine else {
            return Ok(None);
        };
        let mut out = ctx.download(&[(&a.gamma, self.channels), (&a.beta, self.channels)]).await?.into_iter();
        Ok(Some(Affine { gamma: out.next().unwrap_or_default(), beta: out.next() }))
    }

    /// The saved `mean` and `rstd` as the last forward left them, read back.
    pub async fn saved_stats(&self, ctx: &GpuContext) -> Result<NormStats<Vec<f32>>> {
        let mut out = ctx.download(&[(&self.saved.0, self.channels), (&self.saved.1, self.channels)]).await?.into_iter();
        Ok(NormStats { mean: out.next(), rstd: out.next().unwrap_or_default() })
    }

    /// The running statistics, read back (`None` if not tracked).
    pub async fn running_stats(&self, ctx: &GpuContext, num_batches_tracked: u64) -> Result<Option<RunningStats>> {
        let Some((mean, var)) = &self.running else {
            return Ok(None);
        };
        let mut out = ctx.download(&[(mean, self.channels), (var, self.channels)]).await?.into_iter();
        Ok(Some(RunningStats { mean: out.next().unwrap_or_default(), var: out.next().unwrap_or_default(), num_batches_tracked }))
    }
}

/// The methods `BatchNorm` and `SyncBatchNorm` share, over their `ctx`,
/// `options`, `training`, `state` and `num_batches_tracked` fields.
macro_rules! batch_norm_layer_methods {
    ($ty:ident $(<$g:ident: $bound:path>)?) => {
        impl$(<$g: $bound>)? $ty$(<$g>)? {
            /// Whether the layer is in training mode.
            pub fn is_training(&self) -> bool {
                self.training
            }

            /// The layer's options.
            pub fn options(&self) -> &crate::Options {
                &self.options
            }

            /// Training batches seen.
            pub fn num_batches_tracked(&self) -> u64 {
                self.num_batches_tracked
            }

            /// `gamma` and `beta` buffers (`C` f32s each), for use with the low-level API.
            pub fn affine_buffers(&self) -> Option<crate::Affine<&wgpu::Buffer>> {
                self.state.affine_buffers()
            }

            /// `gamma` and `beta`, read back from the GPU (`None` for `affine = false`).
            pub async fn affine(&self) -> crate::Result<Option<crate::Affine<Vec<f32>>>> {
                self.state.affine(&self.ctx).await
            }

            /// Blocking [`affine`](Self::affine).
            #[cfg(not(target_arch = "wasm32"))]
            pub fn affine_blocking(&self) -> crate::Result<Option<crate::Affine<Vec<f32>>>> {
                pollster::block_on(self.affine())
            }

            /// Replaces `gamma` and `beta` (with several ranks, the same on every one).
            pub fn set_affine(&mut self, affine: crate::Affine<&[f32]>) -> crate::Result<()> {
                self.state.set_affine(&self.ctx, affine)
            }

            /// Replaces the running statistics and `num_batches_tracked` (a
            /// checkpoint loaded for eval, or to go on training).
            pub fn set_running_stats(&mut self, stats: &crate::RunningStats) -> crate::Result<()> {
                self.state.set_running(&self.ctx, stats)?;
                self.num_batches_tracked = stats.num_batches_tracked;
                Ok(())
            }

            /// The running statistics, read back from the GPU (`None` if not tracked).
            pub async fn running_stats(&self) -> crate::Result<Option<crate::RunningStats>> {
                self.state.running_stats(&self.ctx, self.num_batches_tracked).await
            }

            /// Blocking [`running_stats`](Self::running_stats).
            #[cfg(not(target_arch = "wasm32"))]
            pub fn running_stats_blocking(&self) -> crate::Result<Option<crate::RunningStats>> {
                pollster::block_on(self.running_stats())
            }

            /// `dgamma` and `dbeta` buffers (`C` f32s each) that the backward
            /// writes; `None` for `affine = false`.
            pub fn param_grad_buffers(&self) -> Option<crate::Affine<&wgpu::Buffer>> {
                self.state.grads.as_ref().map(|(dgamma, dbeta)| crate::Affine { gamma: dgamma, beta: Some(dbeta) })
            }
        }
    };
}
pub(crate) use batch_norm_layer_methods;

batch_norm_layer_methods!(BatchNorm);

/// A batch-norm layer used like PyTorch's `BatchNorm1d/2d/3d`: `gamma`, `beta`
/// and the running statistics live on the GPU; [`BatchNorm::train`] and
/// [`BatchNorm::eval`] switch modes; [`BatchNorm::backward`] differentiates the
/// last forward pass.
///
/// Inside a framework's own graph, [`BatchNorm::encode_forward`] and
/// [`BatchNorm::encode_backward`] record into the caller's encoder over
/// slices of the caller's buffers, with no host round trip; the parameter
/// gradients land in [`BatchNorm::param_grad_buffers`].
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{BatchNorm, GpuContext, Layout, Options};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let mut bn = BatchNorm::new(ctx, 16, Options::default())?;
/// let x = ArrayD::from_shape_fn(vec![8, 16, 4, 4], |i| (i[0] + i[2]) as f32);
/// let y = bn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// let grads = bn.backward_blocking(&y.view())?;
/// let saved = bn.saved_stats_blocking()?.expect("a training forward ran"); // batch mean and rstd
/// bn.eval();
/// let y_eval = bn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct BatchNorm {
    ctx: Arc<GpuContext>,
    options: Options,
    training: bool,
    state: LayerState,
    num_batches_tracked: u64,
    last: Option<Last>,
    /// `x` of the last [`BatchNorm::forward`] on host arrays, for its backward.
    host_x: Option<wgpu::Buffer>,
    /// Its output `z`, where the epilogue's backward masks by it.
    host_z: Option<wgpu::Buffer>,
}

impl BatchNorm {
    /// A layer in training mode with `gamma = 1`, `beta = 0`, `running_mean = 0`, `running_var = 1`.
    pub fn new(ctx: Arc<GpuContext>, channels: usize, options: Options) -> Result<Self> {
        let state = LayerState::new(&ctx, channels, &options)?;
        Ok(Self { ctx, options, training: true, state, num_batches_tracked: 0, last: None, host_x: None, host_z: None })
    }

    /// Training mode: batch statistics, running statistics updated.
    pub fn train(&mut self) {
        self.training = true;
    }

    /// Eval mode: running statistics (batch statistics if they are not tracked).
    pub fn eval(&mut self) {
        self.training = false;
    }

    /// The saved statistics (batch `mean` and `rstd` per channel) of the last
    /// forward pass, read back from the GPU; `None` before any forward pass and after one that normalized
    /// with the running statistics (eval mode).
    pub async fn saved_stats(&self) -> Result<Option<NormStats<Vec<f32>>>> {
        if !self.last.as_ref().is_some_and(|l| l.batch) {
            return Ok(None);
        }
        Ok(Some(self.state.saved_stats(&self.ctx).await?))
    }

    /// Blocking [`BatchNorm::saved_stats`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn saved_stats_blocking(&self) -> Result<Option<NormStats<Vec<f32>>>> {
        pollster::block_on(self.saved_stats())
    }

    /// Records the forward pass over slices of the caller's buffers: training
    /// mode normalizes with the batch's statistics and updates the running
    /// ones, eval mode uses the running statistics (the batch's if they are
    /// not tracked). `y` may be `x` only in eval mode with running statistics.
    /// The layer keeps what [`BatchNorm::encode_backward`] needs but `x`.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use wgpu_batchnorm::{BatchNorm, GpuContext, Layout, Options, Shape};
    /// let ctx = Arc::new(GpuContext::new_blocking()?);
    /// let mut bn = BatchNorm::new(ctx.clone(), 16, Options::default())?;
    /// let shape = Shape::new(&[8, 16, 32, 32], Layout::ChannelsFirst)?;
    /// let (x, y) = (ctx.upload("x", &vec![1.0; shape.numel()])?, ctx.storage("y", shape.numel())?);
    /// let (dy, dx) = (ctx.upload("dy", &vec![1.0; shape.numel()])?, ctx.storage("dx", shape.numel())?);
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// bn.encode_forward(&mut encoder, &shape, x.slice(..), y.slice(..))?;
    /// bn.encode_backward(&mut encoder, dy.slice(..), x.slice(..), dx.slice(..))?;
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        x: wgpu::BufferSlice<'_>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        self.encode_forward_epilogue(encoder, shape, x, None, y)
    }

    /// [`BatchNorm::encode_forward`] through the layer's fused epilogue
    /// ([`Options::epilogue`]): `z = act(bn(x) + residual)`, with `residual`
    /// given exactly when the epilogue has one (`z` may be that very slice).
    pub fn encode_forward_epilogue(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        x: wgpu::BufferSlice<'_>,
        residual: Option<wgpu::BufferSlice<'_>>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        self.forget_forward();
        let last = self.record_forward(encoder, shape, x, residual, y)?;
        self.keep_forward(last);
        Ok(())
    }

    /// Forgets the last forward, as a forward starts: until it succeeds there
    /// is nothing to differentiate, so that a backward never pairs one
    /// forward's input with another's statistics.
    fn forget_forward(&mut self) {
        self.last = None;
        self.host_x = None;
        self.host_z = None;
    }

    /// Keeps what a forward that succeeded was, and counts its batch.
    fn keep_forward(&mut self, last: Last) {
        if last.tracked {
            self.num_batches_tracked = self.num_batches_tracked.saturating_add(1);
        }
        self.last = Some(last);
    }

    /// Records the forward of the layer's mode over the slices.
    fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        x: wgpu::BufferSlice<'_>,
        residual: Option<wgpu::BufferSlice<'_>>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<Last> {
        if shape.channels() != self.state.channels {
            return Err(Error::ShapeMismatch {
                what: "x's channel axis",
                expected: format!("{} channels", self.state.channels),
                got: format!("{} channels (shape {:?}, {:?})", shape.channels(), shape.dims(), shape.layout()),
            });
        }
        let ctx = &self.ctx;
        let affine = self.state.affine.as_ref().map(|a| ChannelAffine { gamma: all(&a.gamma), beta: all(&a.beta) });
        if let (false, Some((mean, var))) = (self.training, &self.state.running) {
            let buffers =
                ForwardInferenceBuffers { x, y, affine, running_mean: all(mean), running_var: all(var), residual, workspace: None };
            ctx.encode_forward_inference(encoder, shape, &self.options, &buffers)?;
            return Ok(Last { shape: shape.clone(), batch: false, tracked: false });
        }
        let running = match (self.training, &self.state.running) {
            (true, Some((mean, var))) => {
                Some(RunningBuffers { mean: all(mean), var: all(var), num_batches_tracked: self.num_batches_tracked })
            }
            _ => None,
        };
        let options = Options { track_running_stats: running.is_some(), ..self.options };
        let buffers = ForwardTrainBuffers {
            x,
            y,
            save_mean: all(&self.state.saved.0),
            save_invstd: all(&self.state.saved.1),
            affine,
            running,
            residual,
            workspace: None,
        };
        ctx.encode_forward_train(encoder, shape, &options, &buffers)?;
        Ok(Last { shape: shape.clone(), batch: true, tracked: running.is_some() })
    }

    /// Records the backward of the last [`BatchNorm::encode_forward`] (or
    /// [`BatchNorm::forward`]): `dx` from `dy` and that pass's `x`, and, where
    /// `affine`, `dgamma` and `dbeta` into [`BatchNorm::param_grad_buffers`].
    pub fn encode_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dy: wgpu::BufferSlice<'_>,
        x: wgpu::BufferSlice<'_>,
        dx: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        self.encode_backward_epilogue(encoder, dy, x, None, dx, None)
    }

    /// [`BatchNorm::encode_backward`] through the layer's fused epilogue: from
    /// `dz`, masked by the forward's output `z` (given exactly when the
    /// epilogue has an activation), writing `dx` and, exactly when it has a
    /// residual, `dresidual`.
    pub fn encode_backward_epilogue(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dz: wgpu::BufferSlice<'_>,
        x: wgpu::BufferSlice<'_>,
        z: Option<wgpu::BufferSlice<'_>>,
        dx: wgpu::BufferSlice<'_>,
        dresidual: Option<wgpu::BufferSlice<'_>>,
    ) -> Result<()> {
        let Some(last) = &self.last else {
            return Err(Error::InvalidState("backward before any forward pass".into()));
        };
        let stats = match (last.batch, &self.state.running) {
            (true, _) => BackwardStats::Saved(NormStats { mean: Some(all(&self.state.saved.0)), rstd: all(&self.state.saved.1) }),
            (false, Some((mean, var))) => BackwardStats::Running { mean: all(mean), var: all(var) },
            (false, None) => return Err(Error::InvalidState("the last forward pass left no statistics".into())),
        };
        let buffers = BackwardBuffers {
            dy: dz,
            x,
            dx,
            stats,
            gamma: self.state.affine.as_ref().map(|a| all(&a.gamma)),
            param_grads: self.state.grads.as_ref().map(|(dgamma, dbeta)| ParamGradBuffers { dgamma: all(dgamma), dbeta: all(dbeta) }),
            z,
            dresidual,
            workspace: None,
        };
        self.ctx.encode_backward(encoder, &last.shape, &self.options, &buffers)
    }

    /// Normalizes `x` (whose channel axis `layout` names) and keeps what
    /// [`BatchNorm::backward`] needs.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        self.forward_epilogue(x, None, layout).await
    }

    /// [`BatchNorm::forward`] through the layer's fused epilogue: returns
    /// `z = act(bn(x) + residual)`, with `residual` (shaped like `x`) given
    /// exactly when [`Options::epilogue`] has one; keeps `z` where
    /// [`BatchNorm::backward`] masks by it.
    pub async fn forward_epilogue<E: Element>(
        &mut self,
        x: &ArrayViewD<'_, E>,
        residual: Option<&ArrayViewD<'_, E>>,
        layout: Layout,
    ) -> Result<ArrayD<E>> {
        check_element::<E>(self.options.dtype)?;
        self.options.epilogue.check_residual("residual", residual.is_some())?;
        self.forget_forward();
        let ctx = self.ctx.clone();
        let _serial = ctx.serialize().await;
        let shape = Shape::new(x.shape(), layout)?;
        if let Some(r) = residual {
            shape.check_same_dims("residual", r.shape())?;
        }
        // Sizes checked before the arrays are copied.
        ctx.plan(&shape, E::DTYPE)?;
        ctx.check_alive()?;
        let xb = ctx.upload_tensor("x", &host_data(x))?;
        let rb = residual.map(|r| ctx.upload_tensor("residual", &host_data(r))).transpose()?;
        let y = ctx.tensor_storage("y", E::DTYPE, shape.numel())?;
        let last = ctx.run(|e| self.record_forward(e, &shape, all(&xb), rb.as_ref().map(all), all(&y))).await?;
        // The work ran: its running statistics are updated, and its batch counts.
        self.keep_forward(last);
        let out = ctx.download_serialized(&[(&y, E::DTYPE.tensor_words(shape.numel()))]).await?.pop().unwrap_or_default();
        self.host_x = Some(xb);
        self.host_z = self.options.epilogue.needs_z().then_some(y);
        from_words(out, shape.dims())
    }

    /// Blocking [`BatchNorm::forward_epilogue`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_epilogue_blocking<E: Element>(
        &mut self,
        x: &ArrayViewD<'_, E>,
        residual: Option<&ArrayViewD<'_, E>>,
        layout: Layout,
    ) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward_epilogue(x, residual, layout))
    }

    /// Blocking [`BatchNorm::forward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Gradients of the last forward ([`BatchNorm::forward`] or
    /// [`BatchNorm::forward_epilogue`]) for upstream gradient `dy` (shaped
    /// like that pass's `x`; `dL/dz` through a fused epilogue): `dx`,
    /// `dgamma` and `dbeta` (`None` for `affine = false`), and `dresidual`
    /// where the epilogue has a residual.
    pub async fn backward<E: Element>(&self, dz: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        check_element::<E>(self.options.dtype)?;
        let (Some(last), Some(x)) = (&self.last, &self.host_x) else {
            return Err(Error::InvalidState("backward before any forward pass on host arrays".into()));
        };
        last.shape.check_same_dims("dy", dz.shape())?;
        let shape = &last.shape;
        let ctx = &self.ctx;
        let _serial = ctx.serialize().await;
        ctx.check_alive()?;
        let dyb = ctx.upload_tensor("dy", &host_data(dz))?;
        let dx = ctx.tensor_storage("dx", E::DTYPE, shape.numel())?;
        let dresidual = self.options.epilogue.residual.then(|| ctx.tensor_storage("dresidual", E::DTYPE, shape.numel())).transpose()?;
        let z = self.host_z.as_ref().map(all);
        ctx.run(|e| self.encode_backward_epilogue(e, all(&dyb), all(x), z, all(&dx), dresidual.as_ref().map(all))).await?;
        ctx.download_gradients(&last.shape, &dx, dresidual.as_ref(), self.state.grads.as_ref()).await
    }

    /// Blocking [`BatchNorm::backward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_blocking<E: Element>(&self, dy: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        pollster::block_on(self.backward(dy))
    }
}
