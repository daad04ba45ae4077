//! Normalization layers on the GPU through wgpu: batch, group, instance,
//! layer and RMS norm, WGSL kernels for the training forward pass, the
//! inference forward pass and the backward pass, checked against an f64 CPU
//! reference ([`mod@reference`]).
//!
//! One op model: a [`Norm`] says which op runs over which axes, and every op
//! takes the same calls with the same [`Options`], saved statistics
//! ([`NormStats`]) and buffer structs:
//! - [`GpuContext::prepare_norm`] and [`GpuContext::prepare_norm_backward`]
//!   compile once and record many times into your command encoder, over
//!   slices of your buffers bound for each record or once ([`Bound`]); no op
//!   keeps your buffers past the call, or past the [`Bound`] you drop;
//!   [`GpuContext::encode_norm`] records without keeping an op;
//! - [`GpuContext::norm`] and [`GpuContext::norm_backward`] run on `ndarray` arrays;
//! - [`BatchNorm`], [`GroupNorm`], [`InstanceNorm`], [`LayerNorm`] and
//!   [`RmsNorm`] are layers holding parameters and running statistics on the GPU.
//!
//! Inference at running statistics (batch and instance norm) is
//! [`GpuContext::prepare_norm_inference`] and [`GpuContext::norm_inference`],
//! its backward [`GpuContext::prepare_norm_inference_backward`] and
//! [`GpuContext::norm_backward`] at [`BackwardStats::Running`].
//!
//! Tensors may be f32, f16 or bf16 ([`Options::dtype`], [`Element`] for
//! host arrays), with statistics, parameters and accumulation in f32.
//!
//! On wasm32 (WebGPU in a browser or Deno) the API is the async one: the
//! `_blocking` calls, the in-process ranks of [`SyncBatchNorm`] and MPI are
//! native only, compiled out there. A browser answers wgpu's error scopes
//! only on its event loop, so there an error wgpu raises while the context
//! makes a buffer, pipeline or bind group is returned by the context's next
//! async call rather than by the call that made it. [`check::run`] checks
//! every op against the f64 reference on any target.
//!
//! The contract (formulas, numerics, accuracy, the performance model) is
//! `docs/SPEC.md` in the repository; the README states the guarantees the tests show.
#![cfg_attr(docsrs, feature(doc_cfg))]
// The context's shared state is `Send + Sync` on native targets, where it is
// shared across threads; wgpu's objects are neither on wasm32, which has one thread.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[cfg(all(feature = "mpi", target_arch = "wasm32"))]
compile_error!("feature `mpi` is for native targets: MPI has no wasm32 build");

// The benchmark's harness (feature `bench`), public for examples/bench.rs and
// benches/ only: not part of the API.
#[cfg(any(test, feature = "bench"))]
#[doc(hidden)]
pub mod bench;
pub mod check;
mod context;
mod device;
mod error;
pub mod fold;
mod layer;
mod layout;
mod liveness;
mod norms;
mod op;
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
pub use layout::Layout;
/// The `ndarray` crate (0.17, Burn 0.22's), whose arrays the host calls take and return.
pub use ndarray;
pub use norms::batch_norm::forward_train::RunningBuffers;
pub use norms::group_norm::GroupNorm;
pub use norms::instance_norm::InstanceNorm;
pub use norms::layer_norm::LayerNorm;
pub use norms::rms_norm::RmsNorm;
pub use norms::{NormBackwardBuffers, NormForwardBuffers, NormOutput, NormParamGradBuffers, PreparedNorm, PreparedNormBackward};
pub use op::{Norm, NormBackwardInputs, NormInferenceBuffers, NormInputs, PreparedNormInference};
pub use ops::{Affine, BackwardStats, Gradients, NormStats, RunningStats};
pub use options::{Activation, Dtype, Element, Epilogue, Momentum, Options, RunningVariance, DEFAULT_EPS, DEFAULT_MOMENTUM};
pub use plan::Tuning;
pub use prepared::{Bound, SlotBytes};
pub use shape::Shape;
#[cfg(feature = "mpi")]
pub use sync::Mpi;
#[cfg(not(target_arch = "wasm32"))]
pub use sync::{in_process, in_process_with_timeout, InProcessRank};
pub use sync::{merge_ranks, Collective, Moments, SyncBatchNorm, DEFAULT_COLLECTIVE_TIMEOUT};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
