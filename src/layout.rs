//! Where a tensor's channel axis sits.

/// Where the channel axis sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `(N, C)`, `(N, C, L)`, `(N, C, H, W)`, `(N, C, D, H, W)`: PyTorch's default.
    ChannelsFirst,
    /// `(N, L, C)`, `(N, H, W, C)`, `(N, D, H, W, C)`: TensorFlow's default, PyTorch's `channels_last`.
    ChannelsLast,
}
