//! Group normalization (PyTorch's `GroupNorm`): statistics per (sample,
//! group) over the group's `C / num_groups` channels and every position,
//! per-channel `gamma` and `beta`. Channels-first `[N, C, S]` is rows of
//! `(C / G) * S` contiguous values (`B = N, O = 1, K = G`); channels-last
//! `[N, S, C]` is `O = S` runs of `C / G` values per row.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use super::layer::{norm_layer_methods, NormLayer};
use super::RowView;
use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::options::{Element, Options};
use crate::shape::Shape;

/// The row view of group norm over `num_groups` groups of `shape`.
pub(crate) fn group_view(shape: &Shape, num_groups: usize) -> Result<RowView> {
    if num_groups == 0 || !shape.channels().is_multiple_of(num_groups) {
        return Err(Error::InvalidGroups { channels: shape.channels(), groups: num_groups });
    }
    Ok(RowView::groups(shape, num_groups))
}

/// A group norm layer, as PyTorch's `GroupNorm(num_groups, num_channels)`:
/// per-channel `gamma` and `beta` on the GPU, the same in training and eval.
///
/// ```no_run
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{GpuContext, GroupNorm, Layout, Options};
/// let ctx = Arc::new(GpuContext::new_blocking()?);
/// let options = Options { track_running_stats: false, ..Options::default() };
/// let mut gn = GroupNorm::new(ctx, 32, 64, options)?;
/// let x = ArrayD::from_shape_fn(vec![2, 64, 16, 16], |i| (i[1] + i[3]) as f32);
/// let y = gn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
/// let grads = gn.backward_blocking(&y.view())?; // of the last forward
/// assert_eq!(grads.dgamma.map(|g| g.len()), Some(64));
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct GroupNorm {
    layer: NormLayer,
    num_groups: usize,
    options: Options,
}

impl GroupNorm {
    /// A layer of `num_groups` groups over `channels` channels with
    /// `gamma = 1`, `beta = 0`; `options` as [`Norm::default_options`](crate::Norm::default_options)'s
    /// (no running statistics, no epilogue).
    pub fn new(ctx: Arc<GpuContext>, num_groups: usize, channels: usize, options: Options) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(Error::InvalidGroups { channels, groups: num_groups });
        }
        super::check_family_options(&options, false)?;
        let layer =
            NormLayer::new(ctx, ("group_norm", "group_norm_backward"), channels, (options.eps, options.dtype), options.affine, false)?;
        Ok(Self { layer, num_groups, options })
    }

    /// The layer's options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Its number of groups.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    fn view(&self, shape: &Shape) -> Result<RowView> {
        super::check_len("channels", shape.channels(), self.layer.params(), "the layer's")?;
        group_view(shape, self.num_groups)
    }

    /// The forward on host arrays; keeps `x` on the GPU for the backward.
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        let view = self.view(&Shape::new(x.shape(), layout)?)?;
        self.layer.forward(x, view, None).await
    }

    /// Blocking [`GroupNorm::forward`].
    #[cfg(not(target_arch = "wasm32"))]
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
