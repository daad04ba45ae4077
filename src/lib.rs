//! Batch normalization on the GPU through wgpu: WGSL kernels for the training
//! forward pass, the inference forward pass and the backward pass, in
//! channels-first and channels-last layouts, checked against an f64 CPU
//! reference ([`mod@reference`]).
//!
//! Three levels of API:
//! - [`GpuContext::encode_forward_train`], [`GpuContext::encode_forward_inference`],
//!   [`GpuContext::encode_backward`] record into your command encoder over your buffers;
//!   prepared ops ([`GpuContext::prepare_forward_train`] and the others) compile once and
//!   record many times, over slices bound for each record or once ([`Bound`]); no op keeps
//!   your buffers past the call, or past the [`Bound`] you drop;
//! - [`GpuContext::forward_train`], [`GpuContext::forward_inference`] and
//!   [`GpuContext::backward`] run on `ndarray` arrays;
//! - [`BatchNorm`] is a layer holding parameters and running statistics on the GPU.
//!
//! The normalization family runs on the same engine, with the same three
//! levels: group norm ([`GpuContext::group_norm`], [`GroupNorm`]), instance
//! norm ([`GpuContext::instance_norm`], [`InstanceNorm`]), layer norm
//! ([`GpuContext::layer_norm`], [`LayerNorm`]) and RMS norm
//! ([`GpuContext::rms_norm`], [`RmsNorm`]).
//!
//! Tensors may be f32, f16 or bf16 ([`Options::dtype`], [`Element`] for
//! host arrays), with statistics, parameters and accumulation in f32.
//!
//! The contract (formulas, numerics, accuracy, the performance model) is
//! `docs/SPEC.md` in the repository; the README states the guarantees the tests show.
#![cfg_attr(docsrs, feature(doc_cfg))]

// The benchmark's harness (feature `bench`), public for examples/bench.rs and
// benches/ only: not part of the API.
#[cfg(any(test, feature = "bench"))]
#[doc(hidden)]
pub mod bench;
mod context;
mod error;
pub mod fold;
mod layer;
mod norms;
mod ops;
mod options;
mod pipelines;
mod plan;
mod prepared;
pub mod reference;
mod shaders;
mod shape;
mod sync;

pub use context::{ContextOptions, GpuContext};
pub use error::{Error, Result};
/// The `half` crate, whose `f16` and `bf16` the `ndarray` calls take ([`Element`]).
pub use half;
pub use layer::BatchNorm;
/// The `ndarray` crate (0.17, Burn 0.22's), whose arrays the host calls take and return.
pub use ndarray;
pub use norms::group_norm::{GroupNorm, GroupNormOptions};
pub use norms::instance_norm::{InstanceNorm, InstanceNormOptions};
pub use norms::layer_norm::{LayerNorm, LayerNormOptions};
pub use norms::rms_norm::{RmsNorm, RmsNormOptions};
pub use norms::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormParamGradBuffers, NormStats, PreparedNorm, PreparedNormBackward};
pub use ops::backward::{BackwardBuffers, BackwardStats, ParamGradBuffers, PreparedBackward};
pub use ops::forward_inference::{ForwardInferenceBuffers, PreparedForwardInference};
pub use ops::forward_train::{ForwardTrainBuffers, PreparedForwardTrain, RunningBuffers, TrainOutput};
pub use ops::{Affine, BackwardInputs, EpilogueBackwardInputs, EpilogueGradients, Gradients, RunningStats};
pub use options::{Activation, Dtype, Element, Epilogue, Momentum, Options, RunningVariance, DEFAULT_EPS, DEFAULT_MOMENTUM};
pub use plan::Tuning;
pub use prepared::{Bound, SlotBytes};
pub use shape::{Layout, Shape};
#[cfg(feature = "mpi")]
pub use sync::Mpi;
pub use sync::{
    in_process, in_process_with_timeout, merge_ranks, Collective, InProcessRank, Moments, SyncBatchNorm, DEFAULT_COLLECTIVE_TIMEOUT,
};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
