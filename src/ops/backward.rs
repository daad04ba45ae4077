//! Backward: `dx`, `dgamma`, `dbeta` in training mode (batch statistics) or
//! inference mode (running statistics as constants).
//!
//! Four dispatches in one encoder: `backward_prepare` (per channel),
//! `backward_reduce.wgsl` (one read of `x` and `dy`), `backward_finalize`
//! (per channel), `backward_dx.wgsl` (`x` and `dy` again, `dx` written).

use ndarray::ArrayD;

use super::{channels_of, check_channels, check_distinct, check_tensor, contiguous, window_of, BackwardInputs, Gradients, Uniforms};
use crate::context::{Binding, GpuContext, Unused};
use crate::error::{Error, Result};
use crate::options::{check_eps, Options};
use crate::shaders::{Kernel, Variant, FLAG_AFFINE, FLAG_INFERENCE, FLAG_WRITE_GRADS};
use crate::shape::Shape;

/// Where the statistics of the forward pass came from.
#[derive(Debug, Clone, Copy)]
pub enum BackwardStats<T> {
    /// Training mode: `save_mean` and `save_invstd` of the training forward
    /// ([`TrainOutput::backward_stats`](crate::TrainOutput::backward_stats)).
    Batch {
        /// Batch mean per channel.
        save_mean: T,
        /// `1 / sqrt(var + eps)` per channel.
        save_invstd: T,
    },
    /// Inference mode: the running statistics, constants for the gradient
    /// ([`RunningStats::backward_stats`](crate::RunningStats::backward_stats)).
    Running {
        /// Running mean per channel.
        mean: T,
        /// Running variance per channel.
        var: T,
    },
}

/// Buffers of a backward pass. All hold f32 and need `STORAGE` usage.
#[derive(Debug, Clone, Copy)]
pub struct BackwardBuffers<'a> {
    /// Upstream gradient, `numel` f32s.
    pub dy: &'a wgpu::Buffer,
    /// The forward pass's input, `numel` f32s.
    pub x: &'a wgpu::Buffer,
    /// Gradient out, `numel` f32s; must be neither `x` nor `dy`.
    pub dx: &'a wgpu::Buffer,
    /// The forward pass's statistics.
    pub stats: BackwardStats<&'a wgpu::Buffer>,
    /// `gamma`, or `None` for `affine = false` (`gamma = 1`).
    pub gamma: Option<&'a wgpu::Buffer>,
    /// `dgamma` and `dbeta` out (`C` f32s each), or `None` to skip them.
    pub param_grads: Option<ParamGradBuffers<'a>>,
}

/// Output buffers for the parameter gradients.
#[derive(Debug, Clone, Copy)]
pub struct ParamGradBuffers<'a> {
    /// `sum dy * xhat` per channel.
    pub dgamma: &'a wgpu::Buffer,
    /// `sum dy` per channel.
    pub dbeta: &'a wgpu::Buffer,
}

impl GpuContext {
    /// Records a backward pass into `encoder`. `eps` is the forward pass's: the
    /// training backward needs it where two values per channel make the
    /// textbook formula cancel (docs/SPEC.md, Backward).
    pub fn encode_backward(&self, encoder: &mut wgpu::CommandEncoder, shape: &Shape, eps: f32, b: &BackwardBuffers<'_>) -> Result<()> {
        check_eps(eps)?;
        check_tensor("dy", b.dy, shape)?;
        check_tensor("x", b.x, shape)?;
        check_tensor("dx", b.dx, shape)?;
        check_distinct("dx", b.dx, "x", b.x)?;
        check_distinct("dx", b.dx, "dy", b.dy)?;
        let (mean, invstd_or_var, mut flags) = match b.stats {
            BackwardStats::Batch { save_mean, save_invstd } => {
                shape.check_trainable()?;
                check_channels("save_mean", save_mean, shape)?;
                check_channels("save_invstd", save_invstd, shape)?;
                (save_mean, save_invstd, 0)
            }
            BackwardStats::Running { mean, var } => {
                check_channels("running_mean", mean, shape)?;
                check_channels("running_var", var, shape)?;
                (mean, var, FLAG_INFERENCE)
            }
        };
        if let Some(gamma) = b.gamma {
            check_channels("gamma", gamma, shape)?;
            flags |= FLAG_AFFINE;
        }
        if let Some(g) = &b.param_grads {
            check_channels("dgamma", g.dgamma, shape)?;
            check_channels("dbeta", g.dbeta, shape)?;
            if g.dgamma == g.dbeta {
                return Err(Error::BadBuffer { name: "dgamma", reason: "is the same buffer as `dbeta`".into() });
            }
            flags |= FLAG_WRITE_GRADS;
        }
        self.check_alive()?;
        let plan = self.plan(shape)?;
        let uniforms = Uniforms::new(self, &plan, |g| {
            g.eps = eps;
            g.flags = flags;
        });
        let partials = self.scratch("wgpu-batchnorm partials", plan.partials_bytes());
        let params = self.scratch("wgpu-batchnorm params", plan.full.params_bytes());
        let channels = |index, buffer| channels_of(index, buffer, shape);
        let bindings = [Binding::whole(0, &uniforms.full), Binding::whole(6, &params), channels(7, mean)];
        self.dispatch(encoder, Kernel::BackwardPrepare, Variant::EPILOGUE, plan.full.epilogue_grid, &bindings);
        for (window, uniform) in plan.windows.iter().zip(&uniforms.windows) {
            let bindings = [
                Binding::whole(0, uniform),
                window_of(1, b.x, window),
                window_of(2, b.dy, window),
                Binding::whole(3, &params),
                Binding::whole(4, &partials),
            ];
            self.dispatch(encoder, window.plan.reduce_kernel(), self.reduction_variant(&window.plan), window.plan.reduce_grid, &bindings);
        }
        let gamma = b.gamma.map_or(Binding::whole(2, self.unused(Unused::Read)), |g| channels(2, g));
        let (dgamma, dbeta) = match b.param_grads {
            Some(g) => (channels(4, g.dgamma), channels(5, g.dbeta)),
            None => (Binding::whole(4, self.unused(Unused::WriteA)), Binding::whole(5, self.unused(Unused::WriteB))),
        };
        let bindings = [
            Binding::whole(0, &uniforms.full),
            Binding::whole(1, &partials),
            gamma,
            channels(3, invstd_or_var),
            dgamma,
            dbeta,
            Binding::whole(6, &params),
        ];
        self.dispatch(encoder, Kernel::BackwardFinalize, Variant::EPILOGUE, plan.full.epilogue_grid, &bindings);
        for (window, uniform) in plan.windows.iter().zip(&uniforms.windows) {
            let bindings = [
                Binding::whole(0, uniform),
                window_of(1, b.x, window),
                window_of(2, b.dy, window),
                Binding::whole(3, &params),
                window_of(4, b.dx, window),
            ];
            self.dispatch(encoder, Kernel::BackwardDx, window.plan.variant(), window.plan.stream_grid, &bindings);
        }
        Ok(())
    }

