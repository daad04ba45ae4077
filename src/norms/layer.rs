//! The layers of the family ([`GroupNorm`](crate::GroupNorm),
//! [`InstanceNorm`](crate::InstanceNorm), [`LayerNorm`](crate::LayerNorm),
//! [`RmsNorm`](crate::RmsNorm)): each a thin wrapper over [`NormLayer`], which
//! holds the affine parameters, their gradients and the last forward's saved
//! statistics on the GPU.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::{NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers, RowView};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::norms::batch_norm::backward::{BackwardBuffers, ParamGradBuffers};
use crate::norms::batch_norm::forward_train::RunningBuffers;
use crate::ops::{all, from_words, host_data, Affine, BackwardStats, Gradients, NormStats};
use crate::options::{check_element, check_eps, Dtype, Element, Momentum, Options};
use crate::shape::Shape;

/// What the last forward pass saved for the backward.
#[derive(Debug)]
struct Saved {
    view: RowView,
    dims: Vec<usize>,
    mean: Option<wgpu::Buffer>,
    rstd: wgpu::Buffer,
    /// `x` of a forward on host arrays (the encoded path leaves it to the caller).
    x: Option<wgpu::Buffer>,
}

/// A forward that normalized at running statistics (instance norm's eval
/// mode): batch norm's inference over `shape`, whose backward is batch norm's
/// at those statistics.
#[derive(Debug)]
pub(crate) struct AtRunning {
    pub shape: Shape,
    /// Batch norm's options for the op (`eps`, `affine`, `dtype`).
    pub options: Options,
    pub mean: wgpu::Buffer,
    pub var: wgpu::Buffer,
    /// `x` of a forward on host arrays (the encoded path leaves it to the caller).
    pub x: Option<wgpu::Buffer>,
}

/// Instance norm's running statistics on the GPU, for a forward that updates them.
pub(crate) struct Running<'a> {
    pub mean: &'a wgpu::Buffer,
    pub var: &'a wgpu::Buffer,
    pub num_batches_tracked: u64,
    pub momentum: Momentum,
}

/// The state every layer of the family shares.
#[derive(Debug)]
pub(crate) struct NormLayer {
    ctx: Arc<GpuContext>,
    /// The prepared ops' names in the context's cache: forward, backward.
    ops: (&'static str, &'static str),
    params: usize,
    eps: f32,
    rms: bool,
    /// The element type of the tensors.
    dtype: Dtype,
    pub gamma: Option<wgpu::Buffer>,
    pub beta: Option<wgpu::Buffer>,
    pub grads: Option<(wgpu::Buffer, Option<wgpu::Buffer>)>,
    saved: Option<Saved>,
    at_running: Option<AtRunning>,
    /// Training mode (the default) or eval mode; only instance norm with
    /// running statistics computes differently in them.
    pub training: bool,
}

