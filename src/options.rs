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

/// The options of a batch-norm layer, with PyTorch's defaults.
///
/// ```
/// use wgpu_batchnorm::Options;
/// let o = Options { eps: 1e-3, ..Options::default() };
/// assert!(o.affine && o.track_running_stats);
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
}

impl Default for Options {
    fn default() -> Self {
        Self { eps: DEFAULT_EPS, momentum: Momentum::default(), affine: true, track_running_stats: true }
    }
}

impl Options {
    /// Checks `eps` and `momentum`.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        self.momentum.validate()
    }
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
