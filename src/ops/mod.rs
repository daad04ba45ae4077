//! What every op shares: affine parameters, running and saved statistics,
//! gradients, and the host helpers and dispatch steps of their engines.

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::device::Unused;
use crate::error::Result;
use crate::layout::Layout;
use crate::options::{Dtype, Element};
use crate::plan::{Grid, Windowed};
use crate::prepared::{Arg, Step};
use crate::shaders::{Kernel, Variant};
use crate::shape::Shape;

/// Affine parameters, `gamma` (scale) and `beta` (shift), one value per
/// affine parameter ([`Norm::params`](crate::Norm::params)) each: a layer's
/// buffers, or host values read back or given. `beta` is `None` exactly for
/// RMS norm, which has no shift.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine<T> {
    /// Scale.
    pub gamma: T,
    /// Shift; `None` for RMS norm.
    pub beta: Option<T>,
}

impl<T> Affine<T> {
    /// `gamma` and `beta` for an op that has a shift: [`Error::OptionsMismatch`](crate::Error::OptionsMismatch) without `beta`.
    pub(crate) fn with_shift(self) -> Result<ChannelAffine<T>> {
        let beta = self.beta.ok_or_else(|| crate::Error::OptionsMismatch {
            what: "beta",
            reason: "the op has a shift: beta is needed with gamma".into(),
        })?;
        Ok(ChannelAffine { gamma: self.gamma, beta })
    }
}

/// Batch norm's per-channel `gamma` and `beta`, both present: what its kernels bind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ChannelAffine<T> {
    pub gamma: T,
    pub beta: T,
}

/// Running statistics on the host, with PyTorch's initial values: `f32` for
/// the GPU calls, `f64` for [`reference`](crate::reference).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningStats<T = f32> {
    /// Running mean, initially 0.
    pub mean: Vec<T>,
    /// Running variance (unbiased unless [`RunningVariance::Biased`](crate::RunningVariance)), initially 1.
    pub var: Vec<T>,
    /// Training batches seen.
    pub num_batches_tracked: u64,
}

impl<T: From<u8> + Clone> RunningStats<T> {
    /// Initial statistics for `channels` channels.
    ///
    /// ```
    /// let r = wgpu_batchnorm::RunningStats::<f32>::new(2);
    /// assert_eq!((r.mean, r.var, r.num_batches_tracked), (vec![0.0; 2], vec![1.0; 2], 0));
    /// ```
    pub fn new(channels: usize) -> Self {
        Self { mean: vec![T::from(0); channels], var: vec![T::from(1); channels], num_batches_tracked: 0 }
    }
}

impl<T> RunningStats<T> {
    /// The statistics a backward in inference mode differentiates at.
    pub fn backward_stats(&self) -> BackwardStats<&[T]> {
        BackwardStats::Running { mean: &self.mean, var: &self.var }
    }
}

/// The saved per-row statistics of a forward pass, which its backward
/// differentiates at: host slices on the `ndarray` calls, buffer slices on
/// the prepared ones. Rows are batch norm's channels, group norm's (sample,
/// group) pairs, instance norm's (sample, channel) pairs, and layer and RMS
/// norm's rows ([`Norm::rows`](crate::Norm::rows)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormStats<T> {
    /// Mean per row; `None` exactly for RMS norm.
    pub mean: Option<T>,
    /// `1 / sqrt(var + eps)` per row (`1 / sqrt(mean(x^2) + eps)` for RMS norm).
    pub rstd: T,
}

/// The statistics a backward differentiates at: the forward's saved ones
/// (training mode, or any op without running statistics), or the running
/// statistics of batch and instance norm's inference forward, constants for
/// the gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackwardStats<T> {
    /// The forward's [`NormStats`] ([`NormOutput::stats`](crate::NormOutput::stats)).
    Saved(NormStats<T>),
    /// Running mean and variance per channel ([`RunningStats::backward_stats`]).
    Running {
        /// Running mean per channel.
        mean: T,
        /// Running variance per channel.
        var: T,
    },
}

impl<T> BackwardStats<T> {
    /// Whether these are the forward's saved statistics.
    pub(crate) fn is_saved(&self) -> bool {
        matches!(self, BackwardStats::Saved(_))
    }
}

impl<T> From<NormStats<T>> for BackwardStats<T> {
    fn from(stats: NormStats<T>) -> Self {
        BackwardStats::Saved(stats)
    }
}

