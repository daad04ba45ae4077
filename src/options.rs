//! Hyper-parameters of batch normalization and their validation.

use crate::error::{Error, Result};

/// PyTorch's default `eps`.
pub const DEFAULT_EPS: f32 = 1e-5;
/// PyTorch's default `momentum`.
pub const DEFAULT_MOMENTUM: f32 = 0.1;

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
/// or running statistics, are given against them or missing.
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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            eps: DEFAULT_EPS,
            momentum: Momentum::default(),
            affine: true,
            track_running_stats: true,
            running_variance: RunningVariance::Unbiased,
        }
    }
}

impl Options {
    /// Checks `eps` and `momentum`.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        self.momentum.validate()
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

pub(crate) fn check_present(what: &'static str, flag: &str, wanted: bool, given: bool) -> Result<()> {
    if wanted == given {
        return Ok(());
    }
    let reason = if wanted { format!("{flag} is true but none were given") } else { format!("{flag} is false but they were given") };
    Err(Error::OptionsMismatch { what, reason })
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
        let edge = Options { eps: 0.0, momentum: Momentum::Exponential(1.0), ..Options::default() };
        assert_eq!(edge.validate(), Ok(()));
    }
}
