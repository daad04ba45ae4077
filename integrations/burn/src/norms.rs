//! [`LayerNorm`], [`RmsNorm`], [`GroupNorm`] and [`InstanceNorm`]: the
//! configs, fields, defaults and behaviour of their `burn::nn` namesakes,
//! running this crate's kernels ([`NormBackend`]). None keeps running
//! statistics, so training and inference compute the same; on an autodiff
//! device the backward is the kernels' backward, one op in Burn's graph.

use burn::backend::Dispatch;
use burn::config::Config;
use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::norm_backend::{NormBackend, RowNorm};

/// Runs `kind` over `input` with the given parameters (`None`: the op has
/// none, or no `beta`).
fn forward<const D: usize>(
    input: Tensor<D>,
    gamma: Option<&Param<Tensor<1>>>,
    beta: Option<&Param<Tensor<1>>>,
    kind: RowNorm,
    epsilon: f64,
) -> Tensor<D> {
    let device = input.device();
    let affine = gamma.is_some();
    // What the op does not read: a tensor of one zero, tracked by nothing.
    let unused = || Tensor::<1>::zeros([1], &device);
    let gamma = gamma.map_or_else(unused, Param::val);
    let beta = match beta {
        Some(beta) => beta.val(),
        // Layer norm without a bias: a zero shift, whose gradient is dropped.
        None if affine && kind == RowNorm::Layer => gamma.zeros_like().detach(),
        None => unused(),
    };
    let (y, _, _) = Dispatch::norm_forward_wgpu(input.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), kind, affine, epsilon);
    Tensor::from_dispatch(y)
}

/// [`LayerNorm`]'s configuration: `burn::nn::LayerNormConfig`'s fields and defaults.
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// The size of the input features.
    pub d_model: usize,
    /// Added to the variance for numerical stability. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Whether a bias (beta) is applied. Default: true.
    #[config(default = true)]
    pub bias: bool,
}

/// Layer normalization over the last axis, `[..., d_model]`: a drop-in for
/// `burn::nn::LayerNorm` (same fields and initialization) on this crate's
/// kernels, for f32, f16 and bf16 inputs.
///
/// ```no_run
/// use burn::tensor::{Distribution, Tensor};
/// use wgpu_batchnorm_burn::{shared_device, LayerNormConfig};
/// let (device, _ctx) = shared_device()?;
/// let device = device.autodiff();
/// let ln = LayerNormConfig::new(768).init(&device);
/// let x = Tensor::<3>::random([8, 128, 768], Distribution::Default, &device).require_grad();
/// let grads = ln.forward(x.clone()).sum().backward();
/// let (dx, dgamma) = (x.grad(&grads), ln.gamma.grad(&grads));
/// # let _ = (dx, dgamma);
/// # Ok::<(), wgpu_batchnorm_burn::Error>(())
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct LayerNorm {
    /// The learnable scale.
    pub gamma: Param<Tensor<1>>,
    /// The learnable shift, where the config has a bias.
    pub beta: Option<Param<Tensor<1>>>,
    /// Added to the variance for numerical stability.
    pub epsilon: f64,
}

impl LayerNormConfig {
    /// A [`LayerNorm`] with gamma = 1 and beta = 0.
    pub fn init(&self, device: &Device) -> LayerNorm {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: self.bias.then(|| Initializer::Zeros.init([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

impl LayerNorm {
    /// Normalizes `input`, `[..., d_model]`.
    ///
    /// # Panics
    ///
    /// Where the last axis is not `d_model`, the input is not f32, f16 or
    /// bf16, or its device was not registered with this crate.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let [d_model] = self.gamma.shape().dims();
        assert!(input.dims().last() == Some(&d_model), "expected [..., {d_model}], got {:?}", input.dims());
        forward(input, Some(&self.gamma), self.beta.as_ref(), RowNorm::Layer, self.epsilon)
    }
}

impl ModuleDisplay for LayerNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_model] = self.gamma.shape().dims();
        content.add("d_model", &d_model).add("epsilon", &self.epsilon).optional()
    }
}

/// [`RmsNorm`]'s configuration: `burn::nn::RmsNormConfig`'s fields and
/// defaults (its epsilon is Burn's 1e-5, not PyTorch's `f32::EPSILON`).
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// The size of the input features.
    pub d_model: usize,
    /// Added to the mean square for numerical stability. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// RMS normalization over the last axis, `x / sqrt(mean(x^2) + eps) *
/// gamma`: a drop-in for `burn::nn::RmsNorm` on this crate's kernels.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct RmsNorm {
    /// The learnable scale.
    pub gamma: Param<Tensor<1>>,
    /// Added to the mean square for numerical stability.
    pub epsilon: f64,
}

impl RmsNormConfig {
    /// An [`RmsNorm`] with gamma = 1.
    ///
    /// # Panics
    ///
    /// Where `epsilon` is not positive, as `burn::nn::RmsNormConfig::init` does.
    pub fn init(&self, device: &Device) -> RmsNorm {
        assert!(self.epsilon > 0.0, "epsilon must be positive.");
        RmsNorm { gamma: Initializer::Ones.init([self.d_model], device), epsilon: self.epsilon }
    }
}