/// Batch norm's backward tensors through a fused epilogue.
#[derive(Debug, Clone)]
pub(crate) struct EpilogueBackwardInputs<'a, E = f32> {
    /// The gradient of the fused output, `dL/dz`, shaped like `x`.
    pub dz: ArrayViewD<'a, E>,
    /// The fused forward's output `z`, exactly when the epilogue has an
    /// activation: the mask is read from it (`z > 0`).
    pub z: Option<ArrayViewD<'a, E>>,
    /// The forward pass's input.
    pub x: ArrayViewD<'a, E>,
    /// Where the channel axis of all three sits.
    pub layout: Layout,
}

/// Gradients from the backward pass: `dx` as the inputs' element type,
/// `dgamma` and `dbeta` f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<E = f32> {
    /// Gradient with respect to `x`.
    pub dx: ArrayD<E>,
    /// Gradient with respect to `gamma`; `None` where `affine` is false.
    pub dgamma: Option<Vec<f32>>,
    /// Gradient with respect to `beta`; `None` where `affine` is false, and for RMS norm.
    pub dbeta: Option<Vec<f32>>,
    /// Gradient with respect to batch norm's fused residual (`dz` masked by
    /// the activation); `Some` exactly when the epilogue has a residual.
    pub dresidual: Option<ArrayD<E>>,
}

/// A host array's values in standard order: borrowed where it is contiguous,
/// else copied. Callers plan the op first, which checks its size, so that a
/// huge view (zero strides) is an error before any copy.
pub(crate) fn host_data<'a, E: Clone>(x: &'a ArrayViewD<'_, E>) -> std::borrow::Cow<'a, [E]> {
    match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().cloned().collect()),
    }
}

/// A tensor of `E` shaped `dims` from the words a download read back.
pub(crate) fn from_words<E: Element>(words: Vec<f32>, dims: &[usize]) -> Result<ArrayD<E>> {
    let mut values: Vec<E> = bytemuck::allocation::try_cast_vec(words).unwrap_or_else(|(_, w)| bytemuck::cast_slice(&w).to_vec());
    values.truncate(dims.iter().product());
    ArrayD::from_shape_vec(dims, values).map_err(|e| crate::Error::Readback(e.to_string()))
}

/// The whole of a buffer the high-level calls created.
pub(crate) fn all(buffer: &wgpu::Buffer) -> wgpu::BufferSlice<'_> {
    buffer.slice(..)
}

/// A per-channel argument, or its stand-in when absent.
pub(crate) fn channels(slot: usize, unused: Unused) -> Arg {
    Arg::Channels(slot, unused)
}

/// One dispatch per window of `plan` of a tensor pass.
pub(crate) fn per_window(
    plan: &Windowed,
    kernel: impl Fn(&crate::plan::Plan) -> Kernel,
    variant: impl Fn(&crate::plan::Plan) -> Variant,
    grid: impl Fn(&crate::plan::Plan) -> Grid,
    args: &[(u32, Arg)],
) -> Vec<Step> {
    plan.windows
        .iter()
        .enumerate()
        .map(|(w, window)| Step {
            kernel: kernel(&window.plan),
            variant: variant(&window.plan),
            grid: grid(&window.plan),
            window: Some(w),
            args: args.to_vec(),
        })
        .collect()
}

/// The per-channel step of `kernel` over the whole tensor's plan.
pub(crate) fn per_channel(plan: &Windowed, kernel: Kernel, args: &[(u32, Arg)]) -> Step {
    Step { kernel, variant: Variant::EPILOGUE, grid: plan.full.epilogue_grid, window: None, args: args.to_vec() }
}

impl GpuContext {
    /// `gamma` and `beta` uploaded, where given.
    pub(crate) fn upload_affine(&self, affine: Option<ChannelAffine<&[f32]>>) -> Result<Option<ChannelAffine<wgpu::Buffer>>> {
        match affine {
            Some(a) => Ok(Some(ChannelAffine { gamma: self.upload("gamma", a.gamma)?, beta: self.upload("beta", a.beta)? })),
            None => Ok(None),
        }
    }

    /// Plans `shape` of `dtype` for this device, in windows where it is larger than one
    /// binding may be: an error names the limit a tensor passes.
    pub(crate) fn plan(&self, shape: &Shape, dtype: Dtype) -> Result<Windowed> {
        let limits = self.device().limits();
        let bytes = dtype.tensor_bytes(shape.numel());
        if bytes > limits.max_buffer_size {
            return Err(crate::Error::TooLarge { what: "max_buffer_size", requested: bytes, limit: limits.max_buffer_size });
        }
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
        Windowed::new(shape, self.max_groups_per_dim(), self.tuning(), limits.max_storage_buffer_binding_size, alignment, dtype)
    }
}
