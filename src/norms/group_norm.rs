//! Group normalization (PyTorch's `GroupNorm`): statistics per (sample,
//! group) over the group's `C / num_groups` channels and every position,
//! per-channel `gamma` and `beta`. Channels-first `[N, C, S]` is rows of
//! `(C / G) * S` contiguous values (`B = N, O = 1, K = G`); channels-last
//! `[N, S, C]` is `O = S` runs of `C / G` values per row.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormStats, PreparedNorm, PreparedNormBackward, RowView};
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::ops::{Affine, BackwardInputs, Gradients};
use crate::options::{check_present, Dtype, Element, DEFAULT_EPS};
use crate::shape::{Layout, Shape};

/// The options of a group norm call or layer, with PyTorch's defaults but `num_groups`.
///
/// ```
/// let o = wgpu_batchnorm::GroupNormOptions::new(32);
/// assert!(o.affine && o.eps == 1e-5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormOptions {
    /// `G`: must divide the channels ([`Error::InvalidGroups`] otherwise).
    pub num_groups: usize,
    /// Added to the variance before the square root; finite and `>= 0`.
    pub eps: f32,
    /// Per-channel `gamma` and `beta`.
    pub affine: bool,
    /// The element type of `x`, `y`, `dy` and `dx`: of the slices, or of the
    /// `ndarray` calls' and the layer's arrays ([`Element`](crate::Element)).
    pub dtype: Dtype,
}

impl GroupNormOptions {
    /// `num_groups` groups, `eps = 1e-5`, affine.
    pub fn new(num_groups: usize) -> Self {
        Self { num_groups, eps: DEFAULT_EPS, affine: true, dtype: Dtype::F32 }
    }
}

/// The row view of group norm over `num_groups` groups of `shape`.
pub(crate) fn group_view(shape: &Shape, num_groups: usize) -> Result<RowView> {
    if num_groups == 0 || !shape.channels().is_multiple_of(num_groups) {
        return Err(Error::InvalidGroups { channels: shape.channels(), groups: num_groups });
    }
    Ok(RowView::groups(shape, num_groups))
}

impl GpuContext {
    /// Plans a group norm forward for `shape` ([`PreparedNorm`]): `mean` and
    /// `rstd` hold `N * num_groups` values, `gamma` and `beta` `C`.
    pub fn prepare_group_norm(&self, shape: &Shape, options: &GroupNormOptions) -> Result<PreparedNorm> {
        self.norm_forward_op(
            "group_norm",
            group_view(shape, options.num_groups)?.typed(options.dtype),
            options.eps,
            options.affine,
            None,
            false,
        )
    }

    /// Plans a group norm backward, writing `dgamma` and `dbeta` where `param_grads`.
    pub fn prepare_group_norm_backward(
        &self,
        shape: &Shape,
        options: &GroupNormOptions,
        param_grads: bool,
    ) -> Result<PreparedNormBackward> {
        let view = group_view(shape, options.num_groups)?.typed(options.dtype);
        self.norm_backward_op("group_norm_backward", view, options.eps, options.affine, param_grads, false)
    }

    /// Records a group norm forward into `encoder` over the caller's slices,
    /// through a prepared op the context keeps.
    pub fn encode_group_norm(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &GroupNormOptions,
        b: &NormForwardBuffers<'_>,
    ) -> Result<()> {
        self.norm_forward_op(
            "group_norm",
            group_view(shape, options.num_groups)?.typed(options.dtype),
            options.eps,
            options.affine,
            None,
            true,
        )?
        .record(encoder, b)
    }

