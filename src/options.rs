//! Hyper-parameters of batch normalization and their validation.

use crate::error::{Error, Result};

/// PyTorch's default `eps`.
pub const DEFAULT_EPS: f32 = 1e-5;
/// PyTorch's default `momentum`.
pub const DEFAULT_MOMENTUM: f32 = 0.1;

/// The element type of the tensors an op reads and writes: `x`, `y`, `dy`,
/// `dx`, and an epilogue's `residual`, `z` and `dresidual`. Statistics,
/// `gamma`, `beta`, running statistics and every accumulation stay f32, as in
/// mixed-precision training (docs/SPEC.md, Half precision).
///
/// A half-precision tensor holds two bytes per value; its slice holds
/// [`Dtype::tensor_bytes`] bytes (rounded up to whole 32-bit words). f16 runs
/// through WGSL's `f16` where the device has `wgpu::Features::SHADER_F16`
/// ([`GpuContext::shader_f16`](crate::GpuContext::shader_f16)) and through
/// 32-bit words otherwise; bf16 always through 32-bit words. Every adapter
/// runs all three.
///
/// ```
/// use wgpu_batchnorm::{Dtype, Options};
/// let options = Options { dtype: Dtype::Bf16, ..Options::default() };
/// assert_eq!(options.dtype.tensor_bytes(3), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dtype {
    /// IEEE binary32.
    #[default]
    F32,
    /// IEEE binary16 (`half::f16`): 5 exponent bits, 10 mantissa bits, largest finite 65504.
    F16,
    /// bfloat16 (`half::bf16`): the upper half of an f32, 8 exponent bits, 7 mantissa bits.
    Bf16,
}

impl Dtype {
    /// Bytes of one value.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Bytes a tensor of `numel` values takes in a slice: its values, rounded
    /// up to a multiple of 4 (a binding's size is whole 32-bit words). A
    /// kernel never writes the padding.
    pub fn tensor_bytes(self, numel: usize) -> u64 {
        (numel as u64 * self.size()).div_ceil(4) * 4
    }

    /// 32-bit words of [`Dtype::tensor_bytes`]: what a download reads back.
    pub(crate) fn tensor_words(self, numel: usize) -> usize {
        (self.tensor_bytes(numel) / 4) as usize
    }
}

/// The element type of the host arrays the `ndarray` calls take and return
/// (batch norm's and the normalization family's): `f32`, [`half::f16`] or
/// [`half::bf16`] (this crate re-exports [`half`]). `options.dtype` must be
/// the element's [`Element::DTYPE`].
///
/// ```no_run
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::half::bf16;
/// use wgpu_batchnorm::{Dtype, GpuContext, Layout, Norm, Options, Shape};
/// let ctx = GpuContext::new_blocking()?;
/// let x = ArrayD::from_shape_fn(vec![4, 3, 8, 8], |i| bf16::from_f32(i[3] as f32));
/// let op = Norm::Batch(Shape::new(x.shape(), Layout::ChannelsFirst)?);
/// let options = Options { dtype: Dtype::Bf16, affine: false, track_running_stats: false, ..Options::default() };
/// let y = ctx.norm_blocking(&op, x.view(), None, None, None, &options)?.y;
/// assert_eq!(y.shape(), x.shape());
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
pub trait Element: bytemuck::Pod + Into<f64> + std::fmt::Debug + Send + Sync + sealed::Sealed {
    /// How the kernels store it.
    const DTYPE: Dtype;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}

impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// How running statistics follow the batch statistics.
///
/// PyTorch's convention: the factor `f` is the weight of the **new** batch,
/// `running = (1 - f) * running + f * batch`. ONNX's `momentum` is the weight
/// of the old value, so ONNX's `momentum = 0.9` is `Momentum::Exponential(0.1)` here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Momentum {
    /// `f = momentum` for every batch (PyTorch's `momentum = 0.1`).
    Exponential(f32),
    /// `f = 1 / num_batches_tracked`: the cumulative average (PyTorch's `momentum = None`).
    CumulativeAverage,
}

impl Default for Momentum {
    fn default() -> Self {
        Momentum::Exponential(DEFAULT_MOMENTUM)
    }
}

impl Momentum {
    /// The weight of the new batch once `num_batches_tracked` (already
    /// incremented for this batch, so `>= 1`) batches have been seen.
    ///
    /// ```
    /// use wgpu_batchnorm::Momentum;
    /// assert_eq!(Momentum::Exponential(0.1).factor(7), 0.1);
    /// assert_eq!(Momentum::CumulativeAverage.factor(4), 0.25);
    /// ```
    pub fn factor(self, num_batches_tracked: u64) -> f32 {
        match self {
            Momentum::Exponential(m) => m,
            Momentum::CumulativeAverage => 1.0 / num_batches_tracked.max(1) as f32,
        }
    }

