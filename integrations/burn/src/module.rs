//! [`BatchNorm`]: the config, parameters and behaviour of `burn::nn::BatchNorm`,
//! running this crate's kernels.

use burn::backend::Dispatch;
use burn::config::Config;
use burn::module::{Content, DisplaySettings, Flag, Module, ModuleDisplay, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::backend::BatchNormBackend;

/// [`BatchNorm`]'s configuration: `burn::nn::BatchNormConfig`'s fields and
/// defaults, plus the running-variance convention.
#[derive(Config, Debug)]
pub struct BatchNormConfig {
    /// The number of features (channels). Must be greater than zero.
    pub num_features: usize,
    /// Added to the variance for numerical stability. Default: 1e-5.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// The weight of the new batch in the running statistics, in `[0, 1]`. Default: 0.1.
    #[config(default = 0.1)]
    pub momentum: f64,
    /// Average the batch's biased variance into `running_var`, as
    /// `burn::nn::BatchNorm` does, instead of the unbiased one (`m / (m - 1)`
    /// times it), as PyTorch and this crate do. Default: false.
    #[config(default = false)]
    pub biased_running_var: bool,
}

/// Batch normalization over `[batch, channels, ...]` with this crate's
/// kernels: a drop-in for `burn::nn::BatchNorm` (same fields, same
/// train/eval selection, same initialization).
///
/// In training (an autodiff device and the `training` flag set) the forward
/// normalizes with the batch's statistics and updates `running_mean` and
/// `running_var`; its backward is the kernels' backward, registered with
/// Burn's autodiff as one op. Otherwise it normalizes with the running
/// statistics. The input may be f32, f16 or bf16 (the output has its dtype;
/// the parameters and running statistics may be any of the three), on a device from
/// [`shared_device`](crate::shared_device) or [`attach`](crate::attach).
///
/// The one difference from `burn::nn::BatchNorm`: `running_var` averages the
/// unbiased batch variance (PyTorch's rule) unless the config's
/// `biased_running_var` asks for Burn's.
///
/// ```no_run
/// use burn::tensor::{Distribution, Tensor};
/// use wgpu_batchnorm_burn::{shared_device, BatchNormConfig};
/// let (device, _ctx) = shared_device()?;
/// let device = device.autodiff();
/// let bn = BatchNormConfig::new(16).init(&device);
/// let x = Tensor::<4>::random([8, 16, 32, 32], Distribution::Default, &device);
/// let y = bn.forward(x);
/// let grads = y.sum().backward();
/// let dgamma = bn.gamma.grad(&grads);
/// # let _ = dgamma;
/// # Ok::<(), wgpu_batchnorm_burn::Error>(())
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct BatchNorm {
    /// The learnable scale gamma.
    pub gamma: Param<Tensor<1>>,
    /// The learnable shift beta.
    pub beta: Param<Tensor<1>>,
    /// Whether training behaviour is enabled for this layer.
    pub training: Param<Flag>,
    /// The running mean.
    pub running_mean: RunningState<Tensor<1>>,
    /// The running variance.
    pub running_var: RunningState<Tensor<1>>,
    /// The new batch's weight in the running statistics.
    pub momentum: f64,
    /// Added to the variance for numerical stability.
    pub epsilon: f64,
    /// Whether `running_var` averages the biased batch variance.
    pub biased_running_var: bool,
}

impl BatchNormConfig {
    /// A [`BatchNorm`] with gamma = 1, beta = 0, running mean 0 and variance 1.
    ///
    /// # Panics
    ///
    /// Where `num_features` is zero, `epsilon` is not finite and positive, or
    /// `momentum` is not finite and within `[0, 1]`, as `burn::nn::BatchNormConfig::init` does.
    pub fn init(&self, device: &Device) -> BatchNorm {
        assert!(self.num_features > 0, "num_features must be greater than zero.");
        assert!(self.epsilon.is_finite() && self.epsilon > 0.0, "epsilon must be finite and positive.");
        assert!(self.momentum.is_finite() && (0.0..=1.0).contains(&self.momentum), "momentum must be finite and within [0, 1].");
        BatchNorm {
            gamma: Initializer::Ones.init([self.num_features], device),
            beta: Initializer::Zeros.init([self.num_features], device),
            training: Param::from_bool(true),
            running_mean: RunningState::new(Tensor::zeros([self.num_features], device)),
            running_var: RunningState::new(Tensor::ones([self.num_features], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
            biased_running_var: self.biased_running_var,
        }
    }
}

/// What a forward applies after batch norm, in the pass that writes its output.
enum Tail<const D: usize> {
    None,
    Relu,
    AddRelu(Box<Tensor<D>>),
}

impl BatchNorm {
    /// Normalizes `input`, `[batch, num_features, ...]`.
    ///
    /// # Panics
    ///
    /// Where the input's rank is below 2, its second axis is not
    /// `num_features`, it is not f32, f16 or bf16, or its device was not registered with
    /// this crate.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.apply(input, Tail::None)
    }

    /// `relu(self.forward(input))` as one op: the ReLU is applied in the pass
    /// that writes batch norm's output, and the backward is one op too (the
    /// gradient masked where the output is zero), for a conv - BatchNorm -
    /// ReLU block. Panics as [`forward`](Self::forward).
    ///
    /// ```no_run
    /// use burn::tensor::{Distribution, Tensor};
    /// use wgpu_batchnorm_burn::{shared_device, BatchNormConfig};
    /// let (device, _ctx) = shared_device()?;
    /// let device = device.autodiff();
    /// let bn = BatchNormConfig::new(16).init(&device);
    /// let x = Tensor::<4>::random([8, 16, 32, 32], Distribution::Default, &device);
    /// let z = bn.forward_relu(x); // burn::tensor::activation::relu(bn.forward(x)), fused
    /// # let _ = z;
    /// # Ok::<(), wgpu_batchnorm_burn::Error>(())
    /// ```
    pub fn forward_relu<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.apply(input, Tail::Relu)
    }

    /// `relu(self.forward(input) + residual)` as one op, a ResNet block's
    /// tail: the residual is added and the ReLU applied in the pass that
    /// writes batch norm's output; the backward is one op that writes the
    /// residual's gradient too.
    ///
    /// # Panics
    ///
    /// As [`forward`](Self::forward), and where `residual`'s shape or dtype is not `input`'s.
    pub fn forward_add_relu<const D: usize>(&self, input: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
        let (dims, residual_dims) = (input.dims(), residual.dims());
        assert_eq!(dims, residual_dims, "the residual must have the input's shape");
        self.apply(input, Tail::AddRelu(Box::new(residual)))
    }

    fn apply<const D: usize>(&self, input: Tensor<D>, tail: Tail<D>) -> Tensor<D> {
        let [num_features] = self.gamma.shape().dims();
        let dims = input.dims();
        assert!(D >= 2 && dims[1] == num_features, "expected [batch, {num_features}, ...], got {dims:?}");
        match input.device().is_autodiff() && self.training.is_enabled() {
            true => self.forward_train(input, tail),
            false => self.forward_inference(input, tail),
        }
    }

    fn forward_inference<const D: usize>(&self, input: Tensor<D>, tail: Tail<D>) -> Tensor<D> {
        let device = input.device();
        let mean = self.running_mean.value().to_device(&device).into_dispatch();
        let var = self.running_var.value().to_device(&device).into_dispatch();
        let (x, gamma, beta) = (input.into_dispatch(), self.gamma.val().into_dispatch(), self.beta.val().into_dispatch());
        let y = match tail {
            Tail::None => Dispatch::batch_norm_inference_wgpu(x, gamma, beta, mean, var, self.epsilon),
            Tail::Relu => Dispatch::batch_norm_relu_inference_wgpu(x, gamma, beta, mean, var, self.epsilon),
            Tail::AddRelu(residual) => {
                Dispatch::batch_norm_add_relu_inference_wgpu(x, residual.into_dispatch(), gamma, beta, mean, var, self.epsilon)
            }
        };
        Tensor::from_dispatch(y)
    }

    fn forward_train<const D: usize>(&self, input: Tensor<D>, tail: Tail<D>) -> Tensor<D> {
        let device = input.device();
        let mean = self.running_mean.value_sync().to_device(&device).into_dispatch();
        let var = self.running_var.value_sync().to_device(&device).into_dispatch();
        let (x, gamma, beta) = (input.into_dispatch(), self.gamma.val().into_dispatch(), self.beta.val().into_dispatch());
        let (eps, momentum, biased) = (self.epsilon, self.momentum, self.biased_running_var);
        let (y, mean, var, _, _) = match tail {
            Tail::None => Dispatch::batch_norm_train_wgpu(x, gamma, beta, mean, var, eps, momentum, biased),
            Tail::Relu => Dispatch::batch_norm_relu_train_wgpu(x, gamma, beta, mean, var, eps, momentum, biased),
            Tail::AddRelu(residual) => {
                Dispatch::batch_norm_add_relu_train_wgpu(x, residual.into_dispatch(), gamma, beta, mean, var, eps, momentum, biased)
            }
        };
        self.running_mean.update(Tensor::<1>::from_dispatch(mean).detach());
        self.running_var.update(Tensor::<1>::from_dispatch(var).detach());
        Tensor::from_dispatch(y)
    }
}

impl ModuleDisplay for BatchNorm {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [num_features] = self.beta.shape().dims();
        content
            .add("num_features", &num_features)
            .add("momentum", &self.momentum)
            .add("epsilon", &self.epsilon)
            .add("biased_running_var", &self.biased_running_var)
            .optional()
    }
}
