//! A trained `Conv2d` followed by a [`BatchNorm`] folded into one `Conv2d`
//! for inference ([`fold_conv2d`]).

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor, TensorData};
use wgpu_batchnorm::{fold, ndarray::ArrayD, Affine, Options, RunningStats};

use crate::module::BatchNorm;
use crate::{Error, Result};

/// The values of `tensor` as f32 on the host.
fn host<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Burn(format!("reading a parameter: {e:?}")))
}

/// `conv` followed by `bn` in inference mode as one `Conv2d`, for a model
/// that no longer trains: per output channel `c`, with
/// `k_c = gamma_c / sqrt(running_var_c + eps)`, the weights become `W * k_c`
/// and the bias `(b_c - running_mean_c) * k_c + beta_c` (a missing bias
/// counts as zero). Computed on the host in f64
/// ([`wgpu_batchnorm::fold::fold`]) and rounded once, in the weights' dtype,
/// on their device. The folded layer is a plain `burn::nn::conv::Conv2d`:
/// `folded.forward(x)` is `bn.forward(conv.forward(x))` without autodiff, one
/// pass over the activations fewer.
///
/// [`Error::Kernels`] where `bn` has not `conv`'s output channels.
///
/// ```no_run
/// use burn::nn::conv::Conv2dConfig;
/// use wgpu_batchnorm_burn::{fold_conv2d, shared_device, BatchNormConfig};
/// let (device, _ctx) = shared_device()?;
/// let conv = Conv2dConfig::new([3, 16], [3, 3]).init(&device);
/// let bn = BatchNormConfig::new(16).init(&device);
/// let folded = fold_conv2d(&conv, &bn)?; // for inference: conv then bn in one layer
/// # let _ = folded;
/// # Ok::<(), wgpu_batchnorm_burn::Error>(())
/// ```
pub fn fold_conv2d(conv: &Conv2d, bn: &BatchNorm) -> Result<Conv2d> {
    let weight = conv.weight.val();
    let (device, dtype, dims) = (weight.device(), weight.dtype(), weight.dims());
    let weight = ArrayD::from_shape_vec(dims.to_vec(), host(weight)?).map_err(|e| Error::Burn(format!("the weights: {e}")))?;
    let bias = conv.bias.as_ref().map(|b| host(b.val())).transpose()?;
    let (gamma, beta) = (host(bn.gamma.val())?, host(bn.beta.val())?);
    let running = RunningStats { mean: host(bn.running_mean.value())?, var: host(bn.running_var.value())?, num_batches_tracked: 0 };
    let options = Options { eps: bn.epsilon as f32, affine: true, track_running_stats: true, ..Options::default() };
    let affine = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let folded = fold::fold(&weight.view(), bias.as_deref(), affine, &running, &options)?;
    let channels = folded.bias.len();
    let weight = Tensor::<4>::from_data(TensorData::new(folded.weight.into_raw_vec_and_offset().0, dims.to_vec()), &device);
    let bias = Tensor::<1>::from_data(TensorData::new(folded.bias, [channels]), &device);
    let mut out = conv.clone();
    out.weight = Param::from_tensor(in_dtype(weight, dtype));
    out.bias = Some(Param::from_tensor(in_dtype(bias, dtype)));
    Ok(out)
}

fn in_dtype<const D: usize>(tensor: Tensor<D>, dtype: DType) -> Tensor<D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}