    /// The weight of a batch after `num_batches_tracked` batches, where it
    /// differs from batch to batch (cumulative averaging) and a record sets it
    /// itself; `None` where every batch has the same weight, which the
    /// prepared op's uniform holds.
    pub(crate) fn per_record(self, num_batches_tracked: u64) -> Option<f32> {
        match self {
            Momentum::Exponential(_) => None,
            Momentum::CumulativeAverage => Some(self.factor(num_batches_tracked.saturating_add(1))),
        }
    }

    pub(crate) fn validate(self) -> Result<()> {
        match self {
            Momentum::Exponential(m) if !(0.0..=1.0).contains(&m) => Err(Error::InvalidMomentum(m)),
            _ => Ok(()),
        }
    }
}

/// Which variance the running statistics average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunningVariance {
    /// The unbiased batch variance, `var * m / (m - 1)`: PyTorch's convention.
    #[default]
    Unbiased,
    /// The biased batch variance, the one that normalizes: ONNX's and Burn's convention.
    Biased,
}

impl RunningVariance {
    /// The factor the biased variance of `m` values is scaled by.
    pub(crate) fn factor(self, m: usize) -> f64 {
        match self {
            RunningVariance::Unbiased if m > 1 => m as f64 / (m as f64 - 1.0),
            _ => 1.0,
        }
    }
}

/// The options of a batch-norm layer or call, with PyTorch's defaults.
///
/// `affine` and `track_running_stats` say which parameters a call takes: the
/// high-level calls return [`Error::OptionsMismatch`] when `gamma` and `beta`,
/// or running statistics, are given against them or missing; `epilogue` says
/// the same of a residual, and of the backward's `z` and `dresidual`.
///
/// ```
/// use wgpu_batchnorm::{Momentum, Options, RunningVariance};
/// let o = Options { eps: 1e-3, ..Options::default() };
/// assert!(o.affine && o.track_running_stats);
/// // ONNX's momentum 0.9 and biased running variance:
/// let onnx = Options { momentum: Momentum::Exponential(1.0 - 0.9), running_variance: RunningVariance::Biased, ..Options::default() };
/// # let _ = onnx;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Added to the variance before the square root; finite and `>= 0`.
    pub eps: f32,
    /// How running statistics are updated in training.
    pub momentum: Momentum,
    /// Learnable `gamma` and `beta`; `false` means `gamma = 1`, `beta = 0`.
    pub affine: bool,
    /// Keep running statistics for inference; `false` normalizes with batch statistics in eval too.
    pub track_running_stats: bool,
    /// Which batch variance the running variance averages.
    pub running_variance: RunningVariance,
    /// What the forward pass applies after batch norm, and the backward
    /// differentiates through: by default nothing (`y` is batch norm's output).
    pub epilogue: Epilogue,
    /// The element type of the tensors (by default f32).
    pub dtype: Dtype,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            eps: DEFAULT_EPS,
            momentum: Momentum::default(),
            affine: true,
            track_running_stats: true,
            running_variance: RunningVariance::Unbiased,
            epilogue: Epilogue::default(),
            dtype: Dtype::F32,
        }
    }
}

impl Options {
    /// Checks `eps`, `momentum` and the epilogue's slope.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        self.momentum.validate()?;
        self.epilogue.activation.validate()
    }

    /// Checks that `gamma` and `beta` are given exactly when `affine` says so.
    pub(crate) fn check_affine(&self, given: bool) -> Result<()> {
        check_present("gamma and beta", "affine", self.affine, given)
    }

    /// Checks that running statistics are given exactly when `track_running_stats` says so.
    pub(crate) fn check_running(&self, given: bool) -> Result<()> {
        check_present("running statistics", "track_running_stats", self.track_running_stats, given)
    }
}

/// The activation of a fused epilogue.
///
/// The backward takes the forward's output `z` and masks the upstream gradient
/// with it: ReLU passes `dz` where `z > 0` and nothing where `z <= 0` (ties at
/// `z == 0` get no gradient, as PyTorch's `threshold_backward`); LeakyReLU
/// passes `dz` where `z > 0` and `slope * dz` where `z <= 0`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    /// `z = v`.
    #[default]
    Identity,
    /// `z = max(v, 0)` (NaN stays NaN).
    Relu,
    /// `z = v` where `v >= 0`, `slope * v` where `v < 0`; the slope must be
    /// finite and `>= 0`, so that `z > 0` exactly where `v > 0` and the mask
    /// can be read from `z` ([`Error::InvalidSlope`] otherwise).
    LeakyRelu(f32),
}

