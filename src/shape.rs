//! Tensor shapes and memory layouts.
//!
//! Every supported tensor is addressed with one formula: element `(o, c, s)`
//! lives at `(o * C + c) * S + s`. Channels-first `(N, C, ...spatial)` has
//! `O = N` and `S` = the product of the spatial dims; channels-last
//! `(N, ...spatial, C)` has `O = N * spatial` and `S = 1`. The kernels work on
//! `(O, C, S)` alone, so neither layout is ever transposed.

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::options::Dtype;

/// A validated tensor shape with its layout.
///
/// ```
/// use wgpu_batchnorm::{Layout, Shape};
/// let s = Shape::new(&[8, 3, 32, 32], Layout::ChannelsFirst).unwrap();
/// assert_eq!((s.channels(), s.per_channel()), (3, 8 * 32 * 32));
/// let t = Shape::new(&[8, 32, 32, 3], Layout::ChannelsLast).unwrap();
/// assert_eq!((t.outer(), t.inner()), (8 * 32 * 32, 1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: Vec<usize>,
    layout: Layout,
    outer: usize,
    channels: usize,
    inner: usize,
}

impl Shape {
    /// Checks `dims` against `layout`: rank 2 to 5, no zero dimension.
    ///
    /// Channels-last needs rank 3 to 5, since a rank-2 tensor `(N, C)` is the
    /// same in both layouts; pass it as [`Layout::ChannelsFirst`].
    pub fn new(dims: &[usize], layout: Layout) -> Result<Self> {
        let (ranks, expected) = match layout {
            Layout::ChannelsFirst => (2..=5, "rank 2 to 5: (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W)"),
            Layout::ChannelsLast => (3..=5, "rank 3 to 5: (N, L, C), (N, H, W, C) or (N, D, H, W, C)"),
        };
        if !ranks.contains(&dims.len()) {
            return Err(Error::BadRank { layout, rank: dims.len(), dims: dims.to_vec(), expected });
        }
        if dims.contains(&0) {
            return Err(Error::EmptyTensor { dims: dims.to_vec() });
        }
        let too_large = || Error::TooManyElements { dims: dims.to_vec() };
        let product = |d: &[usize]| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).ok_or_else(too_large);
        let (outer, channels, inner) = match layout {
            Layout::ChannelsFirst => (dims[0], dims[1], product(&dims[2..])?),
            Layout::ChannelsLast => (product(&dims[..dims.len() - 1])?, dims[dims.len() - 1], 1),
        };
        // The byte count (numel * 4) must fit too.
        outer.checked_mul(channels).and_then(|v| v.checked_mul(inner)).and_then(|v| v.checked_mul(4)).ok_or_else(too_large)?;
        Ok(Self { dims: dims.to_vec(), layout, outer, channels, inner })
    }

    /// The dims as given.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The layout as given.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `C`, the number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `O`: rows of `C * S` elements (`N` channels-first, `N * spatial` channels-last).
    pub fn outer(&self) -> usize {
        self.outer
    }

    /// `S`: contiguous elements of one channel in a row (spatial size channels-first, 1 channels-last).
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// `m = O * S`, the number of values each channel's statistics cover.
    pub fn per_channel(&self) -> usize {
        self.outer * self.inner
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    /// Bytes a tensor of this shape takes as `dtype` in a slice: the values,
    /// rounded up to whole 32-bit words ([`Dtype::tensor_bytes`]).
    pub fn bytes(&self, dtype: Dtype) -> u64 {
        dtype.tensor_bytes(self.numel())
    }

    /// Flat index of element `(o, c, s)`.
    pub fn index(&self, o: usize, c: usize, s: usize) -> usize {
        (o * self.channels + c) * self.inner + s
    }

    /// The error for training on a shape with one value per channel.
    pub(crate) fn check_trainable(&self) -> Result<()> {
        if self.per_channel() <= 1 {
            return Err(Error::TooFewValuesPerChannel { count: self.per_channel(), dims: self.dims.clone() });
        }
        Ok(())
    }

    /// The error for a per-channel vector whose length is not `C`.
    pub(crate) fn check_channel_len(&self, what: &'static str, len: usize) -> Result<()> {
        if len != self.channels {
            return Err(Error::ShapeMismatch {
                what,
                expected: format!("{} values (one per channel)", self.channels),
                got: format!("{len} values"),
            });
        }
        Ok(())
    }

    /// The error for a tensor whose dims differ from this one's.
    pub(crate) fn check_same_dims(&self, what: &'static str, dims: &[usize]) -> Result<()> {
        if dims != self.dims.as_slice() {
            return Err(Error::ShapeMismatch { what, expected: format!("{:?}", self.dims), got: format!("{dims:?}") });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_first_and_last_agree_on_per_channel_count() {
        let cf = Shape::new(&[2, 3, 4, 5], Layout::ChannelsFirst).unwrap();
        let cl = Shape::new(&[2, 4, 5, 3], Layout::ChannelsLast).unwrap();
        assert_eq!((cf.outer(), cf.channels(), cf.inner()), (2, 3, 20));
        assert_eq!((cl.outer(), cl.channels(), cl.inner()), (40, 3, 1));
        assert_eq!(cf.per_channel(), cl.per_channel());
        assert_eq!(cf.index(1, 2, 19), 119);
        assert_eq!(cl.index(39, 2, 0), 119);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert!(matches!(Shape::new(&[4], Layout::ChannelsFirst), Err(Error::BadRank { rank: 1, .. })));
        assert!(matches!(Shape::new(&[4, 3], Layout::ChannelsLast), Err(Error::BadRank { rank: 2, .. })));
        assert!(matches!(Shape::new(&[1, 2, 3, 4, 5, 6], Layout::ChannelsFirst), Err(Error::BadRank { rank: 6, .. })));
        assert!(matches!(Shape::new(&[4, 0, 3], Layout::ChannelsFirst), Err(Error::EmptyTensor { .. })));
        assert!(matches!(Shape::new(&[usize::MAX, 2, 2], Layout::ChannelsFirst), Err(Error::TooManyElements { .. })));
    }
}