impl NormLayer {
    /// `gamma = 1` and `beta = 0` (no `beta` for RMS norm) where `affine`;
    /// `(eps, dtype)` the options'.
    pub fn new(
        ctx: Arc<GpuContext>,
        ops: (&'static str, &'static str),
        params: usize,
        (eps, dtype): (f32, Dtype),
        affine: bool,
        rms: bool,
    ) -> Result<Self> {
        check_eps(eps)?;
        if params == 0 {
            return Err(Error::EmptyTensor { dims: vec![0] });
        }
        let gamma = affine.then(|| ctx.upload("gamma", &vec![1.0; params])).transpose()?;
        let beta = (affine && !rms).then(|| ctx.upload("beta", &vec![0.0; params])).transpose()?;
        let grads = match affine {
            true => Some((ctx.storage("dgamma", params)?, (!rms).then(|| ctx.storage("dbeta", params)).transpose()?)),
            false => None,
        };
        Ok(Self { ctx, ops, params, eps, rms, dtype, gamma, beta, grads, saved: None, at_running: None, training: true })
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Affine parameters (channels, or positions of `normalized_shape`).
    pub fn params(&self) -> usize {
        self.params
    }

    /// The saved-statistics buffers for `view`: `previous`'s where the rows
    /// are as many, else new. A forward takes them out of the layer first and
    /// puts them back once it succeeded, so that a backward never pairs a
    /// forward's shape with another's statistics.
    fn saved_for(&self, previous: Option<Saved>, view: RowView, dims: &[usize]) -> Result<Saved> {
        let saved = match previous {
            Some(s) if s.view.rows() == view.rows() => Saved { view, dims: dims.to_vec(), x: None, ..s },
            _ => {
                let rows = view.rows();
                Saved {
                    view,
                    dims: dims.to_vec(),
                    mean: (!self.rms).then(|| self.ctx.storage("mean", rows)).transpose()?,
                    rstd: self.ctx.storage("rstd", rows)?,
                    x: None,
                }
            }
        };
        Ok(saved)
    }

    fn forward_buffers<'a>(
        &'a self,
        saved: &'a Saved,
        x: wgpu::BufferSlice<'a>,
        y: wgpu::BufferSlice<'a>,
        running: Option<&Running<'a>>,
    ) -> NormForwardBuffers<'a> {
        NormForwardBuffers {
            x,
            y,
            stats: NormStats { mean: saved.mean.as_ref().map(all), rstd: all(&saved.rstd) },
            gamma: self.gamma.as_ref().map(all),
            beta: self.beta.as_ref().map(all),
            running: running.map(|r| RunningBuffers { mean: all(r.mean), var: all(r.var), num_batches_tracked: r.num_batches_tracked }),
            residual: None,
            workspace: None,
        }
    }

    /// Records the forward over the caller's slices; the backward then takes `x` from the caller.
    pub fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        view: RowView,
        dims: &[usize],
        x: wgpu::BufferSlice<'_>,
        y: wgpu::BufferSlice<'_>,
        running: Option<&Running<'_>>,
    ) -> Result<()> {
        let view = view.typed(self.dtype);
        let previous = self.saved.take();
        self.at_running = None;
        let op = self.ctx.norm_forward_op(self.ops.0, view, self.eps, self.gamma.is_some(), running.map(|r| r.momentum), true)?;
        let saved = self.saved_for(previous, view, dims)?;
        op.record(encoder, &self.forward_buffers(&saved, x, y, running))?;
        self.saved = Some(saved);
        Ok(())
    }

    /// The forward on host arrays, keeping `x` on the GPU for the backward.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, view: RowView, running: Option<&Running<'_>>) -> Result<ArrayD<E>> {
        check_element::<E>(self.dtype)?;
        let view = view.typed(self.dtype);
        let ctx = self.ctx.clone();
        let _serial = ctx.serialize().await;
        let previous = self.saved.take();
        self.at_running = None;
        // Planned (sizes checked) before the array is copied.
        let op = ctx.norm_forward_op(self.ops.0, view, self.eps, self.gamma.is_some(), running.map(|r| r.momentum), true)?;
        let xb = ctx.upload_tensor("x", &host_data(x))?;
        let y = ctx.tensor_storage("y", self.dtype, view.numel())?;
        let mut saved = self.saved_for(previous, view, x.shape())?;
        let buffers = self.forward_buffers(&saved, all(&xb), all(&y), running);
        ctx.run(|encoder| op.record(encoder, &buffers)).await?;
        let mut out = ctx.download_serialized(&[(&y, self.dtype.tensor_words(view.numel()))]).await?;
        saved.x = Some(xb);
        self.saved = Some(saved);
        from_words(out.remove(0), x.shape())
    }

    fn last(&self) -> Result<&Saved> {
        self.saved.as_ref().ok_or_else(|| Error::InvalidState("no forward with the input's own statistics to differentiate".into()))
    }

    /// Records that the last forward normalized at running statistics, or
    /// (`None`) that it is under way or failed: nothing to differentiate yet.
    pub fn set_at_running(&mut self, at: Option<AtRunning>) {
        self.saved = None;
        self.at_running = at;
    }

    /// Batch norm's backward buffers at the running statistics of `at`.
    fn at_running_buffers<'a>(
        &'a self,
        at: &'a AtRunning,
        dy: wgpu::BufferSlice<'a>,
        x: wgpu::BufferSlice<'a>,
        dx: wgpu::BufferSlice<'a>,
    ) -> BackwardBuffers<'a> {
        let param_grads = self.grads.as_ref().and_then(|(g, b)| b.as_ref().map(|b| ParamGradBuffers { dgamma: all(g), dbeta: all(b) }));
        BackwardBuffers {
            dy,
            x,
            dx,
            stats: BackwardStats::Running { mean: all(&at.mean), var: all(&at.var) },
            gamma: self.gamma.as_ref().map(all),
            param_grads,
            z: None,
            dresidual: None,
            workspace: None,
        }
    }

    fn backward_buffers<'a>(
        &'a self,
        dy: wgpu::BufferSlice<'a>,
        x: wgpu::BufferSlice<'a>,
        dx: wgpu::BufferSlice<'a>,
    ) -> Result<NormBackwardBuffers<'a>> {
        let saved = self.last()?;
        Ok(NormBackwardBuffers {
            dy,
            x,
            dx,
            stats: BackwardStats::Saved(NormStats { mean: saved.mean.as_ref().map(all), rstd: all(&saved.rstd) }),
            gamma: self.gamma.as_ref().map(all),
            param_grads: self.grads.as_ref().map(|(g, b)| NormParamGradBuffers { dgamma: all(g), dbeta: b.as_ref().map(all) }),
            z: None,
            dresidual: None,
            workspace: None,
        })
    }

    /// Records the backward of the last forward over the caller's slices;
    /// `dgamma` and `dbeta` land in [`NormLayer::grads`].
    pub fn encode_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dy: wgpu::BufferSlice<'_>,
        x: wgpu::BufferSlice<'_>,
        dx: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        if let Some(at) = &self.at_running {
            return self.ctx.encode_backward(encoder, &at.shape, &at.options, &self.at_running_buffers(at, dy, x, dx));
        }
        let view = self.last()?.view;
        let op = self.ctx.norm_backward_op(self.ops.1, view, self.eps, self.gamma.is_some(), self.grads.is_some(), true)?;
        op.record(encoder, &self.backward_buffers(dy, x, dx)?)
    }

    /// The backward of the last forward on host arrays.
    pub async fn backward<E: Element>(&self, dy: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        check_element::<E>(self.dtype)?;
        if let Some(at) = &self.at_running {
            return self.backward_at_running(at, dy).await;
        }
        let saved = self.last()?;
        let xb =
            saved.x.as_ref().ok_or_else(|| Error::InvalidState("the last forward was encoded: use encode_backward with its x".into()))?;
        if dy.shape() != saved.dims.as_slice() {
            return Err(Error::ShapeMismatch { what: "dy", expected: format!("{:?}", saved.dims), got: format!("{:?}", dy.shape()) });
        }
        let ctx = &self.ctx;
        let _serial = ctx.serialize().await;
        let op = ctx.norm_backward_op(self.ops.1, saved.view, self.eps, self.gamma.is_some(), self.grads.is_some(), true)?;
        let dyb = ctx.upload_tensor("dy", &host_data(dy))?;
        let dx = ctx.tensor_storage("dx", self.dtype, saved.view.numel())?;
        let buffers = self.backward_buffers(all(&dyb), all(xb), all(&dx))?;
        ctx.run(|encoder| op.record(encoder, &buffers)).await?;
        let mut reads = vec![(&dx, self.dtype.tensor_words(saved.view.numel()))];
        if let Some((g, b)) = &self.grads {
            reads.push((g, self.params));
            if let Some(b) = b {
                reads.push((b, self.params));
            }
        }
        let mut out = ctx.download_serialized(&reads).await?.into_iter();
        let dx = from_words(out.next().unwrap_or_default(), dy.shape())?;
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next(), dresidual: None })
    }

    async fn backward_at_running<E: Element>(&self, at: &AtRunning, dy: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        let xb = at.x.as_ref().ok_or_else(|| Error::InvalidState("the last forward was encoded: use encode_backward with its x".into()))?;
        at.shape.check_same_dims("dy", dy.shape())?;
        let ctx = &self.ctx;
        let _serial = ctx.serialize().await;
        let numel = at.shape.numel();
        let dyb = ctx.upload_tensor("dy", &host_data(dy))?;
        let dx = ctx.tensor_storage("dx", self.dtype, numel)?;
        let buffers = self.at_running_buffers(at, all(&dyb), all(xb), all(&dx));
        ctx.run(|encoder| ctx.encode_backward(encoder, &at.shape, &at.options, &buffers)).await?;
        let mut reads = vec![(&dx, self.dtype.tensor_words(numel))];
        if let Some((g, Some(b))) = &self.grads {
            reads.extend([(g, self.params), (b, self.params)]);
        }
        let mut out = ctx.download_serialized(&reads).await?.into_iter();
        let dx = from_words(out.next().unwrap_or_default(), dy.shape())?;
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next(), dresidual: None })
    }

    /// `mean` (absent for RMS norm) and `rstd` of the last forward, read back.
    pub async fn saved_stats(&self) -> Result<Option<NormStats<Vec<f32>>>> {
        let Some(saved) = &self.saved else { return Ok(None) };
        let rows = saved.view.rows();
        let mut reads = vec![(&saved.rstd, rows)];
        if let Some(m) = &saved.mean {
            reads.push((m, rows));
        }
        let mut out = self.ctx.download(&reads).await?.into_iter();
        let rstd = out.next().unwrap_or_default();
        Ok(Some(NormStats { mean: out.next(), rstd }))
    }

    /// `gamma` and `beta` (`None` without affine parameters), read back.
    pub async fn affine(&self) -> Result<Option<Affine<Vec<f32>>>> {
        let Some(gamma) = &self.gamma else { return Ok(None) };
        let reads: Vec<(&wgpu::Buffer, usize)> = [gamma].into_iter().chain(&self.beta).map(|b| (b, self.params)).collect();
        let mut out = self.ctx.download(&reads).await?.into_iter();
        Ok(Some(Affine { gamma: out.next().unwrap_or_default(), beta: out.next() }))
    }

    /// Replaces `gamma` and `beta` (`beta` exactly where the layer has one).
    pub fn set_affine(&self, affine: Affine<&[f32]>) -> Result<()> {
        let (gamma, beta) = (affine.gamma, affine.beta);
        let Some(g) = &self.gamma else {
            return Err(Error::InvalidState("set_affine on a layer without affine parameters".into()));
        };
        if beta.is_some() != self.beta.is_some() {
            return Err(Error::OptionsMismatch { what: "beta", reason: format!("the layer has beta: {}", self.beta.is_some()) });
        }
        super::check_len("gamma", gamma.len(), self.params, "one per affine parameter")?;
        if let Some(values) = beta {
            super::check_len("beta", values.len(), self.params, "one per affine parameter")?;
        }
        self.ctx.write(g, gamma)?;
        if let (Some(b), Some(values)) = (&self.beta, beta) {
            self.ctx.write(b, values)?;
        }
        Ok(())
    }
}

