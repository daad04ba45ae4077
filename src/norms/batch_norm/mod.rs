//! Batch normalization (PyTorch's `BatchNorm1d/2d/3d`): statistics per
//! channel over the samples and positions, on the per-channel engine
//! (`shaders/stats_*.wgsl`, `finalize_*.wgsl`, `apply.wgsl`, `backward_*.wgsl`,
//! `forward_fused.wgsl`). One module per pass, each with a prepared form
//! (planned once, recorded many times), a one-shot `encode_*` method through
//! a prepared op the context caches, and a host method over `ndarray` arrays;
//! the op model ([`Norm::Batch`](crate::Norm::Batch)) reaches them. Its f64
//! reference is `crate::reference`'s `forward_train`, `forward_inference`,
//! `backward_train` and `backward_inference`; its layer `crate::BatchNorm`.

pub(crate) mod backward;
pub(crate) mod forward_inference;
pub(crate) mod forward_train;