    /// Records a group norm backward into `encoder` over the caller's slices.
    pub fn encode_group_norm_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &GroupNormOptions,
        b: &NormBackwardBuffers<'_>,
    ) -> Result<()> {
        let view = group_view(shape, options.num_groups)?.typed(options.dtype);
        self.norm_backward_op("group_norm_backward", view, options.eps, options.affine, b.param_grads.is_some(), true)?.record(encoder, b)
    }

    /// Group norm on host arrays: `y` and the per-(sample, group) `mean` and
    /// `rstd`, in the order `n * num_groups + g`. `affine` exactly when `options.affine`.
    ///
    /// ```no_run
    /// use ndarray::ArrayD;
    /// use wgpu_batchnorm::{GpuContext, GroupNormOptions, Layout};
    /// let ctx = GpuContext::new_blocking()?;
    /// let x = ArrayD::from_shape_fn(vec![2, 8, 4, 4], |i| (i[1] * 16 + i[2] * 4 + i[3]) as f32);
    /// let options = GroupNormOptions { affine: false, ..GroupNormOptions::new(4) };
    /// let out = ctx.group_norm_blocking(&x.view(), Layout::ChannelsFirst, None, &options)?;
    /// assert_eq!(out.rstd.len(), 2 * 4);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub async fn group_norm<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        options: &GroupNormOptions,
    ) -> Result<NormOutput<E>> {
        check_present("gamma and beta", "affine", options.affine, affine.is_some())?;
        let view = group_view(&Shape::new(x.shape(), layout)?, options.num_groups)?.typed(options.dtype);
        self.norm_forward_host("group_norm", x, view, options.eps, affine.map(|a| a.gamma), affine.map(|a| a.beta), None).await
    }

    /// Blocking [`GpuContext::group_norm`].
    pub fn group_norm_blocking<E: Element>(
        &self,
        x: &ArrayViewD<'_, E>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        options: &GroupNormOptions,
    ) -> Result<NormOutput<E>> {
        pollster::block_on(self.group_norm(x, layout, affine, options))
    }

    /// Group norm's backward on host arrays, at the forward's
    /// [`NormOutput::stats`]: `dx`, and `dgamma` and `dbeta` exactly when
    /// `options.affine` (then `gamma` is given).
    pub async fn group_norm_backward<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &GroupNormOptions,
    ) -> Result<Gradients<E>> {
        check_present("gamma", "affine", options.affine, gamma.is_some())?;
        let view = group_view(&Shape::new(inputs.x.shape(), inputs.layout)?, options.num_groups)?.typed(options.dtype);
        self.norm_backward_host("group_norm_backward", &inputs.dy, &inputs.x, view, options.eps, stats, gamma).await
    }

    /// Blocking [`GpuContext::group_norm_backward`].
    pub fn group_norm_backward_blocking<E: Element>(
        &self,
        inputs: &BackwardInputs<'_, E>,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &GroupNormOptions,
    ) -> Result<Gradients<E>> {
        pollster::block_on(self.group_norm_backward(inputs, stats, gamma, options))
    }
}

/// A group norm layer, as PyTorch's `GroupNorm(num_groups, num_channels)`:
/// per-channel `gamma` and `beta` on the GPU, the same in training and eval.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, GroupNorm, GroupNormOptions, Layout};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let mut gn = GroupNorm::new(ctx, 64, GroupNormOptions::new(32))?;
/// let x = ArrayD::from_shape_fn(vec![2, 64, 16, 16], |i| (i[1] + i[3]) as f32);
/// let y = gn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// let grads = gn.backward_blocking(&y.view())?; // of the last forward
/// assert_eq!(grads.dgamma.map(|g| g.len()), Some(64));
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct GroupNorm {
    layer: NormLayer,
    options: GroupNormOptions,
}

impl GroupNorm {
    /// A layer over `channels` channels with `gamma = 1`, `beta = 0`.
    pub fn new(ctx: Arc<GpuContext>, channels: usize, options: GroupNormOptions) -> Result<Self> {
        if options.num_groups == 0 || !channels.is_multiple_of(options.num_groups) {
            return Err(Error::InvalidGroups { channels, groups: options.num_groups });
        }
        let layer =
            NormLayer::new(ctx, ("group_norm", "group_norm_backward"), channels, (options.eps, options.dtype), options.affine, false)?;
        Ok(Self { layer, options })
    }

    /// The layer's options.
    pub fn options(&self) -> &GroupNormOptions {
        &self.options
    }

    fn view(&self, shape: &Shape) -> Result<RowView> {
        super::check_len("channels", shape.channels(), self.layer.params(), "the layer's")?;
        group_view(shape, self.options.num_groups)
    }

    /// The forward on host arrays; keeps `x` on the GPU for the backward.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        let view = self.view(&Shape::new(x.shape(), layout)?)?;
        self.layer.forward(x, view, None).await
    }

    /// Blocking [`GroupNorm::forward`].
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Records the forward over the caller's slices of a tensor of `shape`.
    pub fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        x: wgpu::BufferSlice<'_>,
        y: wgpu::BufferSlice<'_>,
    ) -> Result<()> {
        let view = self.view(shape)?;
        self.layer.encode_forward(encoder, view, shape.dims(), x, y, None)
    }
}

norm_layer_methods!(GroupNorm);