    /// Backward on host arrays: of [`GpuContext::forward_train`] with
    /// `stats` = [`TrainOutput::backward_stats`](crate::TrainOutput::backward_stats),
    /// or of [`GpuContext::forward_inference`] with
    /// [`RunningStats::backward_stats`](crate::RunningStats::backward_stats).
    /// `gamma` must be given as `options.affine` says; `dgamma` and `dbeta`
    /// are returned exactly then.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{BackwardInputs, GpuContext, Layout, Options};
    /// let ctx = GpuContext::new_blocking()?;
    /// let options = Options { affine: false, track_running_stats: false, ..Options::default() };
    /// let x = ArrayD::from_shape_fn(vec![4, 3, 8, 8], |i| i[3] as f32);
    /// let out = ctx.forward_train_blocking(&x.view(), Layout::ChannelsFirst, None, None, &options)?;
    /// let dy = ArrayD::from_elem(vec![4, 3, 8, 8], 1.0f32);
    /// let inputs = BackwardInputs { dy: dy.view(), x: x.view(), layout: Layout::ChannelsFirst };
    /// let grads = ctx.backward_blocking(&inputs, out.backward_stats(), None, &options)?;
    /// assert!(grads.dgamma.is_none());
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn backward(
        &self,
        inputs: &BackwardInputs<'_>,
        stats: BackwardStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients> {
        options.validate()?;
        options.check_affine(gamma.is_some())?;
        let _serial = self.serialize().await;
        let (shape, x_data) = contiguous(&inputs.x, inputs.layout)?;
        shape.check_same_dims("dy", inputs.dy.shape())?;
        let (_, dy_data) = contiguous(&inputs.dy, inputs.layout)?;
        let (a, b) = match stats {
            BackwardStats::Batch { save_mean, save_invstd } => (("save_mean", save_mean), ("save_invstd", save_invstd)),
            BackwardStats::Running { mean, var } => (("running_mean", mean), ("running_var", var)),
        };
        shape.check_channel_len(a.0, a.1.len())?;
        shape.check_channel_len(b.0, b.1.len())?;
        if let Some(g) = gamma {
            shape.check_channel_len("gamma", g.len())?;
        }
        self.plan(&shape)?;
        self.check_alive()?;
        let c = shape.channels();
        let (dyb, xb, dx) = (self.upload("dy", &dy_data), self.upload("x", &x_data), self.storage("dx", shape.numel()));
        let (sa, sb) = (self.upload(a.0, a.1), self.upload(b.0, b.1));
        let gamma = gamma.map(|g| self.upload("gamma", g));
        let grads = gamma.as_ref().map(|_| (self.storage("dgamma", c), self.storage("dbeta", c)));
        let stats = match stats {
            BackwardStats::Batch { .. } => BackwardStats::Batch { save_mean: &sa, save_invstd: &sb },
            BackwardStats::Running { .. } => BackwardStats::Running { mean: &sa, var: &sb },
        };
        let buffers = BackwardBuffers {
            dy: &dyb,
            x: &xb,
            dx: &dx,
            stats,
            gamma: gamma.as_ref(),
            param_grads: grads.as_ref().map(|(dgamma, dbeta)| ParamGradBuffers { dgamma, dbeta }),
        };
        self.run(|encoder| self.encode_backward(encoder, &shape, options.eps, &buffers)).await?;
        let mut reads = vec![(&dx, shape.numel())];
        if let Some((dgamma, dbeta)) = &grads {
            reads.extend([(dgamma, c), (dbeta, c)]);
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
        let dx = ArrayD::from_shape_vec(shape.dims(), out.next().unwrap_or_default()).map_err(|e| Error::Readback(e.to_string()))?;
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next() })
    }

    /// Blocking [`GpuContext::backward`].
    pub fn backward_blocking(
        &self,
        inputs: &BackwardInputs<'_>,
        stats: BackwardStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients> {
        pollster::block_on(self.backward(inputs, stats, gamma, options))
    }
}