impl RmsNorm {
    /// Normalizes `x`, `[..., d_model]`.
    ///
    /// # Panics
    ///
    /// As [`LayerNorm::forward`].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [d_model] = self.gamma.shape().dims();
        assert!(x.dims().last() == Some(&d_model), "expected [..., {d_model}], got {:?}", x.dims());
        forward(x, Some(&self.gamma), None, RowNorm::Rms, self.epsilon)
    }
}

impl ModuleDisplay for RmsNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_model] = self.gamma.shape().dims();
        content.add("d_model", &d_model).add("epsilon", &self.epsilon).optional()
    }
}

/// [`GroupNorm`]'s configuration: `burn::nn::GroupNormConfig`'s fields and defaults.
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    /// The number of groups the channels are divided into.
    pub num_groups: usize,
    /// The number of channels.
    pub num_channels: usize,
    /// Added to the variance for numerical stability. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Whether there are per-channel gamma and beta. Default: true.
    #[config(default = true)]
    pub affine: bool,
}

/// Group normalization of `[batch, channels, ...]`: a drop-in for
/// `burn::nn::GroupNorm` on this crate's kernels.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct GroupNorm {
    /// The learnable scale, where affine.
    pub gamma: Option<Param<Tensor<1>>>,
    /// The learnable shift, where affine.
    pub beta: Option<Param<Tensor<1>>>,
    /// The number of groups.
    pub num_groups: usize,
    /// The number of channels.
    pub num_channels: usize,
    /// Added to the variance for numerical stability.
    pub epsilon: f64,
    /// Whether there are per-channel gamma and beta.
    pub affine: bool,
}

/// Ones and zeros per channel where `affine`.
fn channel_affine(affine: bool, channels: usize, device: &Device) -> (Option<Param<Tensor<1>>>, Option<Param<Tensor<1>>>) {
    match affine {
        true => (Some(Initializer::Ones.init([channels], device)), Some(Initializer::Zeros.init([channels], device))),
        false => (None, None),
    }
}

impl GroupNormConfig {
    /// A [`GroupNorm`] with gamma = 1 and beta = 0 where affine.
    ///
    /// # Panics
    ///
    /// Where `num_channels` is not a multiple of `num_groups`, as `burn::nn::GroupNormConfig::init` does.
    pub fn init(&self, device: &Device) -> GroupNorm {
        assert_eq!(self.num_channels % self.num_groups, 0, "The number of channels must be divisible by the number of groups");
        let (gamma, beta) = channel_affine(self.affine, self.num_channels, device);
        GroupNorm { gamma, beta, num_groups: self.num_groups, num_channels: self.num_channels, epsilon: self.epsilon, affine: self.affine }
    }
}

/// Checks `[_, channels, ...]`, as Burn's modules do.
fn check_channels(dims: &[usize], channels: usize) {
    assert!(dims.len() >= 2 && dims[1] == channels, "expected [batch, {channels}, ...], got {dims:?}");
}

impl GroupNorm {
    /// Normalizes `input`, `[batch, num_channels, ...]`.
    ///
    /// # Panics
    ///
    /// Where the second axis is not `num_channels`, the input is not f32, f16
    /// or bf16, or its device was not registered with this crate.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        check_channels(&input.dims(), self.num_channels);
        forward(input, self.gamma.as_ref(), self.beta.as_ref(), RowNorm::Group(self.num_groups), self.epsilon)
    }
}

impl ModuleDisplay for GroupNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("num_groups", &self.num_groups)
            .add("num_channels", &self.num_channels)
            .add("epsilon", &self.epsilon)
            .add("affine", &self.affine)
            .optional()
    }
}

/// [`InstanceNorm`]'s configuration: `burn::nn::InstanceNormConfig`'s fields and defaults.
#[derive(Config, Debug)]
pub struct InstanceNormConfig {
    /// The number of channels.
    pub num_channels: usize,
    /// Added to the variance for numerical stability. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Whether there are per-channel gamma and beta. Default: true.
    #[config(default = true)]
    pub affine: bool,
}

/// Instance normalization of `[batch, channels, ...]` (each sample's channel
/// on its own, no running statistics, as Burn's): a drop-in for
/// `burn::nn::InstanceNorm` on this crate's kernels.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct InstanceNorm {
    /// The learnable scale, where affine.
    pub gamma: Option<Param<Tensor<1>>>,
    /// The learnable shift, where affine.
    pub beta: Option<Param<Tensor<1>>>,
    /// The number of channels.
    pub num_channels: usize,
    /// Added to the variance for numerical stability.
    pub epsilon: f64,
    /// Whether there are per-channel gamma and beta.
    pub affine: bool,
}

impl InstanceNormConfig {
    /// An [`InstanceNorm`] with gamma = 1 and beta = 0 where affine.
    pub fn init(&self, device: &Device) -> InstanceNorm {
        let (gamma, beta) = channel_affine(self.affine, self.num_channels, device);
        InstanceNorm { gamma, beta, num_channels: self.num_channels, epsilon: self.epsilon, affine: self.affine }
    }
}

impl InstanceNorm {
    /// Normalizes `input`, `[batch, num_channels, ...]`.
    ///
    /// # Panics
    ///
    /// As [`GroupNorm::forward`].
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        check_channels(&input.dims(), self.num_channels);
        forward(input, self.gamma.as_ref(), self.beta.as_ref(), RowNorm::Instance, self.epsilon)
    }
}

impl ModuleDisplay for InstanceNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content.add("num_channels", &self.num_channels).add("epsilon", &self.epsilon).add("affine", &self.affine).optional()
    }
}
