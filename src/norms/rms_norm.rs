//! RMS normalization (PyTorch's `RMSNorm`): `y = x / sqrt(mean(x^2) + eps) * gamma`
//! per row over the trailing `normalized_shape` dims, `gamma` elementwise over
//! them; no mean, no `beta`. The layer norm engine with centering off
//! (`FLAG_RMS`): the kernels save `rstd` only.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::layer_norm::trailing_view;
use crate::context::GpuContext;
use crate::error::Result;
use crate::options::{Element, Options};

/// An RMS norm layer, as PyTorch's `RMSNorm(normalized_shape)`: `gamma` on the GPU.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, Norm, RmsNorm};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let options = Norm::Rms { dims: vec![4096], normalized_shape: vec![4096] }.default_options();
/// let mut norm = RmsNorm::new(ctx, &[4096], options)?;
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
    options: Options,
}

impl RmsNorm {
    /// A layer over the trailing `normalized_shape` dims with `gamma = 1`
    /// where `options.affine`; `options` as [`Norm::default_options`](crate::Norm::default_options)'s (no
    /// running statistics, no epilogue).
    pub fn new(ctx: Arc<GpuContext>, normalized_shape: &[usize], options: Options) -> Result<Self> {
        let view = trailing_view(normalized_shape, normalized_shape, true)?;
        super::check_family_options(&options, false)?;
        let layer =
            NormLayer::new(ctx, ("rms_norm", "rms_norm_backward"), view.params, (options.eps, options.dtype), options.affine, true)?;
        Ok(Self { layer, normalized_shape: normalized_shape.to_vec(), options })
    }

    /// The layer's options.
    pub fn options(&self) -> &Options {
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
    #[cfg(not(target_arch = "wasm32"))]
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
