//! Inference forward with running statistics: one streaming pass.
//!
//! `prepare_inference` (`finalize.wgsl`, one invocation per channel) folds the
//! running statistics, `gamma` and `beta` into per-channel constants; `apply.wgsl`
//! then reads `x` once and writes `y` once.

use ndarray::ArrayD;

use super::{channels_of, check_channels, check_distinct, check_tensor, contiguous, Affine, RunningStats, Uniforms};
use crate::context::{Binding, GpuContext};
use crate::error::Result;
use crate::options::{check_eps, Options};
use crate::shaders::{Kernel, Variant, FLAG_AFFINE};
use crate::shape::{Layout, Shape};

/// Buffers of an inference forward pass. All hold f32 and need `STORAGE` usage.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInferenceBuffers<'a> {
    /// Input, `numel` f32s.
    pub x: &'a wgpu::Buffer,
    /// Output, `numel` f32s; must not be `x`.
    pub y: &'a wgpu::Buffer,
    /// `gamma` and `beta`, or `None` for `affine = false`.
    pub affine: Option<Affine<&'a wgpu::Buffer>>,
    /// Running mean, `C` f32s.
    pub running_mean: &'a wgpu::Buffer,
    /// Running variance, `C` f32s.
    pub running_var: &'a wgpu::Buffer,
}

impl GpuContext {
    /// Records an inference forward pass with running statistics into `encoder`.
    ///
    /// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`, computed as
    /// `(x - running_mean) * k + beta` with `k` folded per channel.
    pub fn encode_forward_inference(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        eps: f32,
        b: &ForwardInferenceBuffers<'_>,
    ) -> Result<()> {
        check_eps(eps)?;
        check_tensor("x", b.x, shape)?;
        check_tensor("y", b.y, shape)?;
        check_distinct("y", b.y, "x", b.x)?;
        check_channels("running_mean", b.running_mean, shape)?;
        check_channels("running_var", b.running_var, shape)?;
        if let Some(a) = &b.affine {
            check_channels("gamma", a.gamma, shape)?;
            check_channels("beta", a.beta, shape)?;
        }
        self.check_alive()?;
        let plan = self.plan(shape)?;
        let uniforms = Uniforms::new(self, &plan, |g| {
            g.eps = eps;
            if b.affine.is_some() {
                g.flags |= FLAG_AFFINE;
            }
        });
        let params = self.scratch("wgpu-batchnorm params", plan.full.params_bytes());
        let channels = |index, buffer| channels_of(index, buffer, shape);
        let [gamma, beta] = self.affine_bindings(b.affine, shape);
        let bindings = [
            Binding::whole(0, &uniforms.full),
            gamma,
            beta,
            Binding::whole(6, &params),
            channels(7, b.running_mean),
            channels(8, b.running_var),
        ];
        self.dispatch(encoder, Kernel::PrepareInference, Variant::EPILOGUE, plan.full.epilogue_grid, &bindings);
        self.encode_apply(encoder, &plan, &uniforms, b.x, &params, b.y);
        Ok(())
    }

    /// Inference forward on host arrays with running statistics: `affine`
    /// must be given as `options.affine` says, and `options.track_running_stats`
    /// must be true (without running statistics, eval normalizes with the
    /// batch's: [`GpuContext::forward_train`] with no running statistics).
    pub async fn forward_inference(
        &self,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<ArrayD<f32>> {
        options.validate()?;
        options.check_affine(affine.is_some())?;
        options.check_running(true)?;
        let _serial = self.serialize().await;
        let (shape, data) = contiguous(x, layout)?;
        if let Some(a) = &affine {
            shape.check_channel_len("gamma", a.gamma.len())?;
            shape.check_channel_len("beta", a.beta.len())?;
        }
        shape.check_channel_len("running_mean", running.mean.len())?;
        shape.check_channel_len("running_var", running.var.len())?;
        self.plan(&shape)?;
        self.check_alive()?;
        let xb = self.upload("x", &data);
        let y = self.storage("y", shape.numel());
        let affine_buffers = affine.map(|a| Affine { gamma: self.upload("gamma", a.gamma), beta: self.upload("beta", a.beta) });
        let (mean, var) = (self.upload("running_mean", &running.mean), self.upload("running_var", &running.var));
        let buffers = ForwardInferenceBuffers {
            x: &xb,
            y: &y,
            affine: affine_buffers.as_ref().map(|a| Affine { gamma: &a.gamma, beta: &a.beta }),
            running_mean: &mean,
            running_var: &var,
        };
        self.run(|encoder| self.encode_forward_inference(encoder, &shape, options.eps, &buffers)).await?;
        let y = self.download_serialized(&[(&y, shape.numel())]).await?.pop().unwrap_or_default();
        ArrayD::from_shape_vec(shape.dims(), y).map_err(|e| crate::Error::Readback(e.to_string()))
    }

    /// Blocking [`GpuContext::forward_inference`].
    pub fn forward_inference_blocking(
        &self,
        x: &ndarray::ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<ArrayD<f32>> {
        pollster::block_on(self.forward_inference(x, layout, affine, running, options))
    }
}
