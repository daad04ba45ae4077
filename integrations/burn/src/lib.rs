//! [wgpu-batchnorm](wgpu_batchnorm)'s kernels as Burn's normalization
//! modules, running on Burn's own wgpu device over the buffers behind Burn's
//! tensors.
//!
//! - [`shared_device`] (or [`attach`] for a `WgpuSetup` of your own) puts Burn
//!   and the kernels on one `wgpu::Device` and queue.
//! - [`BatchNorm`] and [`BatchNormConfig`] have `burn::nn::BatchNorm`'s
//!   fields, defaults and train/eval behaviour: a model switches by changing
//!   an import. Its training forward, inference forward and backward (a
//!   custom op in Burn's autodiff) are this crate's kernels, recorded over the
//!   tensors' own buffers: no host round trip, no copy of a contiguous tensor.
//!   [`BatchNorm::forward_relu`] and [`BatchNorm::forward_add_relu`] run a
//!   ResNet block's tail, `relu(bn(x) [+ residual])`, as one op each.
//! - [`LayerNorm`], [`RmsNorm`], [`GroupNorm`] and [`InstanceNorm`] (and
//!   their configs) likewise have their `burn::nn` namesakes' fields,
//!   defaults and behaviour, forward and backward on the kernels.
//! - [`fold_conv2d`] folds a trained `Conv2d` and [`BatchNorm`] into one
//!   `Conv2d` for inference.
//! - [`BatchNormBackend`] and [`NormBackend`] are the backend extensions
//!   underneath, for callers who want the ops without the modules.
//!
//! Supported: Burn 0.22.1's `Cube` backend on the wgpu runtime, fused (Burn's
//! default features, with this crate's feature `fusion`, on by default) or not
//! (both without default features), and `Autodiff` over it; channels-first tensors
//! (`[batch, channels, ...]`, Burn's convolution layout) of f32, or of f16 or
//! bf16 for mixed precision (the parameters and statistics may stay f32; the
//! kernels keep them in f32 either way). Burn 0.22.1's wgpu runtime makes no
//! bf16 tensors (its WGSL compiler rejects bf16), so bf16 is mapped but not
//! tested here. A strided view is
//! made contiguous first (one copy, by Burn), and so is a view whose offset is
//! not a multiple of the device's `min_storage_buffer_offset_alignment`.

mod backend;
mod device;
mod fold;
mod module;
mod norm_backend;
mod norms;

pub use backend::BatchNormBackend;
pub use device::{attach, shared_device};
pub use fold::fold_conv2d;
pub use module::{BatchNorm, BatchNormConfig};
pub use norm_backend::{NormBackend, RowNorm};
pub use norms::{GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig, LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};

/// What can go wrong setting up the shared device. The ops themselves panic
/// on misuse, as Burn's ops do: their signatures have no error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Burn's wgpu runtime refused the device.
    #[error("Burn: {0}")]
    Burn(String),
    /// A tensor's device has no context: it was not set up through
    /// [`shared_device`] or [`attach`].
    #[error("device {0} was not set up through wgpu_batchnorm_burn::shared_device or attach")]
    UnregisteredDevice(String),
    /// The kernels failed.
    #[error(transparent)]
    Kernels(#[from] wgpu_batchnorm::Error),
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
