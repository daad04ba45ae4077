//! RMS normalization (PyTorch's `RMSNorm`): `y = x / sqrt(mean(x^2) + eps) * gamma`
//! per row over the trailing `normalized_shape` dims, `gamma` elementwise over
//! them; no mean, no `beta`. The layer norm engine with centering off
//! (`FLAG_RMS`): the kernels save `rstd` only.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::layer_norm::trailing_view;
use super::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward};
use crate::context::GpuContext;
use crate::error::Result;
use crate::ops::Gradients;
use crate::options::{check_present, Dtype, Element};

/// The options of an RMS norm call or layer, with PyTorch's defaults (`eps`
/// `None` there means the dtype's machine epsilon: `f32::EPSILON`).
///
/// ```
/// let o = wgpu_batchnorm::RmsNormOptions::default();
/// assert!(o.elementwise_affine && o.eps == f32::EPSILON);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormOptions {
    /// Added to the mean of squares before the square root; finite and `>= 0`.
    pub eps: f32,
    /// `gamma`, one value per position of `normalized_shape`.
    pub elementwise_affine: bool,
    /// The element type of `x`, `y`, `dy` and `dx`: of the slices, or of the
    /// `ndarray` calls' and the layer's arrays ([`Element`](crate::Element)).
    pub dtype: Dtype,
}

impl Default for RmsNormOptions {
    fn default() -> Self {
        Self { eps: f32::EPSILON, elementwise_affine: true, dtype: Dtype::F32 }
    }
}

impl GpuContext {
    /// Plans an RMS norm forward for a tensor of `dims` ([`PreparedNorm`]):
    /// `rstd` holds one value per row (no `mean`, no `beta`).
    pub fn prepare_rms_norm(&self, dims: &[usize], normalized_shape: &[usize], options: &RmsNormOptions) -> Result<PreparedNorm> {
        let view = trailing_view(dims, normalized_shape, true)?.typed(options.dtype);
        self.norm_forward_op("rms_norm", view, options.eps, options.elementwise_affine, None, false)
    }

    /// Plans an RMS norm backward, writing `dgamma` where `param_grads`.
    pub fn prepare_rms_norm_backward(
        &self,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &RmsNormOptions,
        param_grads: bool,
    ) -> Result<PreparedNormBackward> {
        let view = trailing_view(dims, normalized_shape, true)?.typed(options.dtype);
        self.norm_backward_op("rms_norm_backward", view, options.eps, options.elementwise_affine, param_grads, false)
    }

    /// Records an RMS norm forward into `encoder` over the caller's slices.
    pub fn encode_rms_norm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &RmsNormOptions,
        b: &NormForwardBuffers<'_>,
    ) -> Result<()> {
        let view = trailing_view(dims, normalized_shape, true)?.typed(options.dtype);
        self.norm_forward_op("rms_norm", view, options.eps, options.elementwise_affine, None, true)?.record(encoder, b)
    }

    /// Records an RMS norm backward into `encoder` over the caller's slices.
    pub fn encode_rms_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &RmsNormOptions,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        let view = trailing_view(dims, normalized_shape, true)?.typed(options.dtype);
        let op =
            self.norm_backward_op("rms_norm_backward", view, options.eps, options.elementwise_affine, b.param_grads.is_some(), true)?;
        op.record(encoder, b)
    }

    /// RMS norm on host arrays: `y` and the per-row `rstd` (`mean` is `None`).
    /// `gamma` exactly when `options.elementwise_affine`.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{GpuContext, RmsNormOptions};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![8, 4096], |i| (i[1] % 5) as f32 - 2.0);
    /// let gamma = vec![1.0; 4096];
    /// let out = ctx.rms_norm_blocking(&x.view(), &[4096], Some(&gamma), &RmsNormOptions::default())?;
    /// assert!(out.mean.is_none());
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn rms_norm<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        gamma: Option<&[f32]>,
        options: &RmsNormOptions,
    ) -> Result<NormOutput<E>> {
        check_present("gamma", "elementwise_affine", options.elementwise_affine, gamma.is_some())?;
        let view = trailing_view(x.shape(), normalized_shape, true)?.typed(options.dtype);
        self.norm_forward_host("rms_norm", x, view, options.eps, gamma, None, None).await
    }

    /// Blocking [`GpuContext::rms_norm`].
    pub fn rms_norm_blocking<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        gamma: Option<&[f32]>,
        options: &RmsNormOptions,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.rms_norm(x, normalized_shape, gamma, options))
    }

    /// RMS norm's backward on host arrays, at the forward's
    /// [`NormOutput::stats`]: `dx`, and `dgamma` exactly when
    /// `options.elementwise_affine` (`dbeta` is `None`).
    pub async fn rms_norm_backward<E: Element>(
        &self,
        dy: &ArrayViewD<'_, E>,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &RmsNormOptions,
    ) -> Result<Gradients<E>> {
        check_present("gamma", "elementwise_affine", options.elementwise_affine, gamma.is_some())?;
        let view = trailing_view(x.shape(), normalized_shape, true)?.typed(options.dtype);
        self.norm_backward_host("rms_norm_backward", dy, x, view, options.eps, stats, gamma).await
    }

    /// Blocking [`GpuContext::rms_norm_backward`].
    pub fn rms_norm_backward_blocking<E: Element>(
        &self,
        dy: &ArrayViewD<'_, E>,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &RmsNormOptions,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.rms_norm_backward(dy, x, normalized_shape, stats, gamma, options))
    }
}

/// An RMS norm layer, as PyTorch's `RMSNorm(normalized_shape)`: `gamma` on the GPU.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, RmsNorm, RmsNormOptions};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let mut norm = RmsNorm::new(ctx, &[4096], RmsNormOptions::default())?;
/// let x = ArrayD::from_shape_fn(vec![8, 4096], |i| (i[1] % 9) as f32 - 4.0);
/// let y = norm.forward_blocking(&x.view())?;
/// let grads = norm.backward_blocking(&y.view())?;
/// assert!(grads.dbeta.is_none());
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct RmsNorm {
    layer: NormLayer,
    normalized_shape: Vec<usize>,
    options: RmsNormOptions,
}

impl RmsNorm {
    /// A layer over the trailing `normalized_shape` dims with `gamma = 1`.
    pub fn new(ctx: Arc<GpuContext>, normalized_shape: &[usize], options: RmsNormOptions) -> Result<Self> {
        let view = trailing_view(normalized_shape, normalized_shape, true)?;
        let layer = NormLayer::new(
            ctx,
            ("rms_norm", "rms_norm_backward"),
            view.params,
            (options.eps, options.dtype),
            options.elementwise_affine,
            true,
        )?;
        Ok(Self { layer, normalized_shape: normalized_shape.to_vec(), options })
    }

    /// The layer's options.
    pub fn options(&self) -> &RmsNormOptions {
        &self.options
    }

    /// The trailing dims it normalizes over.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    /// The forward on host arrays; keeps `x` on the GPU for the backward.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>) -> Result<ArrayD<E>> {
        let view = trailing_view(x.shape(), &self.normalized_shape, true)?;
        self.layer.forward(x, view, None).await
    }

    /// Blocking [`RmsNorm::forward`].
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x))
    }

    /// Records the forward over the caller's slices of a tensor of `dims`.
    pub fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        dims: &[usize],
        x: wgpu::BufferSlice<'_>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        let view = trailing_view(dims, &self.normalized_shape, true)?;
        self.layer.encode_forward(encoder, view, dims, x, y, None)
    }
}

norm_layer_methods!(RmsNorm);
