//! Training forward: batch statistics, normalize-scale-shift, running statistics.
//!
//! Three dispatches in one encoder: `stats.wgsl` (partials), `finalize.wgsl`
//! (`finalize_train`), `apply.wgsl`. Memory traffic: `x` twice, `y` once.

use ndarray::ArrayD;

use super::backward::BackwardStats;
use super::{channels_of, check_channels, check_tensor, contiguous, window_of, Affine, RunningStats, Uniforms};
use crate::context::{Binding, GpuContext, Unused};
use crate::error::Result;
use crate::options::{check_eps, Momentum, Options, RunningVariance};
use crate::shaders::{Kernel, Variant, FLAG_AFFINE, FLAG_RUNNING};
use crate::shape::{Layout, Shape};

/// Running statistics on the GPU and the weight of this batch,
/// [`Momentum::factor`] of the incremented `num_batches_tracked`.
#[derive(Debug, Clone, Copy)]
pub struct RunningBuffers<'a> {
    /// Running mean, `C` f32s, updated in place.
    pub mean: &'a wgpu::Buffer,
    /// Running variance, `C` f32s, updated in place.
    pub var: &'a wgpu::Buffer,
    /// Weight of this batch's statistics, in `[0, 1]`.
    pub factor: f32,
    /// Which batch variance the running variance averages.
    pub variance: RunningVariance,
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

impl TrainOutput {
    /// The statistics the backward of this forward pass differentiates at.
    pub fn backward_stats(&self) -> BackwardStats<&[f32]> {
        BackwardStats::Batch { save_mean: &self.save_mean, save_invstd: &self.save_invstd }
    }
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
        let uniforms = Uniforms::new(self, &plan, |g| {
            g.eps = eps;
            if b.affine.is_some() {
                g.flags |= FLAG_AFFINE;
            }
            if let Some(r) = &b.running {
                g.flags |= FLAG_RUNNING;
                g.factor = r.factor;
                g.unbias = r.variance.factor(shape.per_channel()) as f32;
            }
        });
        let channels = |index, buffer| channels_of(index, buffer, shape);
        let [gamma, beta] = self.affine_bindings(b.affine, shape);
        let (running_mean, running_var) = match b.running {
            Some(r) => (channels(7, r.mean), channels(8, r.var)),
            None => (Binding::whole(7, self.unused(Unused::WriteA)), Binding::whole(8, self.unused(Unused::WriteB))),
        };
        if let (Some(grid), [window]) = (plan.full.fused_grid, &plan.windows[..]) {
            // Every channel fits in one workgroup's registers: x is read once.
            let bindings = [
                Binding::whole(0, &uniforms.full),
                window_of(1, b.x, window),
                gamma,
                beta,
                channels(4, b.save_mean),
                channels(5, b.save_invstd),
                window_of(6, b.y, window),
                running_mean,
                running_var,
            ];
            self.dispatch(encoder, Kernel::ForwardFused, plan.full.fused_variant(), grid, &bindings);
            return Ok(());
        }
        let partials = self.scratch("wgpu-batchnorm partials", plan.partials_bytes());
        let params = self.scratch("wgpu-batchnorm params", plan.full.params_bytes());
        for (window, uniform) in plan.windows.iter().zip(&uniforms.windows) {
            let bindings = [Binding::whole(0, uniform), window_of(1, b.x, window), Binding::whole(2, &partials)];
            self.dispatch(encoder, window.plan.stats_kernel(), self.reduction_variant(&window.plan), window.plan.reduce_grid, &bindings);
        }
        let bindings = [
            Binding::whole(0, &uniforms.full),
            Binding::whole(1, &partials),
            gamma,
            beta,
            channels(4, b.save_mean),
            channels(5, b.save_invstd),
            Binding::whole(6, &params),
            running_mean,
            running_var,
        ];
        self.dispatch(encoder, Kernel::FinalizeTrain, Variant::EPILOGUE, plan.full.epilogue_grid, &bindings);
        self.encode_apply(encoder, &plan, &uniforms, b.x, &params, b.y);
        Ok(())
    }

    /// Training forward on host arrays: uploads, runs, downloads. `affine`
    /// and `running` must be given as `options.affine` and
    /// `options.track_running_stats` say ([`Error::OptionsMismatch`](crate::Error::OptionsMismatch)
    /// otherwise); `running` is updated with `options.momentum` and
    /// `options.running_variance`.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{GpuContext, Layout, Options, RunningStats};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![4, 3, 8, 8], |i| i[3] as f32);
    /// let options = Options { affine: false, ..Options::default() };
    /// let mut running = RunningStats::new(3);
    /// let out = ctx.forward_train_blocking(&x.view(), Layout::ChannelsFirst, None, Some(&mut running), &options)?;
    /// assert_eq!(out.y.shape(), x.shape());
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn forward_train(
        &self,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<TrainOutput> {
        options.validate()?;
        options.check_affine(affine.is_some())?;
        options.check_running(running.is_some())?;
        let _serial = self.serialize().await;
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
        let factor = running.as_ref().map_or(0.0, |r| options.momentum.factor(r.num_batches_tracked + 1));
        let buffers = ForwardTrainBuffers {
            x: &xb,
            y: &y,
            save_mean: &save_mean,
            save_invstd: &save_invstd,
            affine: affine_buffers.as_ref().map(|a| Affine { gamma: &a.gamma, beta: &a.beta }),
            running: running_buffers.as_ref().map(|(mean, var)| RunningBuffers { mean, var, factor, variance: options.running_variance }),
        };
        self.run(|encoder| self.encode_forward_train(encoder, &shape, options.eps, &buffers)).await?;
        let mut reads = vec![(&y, shape.numel()), (&save_mean, c), (&save_invstd, c)];
        if let Some((mean, var)) = &running_buffers {
            reads.extend([(mean, c), (var, c)]);
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
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
        options: &Options,
    ) -> Result<TrainOutput> {
        pollster::block_on(self.forward_train(x, layout, affine, running, options))
    }
}
