//! Training forward: batch statistics, normalize-scale-shift, running statistics.
//!
//! Three dispatches in one encoder: `stats.wgsl` (partials), `finalize.wgsl`
//! (`finalize_train`), `apply.wgsl`. Memory traffic: `x` twice, `y` once.

use ndarray::ArrayD;

use super::{check_channels, check_tensor, contiguous, Affine, RunningStats};
use crate::context::{GpuContext, Unused};
use crate::error::Result;
use crate::options::{check_eps, Momentum};
use crate::pipelines::Kernel;
use crate::plan::{Strategy, Width, FLAG_AFFINE, FLAG_RUNNING};
use crate::shape::{Layout, Shape};

/// Running statistics on the GPU and the weight of this batch,
/// [`Momentum::factor`] of the incremented `num_batches_tracked`.
#[derive(Debug, Clone, Copy)]
pub struct RunningBuffers<'a> {
    /// Running mean, `C` f32s, updated in place.
    pub mean: &'a wgpu::Buffer,
    /// Running unbiased variance, `C` f32s, updated in place.
    pub var: &'a wgpu::Buffer,
    /// Weight of this batch's statistics, in `[0, 1]`.
    pub factor: f32,
}

/// Buffers of a training forward pass. All hold f32 and need `STORAGE` usage.
#[derive(Debug, Clone, Copy)]
pub struct ForwardTrainBuffers<'a> {
    /// Input, `numel` f32s.
    pub x: &'a wgpu::Buffer,
    /// Output, `numel` f32s; must not be `x`.
    pub y: &'a wgpu::Buffer,
    /// Batch mean out, `C` f32s.
    pub save_mean: &'a wgpu::Buffer,
    /// `1 / sqrt(var + eps)` out, `C` f32s.
    pub save_invstd: &'a wgpu::Buffer,
    /// `gamma` and `beta`, or `None` for `affine = false`.
    pub affine: Option<Affine<&'a wgpu::Buffer>>,
    /// Running statistics to update, if tracked.
    pub running: Option<RunningBuffers<'a>>,
}

/// Outputs of [`GpuContext::forward_train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    /// Normalized output, shaped like `x`.
    pub y: ArrayD<f32>,
    /// Batch mean per channel.
    pub save_mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub save_invstd: Vec<f32>,
}

impl GpuContext {
    /// Records a training forward pass into `encoder`. Checks every argument
    /// before recording anything.
    ///
    /// ```no_run
    /// use wgpu_batchnorm::{ForwardTrainBuffers, GpuContext, Layout, Shape};
    /// let ctx = GpuContext::new_blocking()?;
    /// let shape = Shape::new(&[8, 16, 32, 32], Layout::ChannelsFirst)?;
    /// let x = ctx.upload("x", &vec![1.0; shape.numel()]);
    /// let y = ctx.storage("y", shape.numel());
    /// let (mean, invstd) = (ctx.storage("mean", 16), ctx.storage("invstd", 16));
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// let buffers = ForwardTrainBuffers { x: &x, y: &y, save_mean: &mean, save_invstd: &invstd, affine: None, running: None };
    /// ctx.encode_forward_train(&mut encoder, &shape, 1e-5, &buffers)?;
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn encode_forward_train(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        eps: f32,
        b: &ForwardTrainBuffers<'_>,
    ) -> Result<()> {
        check_eps(eps)?;
        shape.check_trainable()?;
        check_tensor("x", b.x, shape)?;
        check_tensor("y", b.y, shape)?;
        super::check_distinct("y", b.y, "x", b.x)?;
        check_channels("save_mean", b.save_mean, shape)?;
        check_channels("save_invstd", b.save_invstd, shape)?;
        if let Some(a) = &b.affine {
            check_channels("gamma", a.gamma, shape)?;
            check_channels("beta", a.beta, shape)?;
        }
        if let Some(r) = &b.running {
            Momentum::Exponential(r.factor).validate()?;
            check_channels("running_mean", r.mean, shape)?;
            check_channels("running_var", r.var, shape)?;
        }
        self.check_alive()?;
        let plan = self.plan(shape)?;
        let mut geometry = plan.geometry;
        geometry.eps = eps;
        if b.affine.is_some() {
            geometry.flags |= FLAG_AFFINE;
        }
        if let Some(r) = &b.running {
            geometry.flags |= FLAG_RUNNING;
            geometry.factor = r.factor;
        }
        let uniform = self.uniform(&geometry);
        let partials = self.scratch("wgpu-batchnorm partials", plan.partials_bytes());
        let params = self.scratch("wgpu-batchnorm params", plan.params_bytes());
        let (tensor, channels) = (Some(shape.bytes()), Some(shape.channels() as u64 * 4));
        let stats = match plan.strategy {
            Strategy::Inner => Kernel::StatsInner,
            Strategy::Rows => Kernel::StatsRows,
        };
        self.dispatch(encoder, stats, plan.width, plan.reduce_grid, &[(0, &uniform, None), (1, b.x, tensor), (2, &partials, None)]);
        let per_channel = |buffer| (buffer, channels);
        let read = self.unused(Unused::Read);
        let (gamma, beta) = b.affine.map_or((read, read), |a| (per_channel(a.gamma), per_channel(a.beta)));
        let (running_mean, running_var) =
            b.running.map_or((self.unused(Unused::WriteA), self.unused(Unused::WriteB)), |r| (per_channel(r.mean), per_channel(r.var)));
        self.dispatch(
            encoder,
            Kernel::FinalizeTrain,
            Width::Scalar,
            plan.epilogue_grid,
            &[
                (0, &uniform, None),
                (1, &partials, None),
                (2, gamma.0, gamma.1),
                (3, beta.0, beta.1),
                (4, b.save_mean, channels),
                (5, b.save_invstd, channels),
                (6, &params, None),
                (7, running_mean.0, running_mean.1),
                (8, running_var.0, running_var.1),
            ],
        );
        self.dispatch(
            encoder,
            Kernel::Apply,
            plan.width,
            plan.stream_grid,
            &[(0, &uniform, None), (1, b.x, tensor), (2, &params, None), (3, b.y, tensor)],
        );
        Ok(())
    }

