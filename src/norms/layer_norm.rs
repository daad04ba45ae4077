//! Layer normalization (PyTorch's `LayerNorm`): statistics per row over the
//! trailing `normalized_shape` dims, `gamma` and `beta` elementwise over them.
//! Channels-last layer norm (over `C` of an NHWC tensor, ConvNeXt's) is
//! `normalized_shape = [C]`. Rows of `D` values: `B = 1, O = 1, K = rows, L = D`.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::RowView;
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::options::{Element, Options};

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

/// A layer norm layer, as PyTorch's `LayerNorm(normalized_shape)`: `gamma` and `beta` on the GPU.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, LayerNorm, Options};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let mut ln = LayerNorm::new(ctx, &[768], Options { track_running_stats: false, ..Options::default() })?;
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
    options: Options,
}

impl LayerNorm {
    /// A layer over the trailing `normalized_shape` dims with `gamma = 1`,
    /// `beta = 0`; `options` as [`Norm::default_options`](crate::Norm::default_options)'s (no running
    /// statistics, no epilogue).
    pub fn new(ctx: Arc<GpuContext>, normalized_shape: &[usize], options: Options) -> Result<Self> {
        let view = trailing_view(normalized_shape, normalized_shape, false)?;
        super::check_family_options(&options, false)?;
        let layer =
            NormLayer::new(ctx, ("layer_norm", "layer_norm_backward"), view.params, (options.eps, options.dtype), options.affine, false)?;
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
        let view = trailing_view(x.shape(), &self.normalized_shape, false)?;
        self.layer.forward(x, view, None).await
    }

    /// Blocking [`LayerNorm::forward`].
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
        let view = trailing_view(dims, &self.normalized_shape, false)?;
        self.layer.encode_forward(encoder, view, dims, x, y, None)
    }
}

norm_layer_methods!(LayerNorm);
