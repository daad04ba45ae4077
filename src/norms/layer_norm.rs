//! Layer normalization (PyTorch's `LayerNorm`): statistics per row over the
//! trailing `normalized_shape` dims, `gamma` and `beta` elementwise over them.
//! Channels-last layer norm (over `C` of an NHWC tensor, ConvNeXt's) is
//! `normalized_shape = [C]`. Rows of `D` values: `B = 1, O = 1, K = rows, L = D`.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward, RowView};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{Affine, Gradients};
use crate::options::{check_present, Dtype, Element, DEFAULT_EPS};

/// The options of a layer norm call or layer, with PyTorch's defaults.
///
/// ```
/// let o = wgpu_batchnorm::LayerNormOptions::default();
/// assert!(o.elementwise_affine && o.eps == 1e-5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormOptions {
    /// Added to the variance before the square root; finite and `>= 0`.
    pub eps: f32,
    /// `gamma` and `beta`, one value per position of `normalized_shape`.
    pub elementwise_affine: bool,
    /// The element type of `x`, `y`, `dy` and `dx`: of the slices, or of the
    /// `ndarray` calls' and the layer's arrays ([`Element`](crate::Element)).
    pub dtype: Dtype,
}

impl Default for LayerNormOptions {
    fn default() -> Self {
        Self { eps: DEFAULT_EPS, elementwise_affine: true, dtype: Dtype::F32 }
    }
}

/// The row view of statistics over the trailing `normalized_shape` of `dims`:
/// `normalized_shape` must be a non-empty suffix of `dims`.
pub(crate) fn trailing_view(dims: &[usize], normalized_shape: &[usize], rms: bool) -> Result<RowView> {
    // The shape check first: an empty normalized_shape is the caller's
    // mistake about normalized_shape, whatever dims are.
    if normalized_shape.is_empty() || !dims.ends_with(normalized_shape) {
        return Err(Error::ShapeMismatch {
            what: "normalized_shape",
            expected: format!("a non-empty suffix of the input's shape {dims:?}"),
            got: format!("{normalized_shape:?}"),
        });
    }
    if dims.contains(&0) {
        return Err(Error::EmptyTensor { dims: dims.to_vec() });
    }
    let too_large = || Error::TooManyElements { dims: dims.to_vec() };
    let product = |d: &[usize]| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(too_large);
    let d = product(normalized_shape)?;
    let rows = product(&dims[..dims.len() - normalized_shape.len()])?;
    // Byte counts (numel * 4) must fit too.
    rows.checked_mul(d).and_then(|n| n.checked_mul(4)).ok_or_else(too_large)?;
    Ok(RowView::trailing(rows, d, rms))
}

impl GpuContext {
    /// Plans a layer norm forward for a tensor of `dims` ([`PreparedNorm`]):
    /// `mean` and `rstd` hold one value per row, `gamma` and `beta` the
    /// product of `normalized_shape`.
    pub fn prepare_layer_norm(&self, dims: &[usize], normalized_shape: &[usize], options: &LayerNormOptions) -> Result<PreparedNorm> {
        let view = trailing_view(dims, normalized_shape, false)?.typed(options.dtype);
        self.norm_forward_op("layer_norm", view, options.eps, options.elementwise_affine, None, false)
    }

    /// Plans a layer norm backward, writing `dgamma` and `dbeta` where `param_grads`.
    pub fn prepare_layer_norm_backward(
        &self,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &LayerNormOptions,
        param_grads: bool,
    ) -> Result<PreparedNormBackward> {
        let view = trailing_view(dims, normalized_shape, false)?.typed(options.dtype);
        self.norm_backward_op("layer_norm_backward", view, options.eps, options.elementwise_affine, param_grads, false)
    }

