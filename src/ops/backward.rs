//! Backward: `dx`, `dgamma`, `dbeta` in training mode (batch statistics) or
//! inference mode (running statistics as constants).
//!
//! Four dispatches in one encoder: `backward_prepare` (per channel),
//! `backward_reduce.wgsl` (one read of `x` and `dy`), `backward_finalize`
//! (per channel), `backward_dx.wgsl` (`x` and `dy` again, `dx` written).

use ndarray::ArrayD;

use super::{channels_of, check_channels, check_distinct, check_tensor, contiguous, window_of, Gradients, RunningStats, Uniforms};
use crate::context::{Binding, GpuContext, Unused};
use crate::error::{Error, Result};
use crate::options::check_eps;
use crate::pipelines::Kernel;
use crate::plan::{Variant, FLAG_AFFINE, FLAG_INFERENCE, FLAG_WRITE_GRADS};
use crate::shape::{Layout, Shape};

/// Where the statistics of the forward pass came from.
#[derive(Debug, Clone, Copy)]
pub enum BackwardStats<T> {
    /// Training mode: `save_mean` and `save_invstd` of the training forward.
    Batch {
        /// Batch mean per channel.
        save_mean: T,
        /// `1 / sqrt(var + eps)` per channel.
        save_invstd: T,
    },
    /// Inference mode: the running statistics, constants for the gradient.
    Running {
        /// Running mean per channel.
        mean: T,
        /// Running variance per channel.
        var: T,
        /// The forward pass's `eps`.
        eps: f32,
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
    /// Records a backward pass into `encoder`.
    pub fn encode_backward(&self, encoder: &mut wgpu::CommandEncoder, shape: &Shape, b: &BackwardBuffers<'_>) -> Result<()> {
        check_tensor("dy", b.dy, shape)?;
        check_tensor("x", b.x, shape)?;
        check_tensor("dx", b.dx, shape)?;
        check_distinct("dx", b.dx, "x", b.x)?;
        check_distinct("dx", b.dx, "dy", b.dy)?;
        let (mean, invstd_or_var, eps, mut flags) = match b.stats {
            BackwardStats::Batch { save_mean, save_invstd } => {
                shape.check_trainable()?;
                check_channels("save_mean", save_mean, shape)?;
                check_channels("save_invstd", save_invstd, shape)?;
                (save_mean, save_invstd, 0.0, 0)
            }
            BackwardStats::Running { mean, var, eps } => {
                check_eps(eps)?;
                check_channels("running_mean", mean, shape)?;
                check_channels("running_var", var, shape)?;
                (mean, var, eps, FLAG_INFERENCE)
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

    /// Backward of [`GpuContext::forward_train`] on host arrays, from its `save_mean` and `save_invstd`.
    pub async fn backward_train(
        &self,
        dy: &ndarray::ArrayViewD<'_, f32>,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        save_mean: &[f32],
        save_invstd: &[f32],
        gamma: Option<&[f32]>,
    ) -> Result<Gradients> {
        let stats = BackwardStats::Batch { save_mean, save_invstd };
        self.backward_host(dy, x, layout, stats, gamma).await
    }

    /// Backward of [`GpuContext::forward_inference`] on host arrays.
    pub async fn backward_inference(
        &self,
        dy: &ndarray::ArrayViewD<'_, f32>,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        running: &RunningStats,
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients> {
        let stats = BackwardStats::Running { mean: &running.mean[..], var: &running.var[..], eps };
        self.backward_host(dy, x, layout, stats, gamma).await
    }

    /// Blocking [`GpuContext::backward_train`].
    pub fn backward_train_blocking(
        &self,
        dy: &ndarray::ArrayViewD<'_, f32>,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        save_mean: &[f32],
        save_invstd: &[f32],
        gamma: Option<&[f32]>,
    ) -> Result<Gradients> {
        pollster::block_on(self.backward_train(dy, x, layout, save_mean, save_invstd, gamma))
    }

    /// Blocking [`GpuContext::backward_inference`].
    pub fn backward_inference_blocking(
        &self,
        dy: &ndarray::ArrayViewD<'_, f32>,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        running: &RunningStats,
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients> {
        pollster::block_on(self.backward_inference(dy, x, layout, running, gamma, eps))
    }

    async fn backward_host(
        &self,
        dy: &ndarray::ArrayViewD<'_, f32>,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        stats: BackwardStats<&[f32]>,
        gamma: Option<&[f32]>,
    ) -> Result<Gradients> {
        let _serial = self.serialize().await;
        let (shape, x_data) = contiguous(x, layout)?;
        shape.check_same_dims("dy", dy.shape())?;
        let (_, dy_data) = contiguous(dy, layout)?;
        let (a, b) = match stats {
            BackwardStats::Batch { save_mean, save_invstd } => (("save_mean", save_mean), ("save_invstd", save_invstd)),
            BackwardStats::Running { mean, var, .. } => (("running_mean", mean), ("running_var", var)),
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
        let (dgamma, dbeta) = (self.storage("dgamma", c), self.storage("dbeta", c));
        let stats = match stats {
            BackwardStats::Batch { .. } => BackwardStats::Batch { save_mean: &sa, save_invstd: &sb },
            BackwardStats::Running { eps, .. } => BackwardStats::Running { mean: &sa, var: &sb, eps },
        };
        let buffers = BackwardBuffers {
            dy: &dyb,
            x: &xb,
            dx: &dx,
            stats,
            gamma: gamma.as_ref(),
            param_grads: Some(ParamGradBuffers { dgamma: &dgamma, dbeta: &dbeta }),
        };
        self.run(|encoder| self.encode_backward(encoder, &shape, &buffers)).await?;
        let mut out = self.download_serialized(&[(&dx, shape.numel()), (&dgamma, c), (&dbeta, c)]).await?.into_iter();
        let mut next = || out.next().unwrap_or_default();
        let dx = ArrayD::from_shape_vec(shape.dims(), next()).map_err(|e| Error::Readback(e.to_string()))?;
        Ok(Gradients { dx, dgamma: next(), dbeta: next() })
    }
}
