//! A batch-norm layer holding its parameters and running statistics on the GPU.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::backward::{BackwardBuffers, BackwardStats, ParamGradBuffers};
use crate::ops::forward_inference::ForwardInferenceBuffers;
use crate::ops::forward_train::{ForwardTrainBuffers, RunningBuffers};
use crate::ops::{contiguous, Affine, Gradients, RunningStats};
use crate::options::Options;
use crate::shape::{Layout, Shape};

/// What the last forward pass left for backward.
#[derive(Debug)]
struct Saved {
    shape: Shape,
    x: wgpu::Buffer,
    /// `save_mean` and `save_invstd`, or `None` when the running statistics normalized.
    batch: Option<(wgpu::Buffer, wgpu::Buffer)>,
}

/// A batch-norm layer used like PyTorch's `BatchNorm1d/2d/3d`: `gamma`, `beta`
/// and the running statistics live on the GPU; [`BatchNorm::train`] and
/// [`BatchNorm::eval`] switch modes; [`BatchNorm::backward`] differentiates the
/// last forward pass.
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
/// let (save_mean, save_invstd) = bn.saved_stats_blocking()?.expect("a training forward ran");
/// bn.eval();
/// let y_eval = bn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct BatchNorm {
    ctx: Arc<GpuContext>,
    channels: usize,
    options: Options,
    training: bool,
    affine: Option<Affine<wgpu::Buffer>>,
    running: Option<(wgpu::Buffer, wgpu::Buffer)>,
    num_batches_tracked: u64,
    saved: Option<Saved>,
}

impl BatchNorm {
    /// A layer in training mode with `gamma = 1`, `beta = 0`, `running_mean = 0`, `running_var = 1`.
    pub fn new(ctx: Arc<GpuContext>, channels: usize, options: Options) -> Result<Self> {
        options.validate()?;
        if channels == 0 {
            return Err(Error::EmptyTensor { dims: vec![0] });
        }
        let affine = options
            .affine
            .then(|| Affine { gamma: ctx.upload("gamma", &vec![1.0; channels]), beta: ctx.upload("beta", &vec![0.0; channels]) });
        let running = options.track_running_stats.then(|| {
            let init = RunningStats::new(channels);
            (ctx.upload("running_mean", &init.mean), ctx.upload("running_var", &init.var))
        });
        Ok(Self { ctx, channels, options, training: true, affine, running, num_batches_tracked: 0, saved: None })
    }

    /// Training mode: batch statistics, running statistics updated.
    pub fn train(&mut self) {
        self.training = true;
    }

    /// Eval mode: running statistics (batch statistics if they are not tracked).
    pub fn eval(&mut self) {
        self.training = false;
    }

    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The layer's options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Training batches seen.
    pub fn num_batches_tracked(&self) -> u64 {
        self.num_batches_tracked
    }

    /// `gamma` and `beta` buffers (`C` f32s each), for use with the low-level API.
    pub fn affine_buffers(&self) -> Option<Affine<&wgpu::Buffer>> {
        self.affine.as_ref().map(|a| Affine { gamma: &a.gamma, beta: &a.beta })
    }

    /// `gamma` and `beta`, read back from the GPU (`None` for `affine = false`).
    pub async fn affine(&self) -> Result<Option<Affine<Vec<f32>>>> {
        let Some(a) = &self.affine else {
            return Ok(None);
        };
        let mut out = self.read(&[&a.gamma, &a.beta]).await?.into_iter();
        Ok(Some(Affine { gamma: out.next().unwrap_or_default(), beta: out.next().unwrap_or_default() }))
    }

    /// Blocking [`BatchNorm::affine`].
    pub fn affine_blocking(&self) -> Result<Option<Affine<Vec<f32>>>> {
        pollster::block_on(self.affine())
    }