    /// Records a layer norm forward into `encoder` over the caller's slices.
    pub fn encode_layer_norm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &LayerNormOptions,
        b: &NormForwardBuffers<'_>,
    ) -> Result<()> {
        let view = trailing_view(dims, normalized_shape, false)?.typed(options.dtype);
        self.norm_forward_op("layer_norm", view, options.eps, options.elementwise_affine, None, true)?.record(encoder, b)
    }

    /// Records a layer norm backward into `encoder` over the caller's slices.
    pub fn encode_layer_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dims: &[usize],
        normalized_shape: &[usize],
        options: &LayerNormOptions,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        let view = trailing_view(dims, normalized_shape, false)?.typed(options.dtype);
        let op =
            self.norm_backward_op("layer_norm_backward", view, options.eps, options.elementwise_affine, b.param_grads.is_some(), true)?;
        op.record(encoder, b)
    }

    /// Layer norm on host arrays: `y` and the per-row `mean` and `rstd`.
    /// `affine` exactly when `options.elementwise_affine`, each with the
    /// product of `normalized_shape` values in standard order.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{Affine, GpuContext, LayerNormOptions};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![4, 16, 768], |i| (i[2] % 7) as f32);
    /// let (gamma, beta) = (vec![1.0; 768], vec![0.0; 768]);
    /// let affine = Some(Affine { gamma: &gamma[..], beta: &beta[..] });
    /// let out = ctx.layer_norm_blocking(&x.view(), &[768], affine, &LayerNormOptions::default())?;
    /// assert_eq!(out.rstd.len(), 4 * 16);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn layer_norm<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        affine: Option<Affine<&[f32]>>,
        options: &LayerNormOptions,
    ) -> Result<NormOutput<E>> {
        check_present("gamma and beta", "elementwise_affine", options.elementwise_affine, affine.is_some())?;
        let view = trailing_view(x.shape(), normalized_shape, false)?.typed(options.dtype);
        self.norm_forward_host("layer_norm", x, view, options.eps, affine.map(|a| a.gamma), affine.map(|a| a.beta), None).await
    }

    /// Blocking [`GpuContext::layer_norm`].
    pub fn layer_norm_blocking<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        affine: Option<Affine<&[f32]>>,
        options: &LayerNormOptions,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.layer_norm(x, normalized_shape, affine, options))
    }

    /// Layer norm's backward on host arrays, at the forward's
    /// [`NormOutput::stats`]; `dgamma` and `dbeta` exactly when
    /// `options.elementwise_affine` (then `gamma` is given).
    pub async fn layer_norm_backward<E: Element>(
        &self,
        dy: &ArrayViewD<'_, E>,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &LayerNormOptions,
    ) -> Result<Gradients<E>> {
        check_present("gamma", "elementwise_affine", options.elementwise_affine, gamma.is_some())?;
        let view = trailing_view(x.shape(), normalized_shape, false)?.typed(options.dtype);
        self.norm_backward_host("layer_norm_backward", dy, x, view, options.eps, stats, gamma).await
    }

    /// Blocking [`GpuContext::layer_norm_backward`].
    pub fn layer_norm_backward_blocking<E: Element>(
        &self,
        dy: &ArrayViewD<'_, E>,
        x: &ArrayViewD<'_, E>,
        normalized_shape: &[usize],
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &LayerNormOptions,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.layer_norm_backward(dy, x, normalized_shape, stats, gamma, options))
    }
}

/// A layer norm layer, as PyTorch's `LayerNorm(normalized_shape)`: `gamma` and `beta` on the GPU.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, LayerNorm, LayerNormOptions};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let mut ln = LayerNorm::new(ctx, &[768], LayerNormOptions::default())?;
/// let x = ArrayD::from_shape_fn(vec![4, 128, 768], |i| (i[2] % 13) as f32);
/// let y = ln.forward_blocking(&x.view())?;
/// let grads = ln.backward_blocking(&y.view())?;
/// assert_eq!(grads.dgamma.map(|g| g.len()), Some(768));
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct LayerNorm {
    layer: NormLayer,
    normalized_shape: Vec<usize>,
    options: LayerNormOptions,
}

impl LayerNorm {
    /// A layer over the trailing `normalized_shape` dims with `gamma = 1`, `beta = 0`.
    pub fn new(ctx: Arc<GpuContext>, normalized_shape: &[usize], options: LayerNormOptions) -> Result<Self> {
        let view = trailing_view(normalized_shape, normalized_shape, false)?;
        let layer = NormLayer::new(
            ctx,
            ("layer_norm", "layer_norm_backward"),
            view.params,
            (options.eps, options.dtype),
            options.elementwise_affine,
            false,
        )?;
        Ok(Self { layer, normalized_shape: normalized_shape.to_vec(), options })
    }

    /// The layer's options.
    pub fn options(&self) -> &LayerNormOptions {
        &self.options
    }

    /// The trailing dims it normalizes over.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    /// The forward on host arrays; keeps `x` on the GPU for the backward.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>) -> Result<ArrayD<E>> {
        let view = trailing_view(x.shape(), &self.normalized_shape, false)?;
        self.layer.forward(x, view, None).await
    }

    /// Blocking [`LayerNorm::forward`].
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
        let view = trailing_view(dims, &self.normalized_shape, false)?;
        self.layer.encode_forward(encoder, view, dims, x, y, None)
    }
}

norm_layer_methods!(LayerNorm);