impl Activation {
    /// LeakyReLU's slope; 0 for the others, which read none.
    pub(crate) fn slope(self) -> f32 {
        match self {
            Activation::LeakyRelu(slope) => slope,
            _ => 0.0,
        }
    }

    pub(crate) fn validate(self) -> Result<()> {
        match self {
            Activation::LeakyRelu(s) if !(s.is_finite() && s >= 0.0) => Err(Error::InvalidSlope(s)),
            _ => Ok(()),
        }
    }
}

/// A fused epilogue: `z = activation(bn(x) + residual)`, written once in the
/// pass that writes batch norm's output, with the residual (a tensor shaped
/// like `x`) added only where `residual` is true.
///
/// The default, identity and no residual, is plain batch norm and runs its
/// kernels unchanged. With an activation, the backward takes `z` (the fused
/// forward's output) to mask `dz`; with a residual it also writes `dresidual`.
///
/// ```
/// use wgpu_batchnorm::{Activation, Epilogue, Options};
/// // A ResNet block's tail: relu(bn(x) + identity).
/// let options = Options { epilogue: Epilogue { activation: Activation::Relu, residual: true }, ..Options::default() };
/// assert!(options.epilogue.needs_z());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Epilogue {
    /// Applied last.
    pub activation: Activation,
    /// Whether a residual tensor is added before the activation.
    pub residual: bool,
}

impl Epilogue {
    /// Batch norm followed by `activation`, with no residual.
    pub fn activation(activation: Activation) -> Self {
        Self { activation, residual: false }
    }

    /// Whether the backward needs the forward's output `z` (there is an activation to mask by).
    pub fn needs_z(&self) -> bool {
        self.activation != Activation::Identity
    }

    /// Checks that a residual is given exactly when `residual` says so.
    pub(crate) fn check_residual(&self, what: &'static str, given: bool) -> Result<()> {
        check_present(what, "epilogue.residual", self.residual, given)
    }

    /// Checks that `z` is given exactly when there is an activation.
    pub(crate) fn check_z(&self, given: bool) -> Result<()> {
        if self.needs_z() == given {
            return Ok(());
        }
        let reason = if given {
            "the activation is Identity, so the backward takes no z, but one was given".to_string()
        } else {
            format!("the activation is {:?}, whose backward masks dz by the forward's output z, but none was given", self.activation)
        };
        Err(Error::OptionsMismatch { what: "z", reason })
    }
}

pub(crate) fn check_present(what: &'static str, flag: &str, wanted: bool, given: bool) -> Result<()> {
    if wanted == given {
        return Ok(());
    }
    let reason = if wanted { format!("{flag} is true but none were given") } else { format!("{flag} is false but they were given") };
    Err(Error::OptionsMismatch { what, reason })
}

/// Checks that the options' `dtype` is the host arrays' element type `E`.
pub(crate) fn check_element<E: Element>(dtype: Dtype) -> Result<()> {
    if dtype == E::DTYPE {
        return Ok(());
    }
    let reason = format!("dtype is {dtype:?}, but the arrays hold {:?}", E::DTYPE);
    Err(Error::OptionsMismatch { what: "dtype", reason })
}

pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::InvalidEps(eps));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_hyper_parameters_are_rejected() {
        let bad_eps = [-1e-5, f32::NAN, f32::INFINITY];
        for eps in bad_eps {
            let o = Options { eps, ..Options::default() };
            assert!(matches!(o.validate(), Err(Error::InvalidEps(_))), "{eps}");
        }
        for m in [-0.1, 1.5, f32::NAN] {
            let o = Options { momentum: Momentum::Exponential(m), ..Options::default() };
            assert!(matches!(o.validate(), Err(Error::InvalidMomentum(_))), "{m}");
        }
        for s in [-0.1, f32::NAN, f32::INFINITY] {
            let o = Options { epilogue: Epilogue::activation(Activation::LeakyRelu(s)), ..Options::default() };
            assert!(matches!(o.validate(), Err(Error::InvalidSlope(_))), "{s}");
        }
        let leaky = Options { epilogue: Epilogue::activation(Activation::LeakyRelu(0.0)), ..Options::default() };
        assert_eq!(leaky.validate(), Ok(()));
        let edge = Options { eps: 0.0, momentum: Momentum::Exponential(1.0), ..Options::default() };
        assert_eq!(edge.validate(), Ok(()));
    }
}