    /// `save_mean` and `save_invstd` of the last forward pass, read back from
    /// the GPU; `None` before any forward pass and after one that normalized
    /// with the running statistics (eval mode).
    pub async fn saved_stats(&self) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some((mean, invstd)) = self.saved.as_ref().and_then(|s| s.batch.as_ref()) else {
            return Ok(None);
        };
        let mut out = self.read(&[mean, invstd]).await?.into_iter();
        Ok(Some((out.next().unwrap_or_default(), out.next().unwrap_or_default())))
    }

    /// Blocking [`BatchNorm::saved_stats`].
    pub fn saved_stats_blocking(&self) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        pollster::block_on(self.saved_stats())
    }

    /// Per-channel buffers, `C` f32s each, read back in one go.
    async fn read(&self, buffers: &[&wgpu::Buffer]) -> Result<Vec<Vec<f32>>> {
        let _serial = self.ctx.serialize().await;
        let reads: Vec<(&wgpu::Buffer, usize)> = buffers.iter().map(|&b| (b, self.channels)).collect();
        self.ctx.download_serialized(&reads).await
    }

    /// Replaces `gamma` and `beta`.
    pub fn set_affine(&mut self, gamma: &[f32], beta: &[f32]) -> Result<()> {
        let Some(a) = &self.affine else {
            return Err(Error::InvalidState("set_affine on a layer with affine = false".into()));
        };
        for (what, v) in [("gamma", gamma), ("beta", beta)] {
            if v.len() != self.channels {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: format!("{} values", self.channels),
                    got: format!("{} values", v.len()),
                });
            }
        }
        self.ctx.queue().write_buffer(&a.gamma, 0, bytemuck::cast_slice(gamma));
        self.ctx.queue().write_buffer(&a.beta, 0, bytemuck::cast_slice(beta));
        Ok(())
    }

    /// Replaces the running statistics.
    pub fn set_running_stats(&mut self, stats: &RunningStats) -> Result<()> {
        let Some((mean, var)) = &self.running else {
            return Err(Error::InvalidState("set_running_stats on a layer with track_running_stats = false".into()));
        };
        for (what, v) in [("running_mean", &stats.mean), ("running_var", &stats.var)] {
            if v.len() != self.channels {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: format!("{} values", self.channels),
                    got: format!("{} values", v.len()),
                });
            }
        }
        self.ctx.queue().write_buffer(mean, 0, bytemuck::cast_slice(&stats.mean));
        self.ctx.queue().write_buffer(var, 0, bytemuck::cast_slice(&stats.var));
        self.num_batches_tracked = stats.num_batches_tracked;
        Ok(())
    }

    /// The running statistics, read back from the GPU (`None` if not tracked).
    pub async fn running_stats(&self) -> Result<Option<RunningStats>> {
        let Some((mean, var)) = &self.running else {
            return Ok(None);
        };
        let mut out = self.read(&[mean, var]).await?.into_iter();
        Ok(Some(RunningStats {
            mean: out.next().unwrap_or_default(),
            var: out.next().unwrap_or_default(),
            num_batches_tracked: self.num_batches_tracked,
        }))
    }

    /// Blocking [`BatchNorm::running_stats`].
    pub fn running_stats_blocking(&self) -> Result<Option<RunningStats>> {
        pollster::block_on(self.running_stats())
    }

    /// Normalizes `x` (whose channel axis `layout` names) and keeps what
    /// [`BatchNorm::backward`] needs.
    pub async fn forward(&mut self, x: &ArrayViewD<'_, f32>, layout: Layout) -> Result<ArrayD<f32>> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serialize().await;
        let (shape, data) = contiguous(x, layout)?;
        if shape.channels() != self.channels {
            return Err(Error::ShapeMismatch {
                what: "x's channel axis",
                expected: format!("{} channels", self.channels),
                got: format!("{} channels (shape {:?}, {layout:?})", shape.channels(), shape.dims()),
            });
        }
        ctx.plan(&shape)?;
        ctx.check_alive()?;
        let xb = ctx.upload("x", &data);
        let y = ctx.storage("y", shape.numel());
        let affine = self.affine_buffers();
        let batch = if let (false, Some((mean, var))) = (self.training, &self.running) {
            let buffers = ForwardInferenceBuffers { x: &xb, y: &y, affine, running_mean: mean, running_var: var };
            ctx.run(|e| ctx.encode_forward_inference(e, &shape, self.options.eps, &buffers)).await?;
            None
        } else {
            let (save_mean, save_invstd) = (ctx.storage("save_mean", self.channels), ctx.storage("save_invstd", self.channels));
            let tracked = self.num_batches_tracked + 1;
            let running = match (self.training, &self.running) {
                (true, Some((mean, var))) => Some(RunningBuffers {
                    mean,
                    var,
                    factor: self.options.momentum.factor(tracked),
                    variance: self.options.running_variance,
                }),
                _ => None,
            };
            let buffers = ForwardTrainBuffers { x: &xb, y: &y, save_mean: &save_mean, save_invstd: &save_invstd, affine, running };
            ctx.run(|e| ctx.encode_forward_train(e, &shape, self.options.eps, &buffers)).await?;
            if running.is_some() {
                self.num_batches_tracked = tracked;
            }
            Some((save_mean, save_invstd))
        };
        let out = ctx.download_serialized(&[(&y, shape.numel())]).await?.pop().unwrap_or_default();
        let out = ArrayD::from_shape_vec(shape.dims(), out).map_err(|e| Error::Readback(e.to_string()))?;
        self.saved = Some(Saved { shape, x: xb, batch });
        Ok(out)
    }

    /// Blocking [`BatchNorm::forward`].
    pub fn forward_blocking(&mut self, x: &ArrayViewD<'_, f32>, layout: Layout) -> Result<ArrayD<f32>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Gradients of the last forward pass for upstream gradient `dy` (shaped like that pass's `x`).
    /// `dgamma` and `dbeta` are `None` for `affine = false`.
    pub async fn backward(&self, dy: &ArrayViewD<'_, f32>) -> Result<Gradients> {
        let Some(saved) = &self.saved else {
            return Err(Error::InvalidState("backward before any forward pass".into()));
        };
        let (shape, data) = contiguous(dy, saved.shape.layout())?;
        saved.shape.check_same_dims("dy", shape.dims())?;
        let ctx = &self.ctx;
        let _serial = ctx.serialize().await;
        ctx.check_alive()?;
        let dyb = ctx.upload("dy", &data);
        let dx = ctx.storage("dx", shape.numel());
        let stats = match (&saved.batch, &self.running) {
            (Some((save_mean, save_invstd)), _) => BackwardStats::Batch { save_mean, save_invstd },
            (None, Some((mean, var))) => BackwardStats::Running { mean, var },
            (None, None) => return Err(Error::InvalidState("the last forward pass left no statistics".into())),
        };
        let grads = self.affine.as_ref().map(|_| (ctx.storage("dgamma", self.channels), ctx.storage("dbeta", self.channels)));
        let buffers = BackwardBuffers {
            dy: &dyb,
            x: &saved.x,
            dx: &dx,
            stats,
            gamma: self.affine.as_ref().map(|a| &a.gamma),
            param_grads: grads.as_ref().map(|(dgamma, dbeta)| ParamGradBuffers { dgamma, dbeta }),
        };
        ctx.run(|e| ctx.encode_backward(e, &shape, self.options.eps, &buffers)).await?;
        let mut reads = vec![(&dx, shape.numel())];
        if let Some((dgamma, dbeta)) = &grads {
            reads.extend([(dgamma, self.channels), (dbeta, self.channels)]);
        }
        let mut out = ctx.download_serialized(&reads).await?.into_iter();
        let dx = ArrayD::from_shape_vec(shape.dims(), out.next().unwrap_or_default()).map_err(|e| Error::Readback(e.to_string()))?;
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next() })
    }

    /// Blocking [`BatchNorm::backward`].
    pub fn backward_blocking(&self, dy: &ArrayViewD<'_, f32>) -> Result<Gradients> {
        pollster::block_on(self.backward(dy))
    }
}