    /// Training forward on host arrays: uploads, runs, downloads. With
    /// `running`, updates it with PyTorch's rule and `momentum`.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{GpuContext, Layout, Momentum, RunningStats};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![4, 3, 8, 8], |i| i[3] as f32);
    /// let mut running = RunningStats::new(3);
    /// let out = ctx.forward_train_blocking(&x.view(), Layout::ChannelsFirst, None, Some(&mut running), Momentum::default(), 1e-5)?;
    /// assert_eq!(out.y.shape(), x.shape());
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn forward_train(
        &self,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        momentum: Momentum,
        eps: f32,
    ) -> Result<TrainOutput> {
        momentum.validate()?;
        let (shape, data) = contiguous(x, layout)?;
        let c = shape.channels();
        if let Some(a) = &affine {
            shape.check_channel_len("gamma", a.gamma.len())?;
            shape.check_channel_len("beta", a.beta.len())?;
        }
        if let Some(r) = &running {
            shape.check_channel_len("running_mean", r.mean.len())?;
            shape.check_channel_len("running_var", r.var.len())?;
        }
        shape.check_trainable()?;
        self.plan(&shape)?;
        self.check_alive()?;
        let xb = self.upload("x", &data);
        let y = self.storage("y", shape.numel());
        let (save_mean, save_invstd) = (self.storage("save_mean", c), self.storage("save_invstd", c));
        let affine_buffers = affine.map(|a| Affine { gamma: self.upload("gamma", a.gamma), beta: self.upload("beta", a.beta) });
        let running_buffers = running.as_ref().map(|r| (self.upload("running_mean", &r.mean), self.upload("running_var", &r.var)));
        let factor = running.as_ref().map_or(0.0, |r| momentum.factor(r.num_batches_tracked + 1));
        let buffers = ForwardTrainBuffers {
            x: &xb,
            y: &y,
            save_mean: &save_mean,
            save_invstd: &save_invstd,
            affine: affine_buffers.as_ref().map(|a| Affine { gamma: &a.gamma, beta: &a.beta }),
            running: running_buffers.as_ref().map(|(mean, var)| RunningBuffers { mean, var, factor }),
        };
        self.run(|encoder| self.encode_forward_train(encoder, &shape, eps, &buffers)).await?;
        let mut reads = vec![(&y, shape.numel()), (&save_mean, c), (&save_invstd, c)];
        if let Some((mean, var)) = &running_buffers {
            reads.extend([(mean, c), (var, c)]);
        }
        let mut out = self.download(&reads).await?.into_iter();
        let mut next = || out.next().unwrap_or_default();
        let (y, save_mean, save_invstd) = (next(), next(), next());
        if let Some(r) = running {
            r.mean = next();
            r.var = next();
            r.num_batches_tracked += 1;
        }
        Ok(TrainOutput {
            y: ArrayD::from_shape_vec(shape.dims(), y).map_err(|e| crate::Error::Readback(e.to_string()))?,
            save_mean,
            save_invstd,
        })
    }

    /// Blocking [`GpuContext::forward_train`].
    pub fn forward_train_blocking(
        &self,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        momentum: Momentum,
        eps: f32,
    ) -> Result<TrainOutput> {
        pollster::block_on(self.forward_train(x, layout, affine, running, momentum, eps))
    }
}