/// The methods every layer of the family has, over its `layer: NormLayer` field.
macro_rules! norm_layer_methods {
    ($ty:ident) => {
        impl $ty {
            /// Training mode: the input's own statistics (instance norm's
            /// running statistics, where tracked, are updated).
            pub fn train(&mut self) {
                self.layer.training = true;
            }

            /// Eval mode: instance norm's running statistics where tracked;
            /// the other ops of the family compute the same in both modes.
            pub fn eval(&mut self) {
                self.layer.training = false;
            }

            /// Whether the layer is in training mode.
            pub fn is_training(&self) -> bool {
                self.layer.training
            }

            /// The backward of the last forward on host arrays: `dx`, and
            /// `dgamma` (and `dbeta`) where the layer has affine parameters,
            /// also left in [`param_grad_buffers`](Self::param_grad_buffers).
            pub async fn backward<E: crate::Element>(&self, dy: &ndarray::ArrayViewD<'_, E>) -> crate::Result<crate::Gradients<E>> {
                self.layer.backward(dy).await
            }

            /// Blocking [`backward`](Self::backward).
            #[cfg(not(target_arch = "wasm32"))]
            pub fn backward_blocking<E: crate::Element>(&self, dy: &ndarray::ArrayViewD<'_, E>) -> crate::Result<crate::Gradients<E>> {
                pollster::block_on(self.backward(dy))
            }

            /// Records the backward of the last forward over the caller's
            /// slices (`x` the forward's input); `dgamma` and `dbeta` land in
            /// [`param_grad_buffers`](Self::param_grad_buffers).
            pub fn encode_backward(
                &self,
                encoder: &mut wgpu::CommandEncoder,
                dy: wgpu::BufferSlice<'_>,
                x: wgpu::BufferSlice<'_>,
                dx: wgpu::BufferSlice<'_>,
            ) -> crate::Result<()> {
                self.layer.encode_backward(encoder, dy, x, dx)
            }

            /// The last forward's saved `mean` (none for RMS norm) and
            /// `rstd`, read back; `None` before any forward.
            pub async fn saved_stats(&self) -> crate::Result<Option<crate::NormStats<Vec<f32>>>> {
                self.layer.saved_stats().await
            }

            /// Blocking [`saved_stats`](Self::saved_stats).
            #[cfg(not(target_arch = "wasm32"))]
            pub fn saved_stats_blocking(&self) -> crate::Result<Option<crate::NormStats<Vec<f32>>>> {
                pollster::block_on(self.saved_stats())
            }

            /// `dgamma` and `dbeta` (none for RMS norm) that the backward
            /// writes; `None` without affine parameters.
            pub fn param_grad_buffers(&self) -> Option<crate::Affine<&wgpu::Buffer>> {
                self.layer.grads.as_ref().map(|(g, b)| crate::Affine { gamma: g, beta: b.as_ref() })
            }

            /// `gamma` and `beta` (none for RMS norm) on the GPU, for the
            /// low-level API; `None` without affine parameters.
            pub fn affine_buffers(&self) -> Option<crate::Affine<&wgpu::Buffer>> {
                self.layer.gamma.as_ref().map(|g| crate::Affine { gamma: g, beta: self.layer.beta.as_ref() })
            }

            /// `gamma` and `beta` (none for RMS norm), read back; `None`
            /// without affine parameters.
            pub async fn affine(&self) -> crate::Result<Option<crate::Affine<Vec<f32>>>> {
                self.layer.affine().await
            }

            /// Blocking [`affine`](Self::affine).
            #[cfg(not(target_arch = "wasm32"))]
            pub fn affine_blocking(&self) -> crate::Result<Option<crate::Affine<Vec<f32>>>> {
                pollster::block_on(self.affine())
            }

            /// Replaces `gamma` and `beta` (`beta` exactly where the layer has one).
            pub fn set_affine(&mut self, affine: crate::Affine<&[f32]>) -> crate::Result<()> {
                self.layer.set_affine(affine)
            }
        }
    };
}
pub(crate) use norm_layer_methods;
