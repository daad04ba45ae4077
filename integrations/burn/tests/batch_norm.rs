//! The Burn module against wgpu-batchnorm's f64 reference (computed from the
//! raw data) and against `burn::nn::BatchNorm`, on Burn's own device.

mod common;

use common::{normal, rel_err, shared, tensor, values, widen};

use burn::module::{Module, Param};
use burn::tensor::{activation, Device, Tensor};
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Activation, Layout, Options, RunningStats, RunningVariance, Shape};
use wgpu_batchnorm_burn::{BatchNorm, BatchNormConfig};

fn device() -> Device {
    shared().0.clone()
}

/// The shapes: 4-D with an odd channel count and spatial size, a wider 4-D,
/// 2-D (a linear layer's output) and 3-D.
const SHAPES: [&[usize]; 4] = [&[4, 3, 5, 7], &[2, 16, 8, 8], &[16, 32], &[3, 5, 7]];

fn rel_err_f32(out: &[f32], other: &[f32]) -> f64 {
    rel_err(out, &widen(other))
}

/// One shape's data: `x` off-centre, gamma and beta away from 1 and 0, an
/// upstream gradient, and the running statistics a few batches in.
struct Case {
    dims: Vec<usize>,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

impl Case {
    fn new(dims: &[usize], seed: u64) -> Self {
        let (n, c) = (dims.iter().product(), dims[1]);
        Self {
            dims: dims.to_vec(),
            x: normal(n, seed, 2.0, 3.0),
            gamma: normal(c, seed + 1, 1.0, 0.5),
            beta: normal(c, seed + 2, 0.0, 0.5),
            dy: normal(n, seed + 3, 0.0, 1.0),
            running_mean: normal(c, seed + 4, 0.5, 0.5),
            running_var: normal(c, seed + 5, 2.0, 0.3).iter().map(|v| v.abs() + 0.5).collect(),
        }
    }

    fn shape(&self) -> Shape {
        Shape::new(&self.dims, Layout::ChannelsFirst).expect("valid shape")
    }

    fn x_array(&self) -> ArrayD<f32> {
        ArrayD::from_shape_vec(self.dims.clone(), self.x.clone()).expect("shape")
    }

    fn dy_array(&self) -> ArrayD<f32> {
        ArrayD::from_shape_vec(self.dims.clone(), self.dy.clone()).expect("shape")
    }

    /// The f64 reference's inference output at the case's running statistics.
    fn inference_reference(&self, eps: f64) -> ArrayD<f64> {
        let (x, shape) = (self.x_array(), self.shape());
        reference::forward_inference(&shape, &x.view(), Some(&self.gamma), Some(&self.beta), &self.running_mean, &self.running_var, eps)
            .expect("reference")
    }

    /// This crate's module with the case's parameters and running statistics.
    fn ours(&self, device: &Device, biased_running_var: bool) -> BatchNorm {
        let c = self.dims[1];
        let mut bn = BatchNormConfig::new(c).with_biased_running_var(biased_running_var).init(device);
        bn.gamma = Param::from_tensor(tensor(&self.gamma, &[c], device));
        bn.beta = Param::from_tensor(tensor(&self.beta, &[c], device));
        bn.running_mean = burn::module::RunningState::new(tensor(&self.running_mean, &[c], device));
        bn.running_var = burn::module::RunningState::new(tensor(&self.running_var, &[c], device));
        bn
    }

    /// `burn::nn::BatchNorm` with the same parameters and running statistics.
    fn burns(&self, device: &Device) -> burn::nn::BatchNorm {
        let c = self.dims[1];
        let mut bn = burn::nn::BatchNormConfig::new(c).init(device);
        bn.gamma = Param::from_tensor(tensor(&self.gamma, &[c], device));
        bn.beta = Param::from_tensor(tensor(&self.beta, &[c], device));
        bn.running_mean = burn::module::RunningState::new(tensor(&self.running_mean, &[c], device));
        bn.running_var = burn::module::RunningState::new(tensor(&self.running_var, &[c], device));
        bn
    }

    /// The reference's running statistics after one batch.
    fn reference_running(&self, running_variance: RunningVariance) -> RunningStats<f64> {
        let stats = reference::batch_stats(&self.shape(), &self.x_array().view()).expect("reference");
        let mut running = RunningStats {
            mean: self.running_mean.iter().map(|&v| f64::from(v)).collect(),
            var: self.running_var.iter().map(|&v| f64::from(v)).collect(),
            num_batches_tracked: 0,
        };
        let options = Options { running_variance, ..Options::default() };
        reference::update_running(&mut running, &stats, self.shape().per_channel(), &options);
        running
    }
}

/// Runs a training step of `forward` with `dy` as the upstream gradient:
/// `(y, dx, dgamma, dbeta)`.
fn train_step<const D: usize>(
    case: &Case,
    device: &Device,
    gamma: &Param<Tensor<1>>,
    beta: &Param<Tensor<1>>,
    forward: impl Fn(Tensor<D>) -> Tensor<D>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = tensor::<D>(&case.x, &case.dims, device).require_grad();
    let y = forward(x.clone());
    let loss = (y.clone() * tensor::<D>(&case.dy, &case.dims, device)).sum();
    let grads = loss.backward();
    let dx = x.grad(&grads).expect("dx");
    let dgamma = gamma.grad(&grads).expect("dgamma");
    let dbeta = beta.grad(&grads).expect("dbeta");
    (values(y), values(dx), values(dgamma), values(dbeta))
}

fn check_training<const D: usize>(case: &Case) {
    let device = device().autodiff();
    let eps = 1e-5;
    let shape = case.shape();
    let reference = reference::forward_train(&shape, &case.x_array().view(), Some(&case.gamma), Some(&case.beta), eps).expect("reference");
    let grads = reference::backward_train(
        &shape,
        &case.dy_array().view(),
        &case.x_array().view(),
        &reference.save_mean,
        &reference.save_invstd,
        Some(&case.gamma),
    )
    .expect("reference");

    let ours = case.ours(&device, false);
    let (y, dx, dgamma, dbeta) = train_step::<D>(case, &device, &ours.gamma, &ours.beta, |x| ours.forward(x));
    let dims = &case.dims;
    for (what, out, reference) in [
        ("y", &y, reference.y.as_slice().expect("standard order")),
        ("dx", &dx, grads.dx.as_slice().expect("standard order")),
        ("dgamma", &dgamma, &grads.dgamma[..]),
        ("dbeta", &dbeta, &grads.dbeta[..]),
    ] {
        let e = rel_err(out, reference);
        assert!(e <= 1e-5, "{dims:?} {what}: error {e:.2e} against the f64 reference");
    }
    let running = case.reference_running(RunningVariance::Unbiased);
    let (mean, var) = (values(ours.running_mean.value_sync()), values(ours.running_var.value_sync()));
    assert!(rel_err(&mean, &running.mean) <= 1e-5, "{dims:?} running mean {mean:?} against {:?}", running.mean);
    assert!(rel_err(&var, &running.var) <= 1e-5, "{dims:?} running var {var:?} against {:?}", running.var);

    // Burn's module computes in f32 from composed ops: agreement to its accuracy,
    // and the same running statistics once the variance convention matches.
    let burns = case.burns(&device);
    let (by, bdx, bdgamma, bdbeta) = train_step::<D>(case, &device, &burns.gamma, &burns.beta, |x| burns.forward(x));
    for (what, out, theirs) in [("y", &y, &by), ("dx", &dx, &bdx), ("dgamma", &dgamma, &bdgamma), ("dbeta", &dbeta, &bdbeta)] {
        let e = rel_err_f32(out, theirs);
        assert!(e <= 1e-4, "{dims:?} {what}: {e:.2e} from burn::nn::BatchNorm");
    }
    let biased = case.ours(&device, true);
    let _ = train_step::<D>(case, &device, &biased.gamma, &biased.beta, |x| biased.forward(x));
    for (what, ours, theirs) in [
        ("running mean", biased.running_mean.value_sync(), burns.running_mean.value_sync()),
        ("running var", biased.running_var.value_sync(), burns.running_var.value_sync()),
    ] {
        let e = rel_err_f32(&values(ours), &values(theirs));
        assert!(e <= 1e-5, "{dims:?} biased {what}: {e:.2e} from burn::nn::BatchNorm");
    }
}

#[test]
fn training_forward_backward_and_running_statistics_match_the_reference_and_burn() {
    check_training::<4>(&Case::new(SHAPES[0], 1));
    check_training::<4>(&Case::new(SHAPES[1], 2));
    check_training::<2>(&Case::new(SHAPES[2], 3));
    check_training::<3>(&Case::new(SHAPES[3], 4));
}

/// Every call runs on the runner thread of Burn's device: eight threads
/// training at once on the one shared device each still get their own batch's
/// values, and none waits on another forever.
#[test]
fn eight_threads_training_at_once_each_match_the_reference() {
    std::thread::scope(|scope| {
        for i in 0..8u64 {
            scope.spawn(move || {
                let case = Case::new(SHAPES[i as usize % SHAPES.len()], 100 + 10 * i);
                match case.dims.len() {
                    4 => check_training::<4>(&case),
                    3 => check_training::<3>(&case),
                    _ => check_training::<2>(&case),
                }
            });
        }
    });
}

fn check_eval<const D: usize>(case: &Case) {
    let eps = 1e-5;
    let shape = case.shape();
    let reference = case.inference_reference(eps);
    let dims = &case.dims;

    // valid(): a plain device, no autodiff.
    let device = device().autodiff();
    let ours = case.ours(&device, false).valid();
    let plain = device.clone().without_autodiff();
    let y = values(ours.forward(tensor::<D>(&case.x, dims, &plain)));
    let e = rel_err(&y, reference.as_slice().expect("standard order"));
    assert!(e <= 1e-5, "{dims:?} eval y: error {e:.2e}");
    let theirs = values(case.burns(&device).valid().forward(tensor::<D>(&case.x, dims, &plain)));
    assert!(rel_err_f32(&y, &theirs) <= 1e-5, "{dims:?} eval y against burn::nn::BatchNorm");
    assert_eq!(values(ours.running_mean.value_sync()), case.running_mean, "eval must not touch the running mean");

    // A frozen layer on the training device: the running statistics are
    // constants, and gradients flow through them (the inference backward).
    let mut frozen = case.ours(&device, false);
    frozen.training = Param::from_bool(false);
    let (y2, dx, dgamma, dbeta) = train_step::<D>(case, &device, &frozen.gamma, &frozen.beta, |x| frozen.forward(x));
    assert_eq!(y, y2, "{dims:?}: eval forward on the autodiff device");
    let grads = reference::backward_inference(
        &shape,
        &case.dy_array().view(),
        &case.x_array().view(),
        &case.running_mean,
        &case.running_var,
        Some(&case.gamma),
        eps,
    )
    .expect("reference");
    for (what, out, reference) in [
        ("dx", &dx, grads.dx.as_slice().expect("standard order")),
        ("dgamma", &dgamma, &grads.dgamma[..]),
        ("dbeta", &dbeta, &grads.dbeta[..]),
    ] {
        let e = rel_err(out, reference);
        assert!(e <= 1e-5, "{dims:?} frozen {what}: error {e:.2e}");
    }
}

#[test]
fn eval_forward_and_frozen_backward_match_the_reference_and_burn() {
    check_eval::<4>(&Case::new(SHAPES[0], 11));
    check_eval::<4>(&Case::new(SHAPES[1], 12));
    check_eval::<2>(&Case::new(SHAPES[2], 13));
    check_eval::<3>(&Case::new(SHAPES[3], 14));
}

/// Slices of one larger tensor in Burn's pooled memory: one at an offset the
/// kernels bind directly, one at an offset they copy first, and a strided
/// (permuted) view, which is made contiguous first.
#[test]
#[allow(clippy::single_range_in_vec_init, reason = "Burn's slice takes an array of one range per sliced axis")]
fn views_at_offsets_and_strided_views_give_the_reference() {
    let device = device().autodiff();
    let dims = [4, 3, 8, 8];
    let case = Case::new(&dims, 21);
    let whole = Case::new(&[12, 3, 8, 8], 22);
    let per_sample = 3 * 8 * 8;
    // Sample 4 starts 4 * 192 * 4 = 3072 bytes in: aligned to any device's
    // storage alignment (at most 256). Sample 1 starts 768 bytes in, also
    // aligned; sample 5 at 3840 bytes, and an odd row start of 1 value
    // (4 bytes) is not.
    let mut big = whole.x.clone();
    big[4 * per_sample..8 * per_sample].copy_from_slice(&case.x);
    let big_tensor = tensor::<4>(&big, &[12, 3, 8, 8], &device);
    let view = big_tensor.clone().slice([4..8]);
    let reference =
        reference::forward_train(&case.shape(), &case.x_array().view(), Some(&case.gamma), Some(&case.beta), 1e-5).expect("reference");
    let bn = case.ours(&device, false);
    let y = values(bn.forward(view));
    assert!(rel_err(&y, reference.y.as_slice().expect("standard order")) <= 1e-5, "aligned view");

    // Flat values 1.. of a larger 1-D tensor, reshaped: an offset of 4 bytes.
    let numel = case.x.len();
    let mut flat = vec![7.0f32; numel + 1];
    flat[1..].copy_from_slice(&case.x);
    let unaligned = tensor::<1>(&flat, &[numel + 1], &device).slice([1..numel + 1]).reshape(dims);
    let y = values(case.ours(&device, false).forward(unaligned));
    assert!(rel_err(&y, reference.y.as_slice().expect("standard order")) <= 1e-5, "unaligned view");

    // [N, H, W, C] data seen as [N, C, H, W] through a permutation: strided.
    let nhwc: Vec<f32> = {
        let mut v = vec![0.0; numel];
        for (i, &value) in case.x.iter().enumerate() {
            let (n, c, h, w) = (i / 192, (i / 64) % 3, (i / 8) % 8, i % 8);
            v[((n * 8 + h) * 8 + w) * 3 + c] = value;
        }
        v
    };
    let strided = tensor::<4>(&nhwc, &[4, 8, 8, 3], &device).permute([0, 3, 1, 2]);
    let y = values(case.ours(&device, false).forward(strided));
    assert!(rel_err(&y, reference.y.as_slice().expect("standard order")) <= 1e-5, "permuted view");
}

#[test]
fn the_module_matches_burns_config_and_initialization() {
    let device = device();
    let bn = BatchNormConfig::new(5).init(&device);
    let theirs = burn::nn::BatchNormConfig::new(5).init(&device);
    assert_eq!((bn.epsilon, bn.momentum), (theirs.epsilon, theirs.momentum));
    for (ours, theirs) in [
        (bn.gamma.val(), theirs.gamma.val()),
        (bn.beta.val(), theirs.beta.val()),
        (bn.running_mean.value_sync(), theirs.running_mean.value_sync()),
        (bn.running_var.value_sync(), theirs.running_var.value_sync()),
    ] {
        assert_eq!(values(ours), values(theirs));
    }
    assert!(!bn.biased_running_var, "PyTorch's unbiased running variance by default");
}

/// Mixed precision: `x` in f16 (cast by Burn from an f32 leaf), the module's
/// parameters and running statistics f32. `y` and `dx` come back in f16,
/// `dgamma` and `dbeta` in f32, against the f64 reference on the same
/// f16-rounded `x` and `dy`: normwise within f16's rounding (`y`, `dx`) and
/// 1e-5 (`dgamma`, `dbeta`, the running statistics). Burn's wgpu runtime
/// makes f16 tensors only on a device with `SHADER_F16` (its kernels declare
/// `enable f16`): where the device has none (llvmpipe through GL), there is
/// no f16 tensor to pass, and the test says so and checks nothing.
#[test]
fn f16_activations_with_f32_parameters_match_the_reference() {
    use burn::tensor::FloatDType;
    if !shared().1.shader_f16() {
        eprintln!("not run: Burn has no f16 tensors on {} (no SHADER_F16)", shared().1.describe());
        return;
    }
    let device = device().autodiff();
    let case = Case::new(SHAPES[0], 7);
    let dims = &case.dims;
    let ours = case.ours(&device, false);
    let x = tensor::<4>(&case.x, dims, &device).require_grad();
    let y = ours.forward(x.clone().cast(FloatDType::F16));
    assert_eq!(y.dtype(), burn::tensor::DType::F16, "y keeps x's dtype");
    let y = y.cast(FloatDType::F32);
    let loss = (y.clone() * tensor::<4>(&case.dy, dims, &device)).sum();
    let grads = loss.backward();
    let dx = values(x.grad(&grads).expect("dx"));
    let (dgamma, dbeta) = (values(ours.gamma.grad(&grads).expect("dgamma")), values(ours.beta.grad(&grads).expect("dbeta")));
    let round = |v: &[f32]| v.iter().map(|&v| wgpu_batchnorm::half::f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
    let (x16, dy16) = (round(&case.x), round(&case.dy));
    let shape = case.shape();
    let x16a = ArrayD::from_shape_vec(dims.clone(), x16).expect("shape");
    let dy16a = ArrayD::from_shape_vec(dims.clone(), dy16).expect("shape");
    let reference = reference::forward_train(&shape, &x16a.view(), Some(&case.gamma), Some(&case.beta), 1e-5).expect("reference");
    let want =
        reference::backward_train(&shape, &dy16a.view(), &x16a.view(), &reference.save_mean, &reference.save_invstd, Some(&case.gamma))
            .expect("reference");
    for (what, out, reference, bound) in [
        ("y", &values(y), reference.y.as_slice().expect("standard order"), 1e-3),
        ("dx", &dx, want.dx.as_slice().expect("standard order"), 1e-3),
        ("dgamma", &dgamma, &want.dgamma[..], 1e-5),
        ("dbeta", &dbeta, &want.dbeta[..], 1e-5),
    ] {
        let e = rel_err(out, reference);
        assert!(e <= bound, "{dims:?} f16 {what}: error {e:.2e} against the f64 reference (bound {bound:.0e})");
    }
    let stats = reference::batch_stats(&shape, &x16a.view()).expect("reference");
    let mut running = RunningStats {
        mean: case.running_mean.iter().map(|&v| f64::from(v)).collect(),
        var: case.running_var.iter().map(|&v| f64::from(v)).collect(),
        num_batches_tracked: 0,
    };
    reference::update_running(&mut running, &stats, shape.per_channel(), &Options::default());
    assert!(rel_err(&values(ours.running_mean.value_sync()), &running.mean) <= 1e-5, "running mean");
    assert!(rel_err(&values(ours.running_var.value_sync()), &running.var) <= 1e-5, "running var");
}

/// The configuration the tests above ran in: Burn's `Cube` is the fused
/// backend exactly with the feature `fusion` (Burn's default), so that CI's
/// two runs cover both of Burn's configurations.
#[test]
fn the_tests_run_on_the_configured_backend() {
    let cube = std::any::type_name::<burn::backend::Cube>();
    assert_eq!(cube.contains("Fusion"), cfg!(feature = "fusion"), "burn::backend::Cube is {cube}");
}

/// A trained `Conv2d` and `BatchNorm` folded into one `Conv2d`: its output
/// is the pair's in eval mode (the convolution by Burn, batch norm by the
/// kernels), with and without the convolution's bias; a `BatchNorm` of
/// other channels is an error.
#[test]
fn a_conv2d_and_batch_norm_fold_into_one_conv2d() {
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    let device = device();
    let (c_in, c_out, dims) = (3, 8, [2usize, 3, 9, 9]);
    let x = normal(dims.iter().product(), 71, 0.5, 1.5);
    for bias in [true, false] {
        let conv = Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Same).with_bias(bias).init(&device);
        let case = Case::new(&[2, c_out, 9, 9], 72);
        let bn = case.ours(&device, false);
        let want = values(bn.forward(conv.forward(tensor::<4>(&x, &dims, &device))));
        let folded = wgpu_batchnorm_burn::fold_conv2d(&conv, &bn).expect("fold");
        assert!(folded.bias.is_some());
        let got = values(folded.forward(tensor::<4>(&x, &dims, &device)));
        let e = rel_err_f32(&got, &want);
        assert!(e <= 1e-5, "bias {bias}: the folded conv is {e:.2e} from conv then batch norm");
    }
    let conv = Conv2dConfig::new([c_in, c_out], [3, 3]).init(&device);
    let other = BatchNormConfig::new(c_out + 1).init(&device);
    let e = wgpu_batchnorm_burn::fold_conv2d(&conv, &other).unwrap_err();
    assert!(matches!(e, wgpu_batchnorm_burn::Error::Kernels(wgpu_batchnorm::Error::ShapeMismatch { .. })), "{e}");
}

/// The fused tails, `relu(bn(x))` and `relu(bn(x) + residual)`: forward,
/// `dx`, `dresidual`, `dgamma`, `dbeta` and the running statistics, in
/// training and frozen (eval statistics on the autodiff device), against
/// the f64 reference's epilogue over its batch norm and against
/// `burn::nn::BatchNorm` followed by Burn's own add and ReLU.
fn check_fused<const D: usize>(case: &Case, with_residual: bool) {
    let device = device().autodiff();
    let (eps, dims, shape) = (1e-5, &case.dims, case.shape());
    let residual = normal(case.x.len(), 99, 0.0, 1.0);
    let residual_array = ArrayD::from_shape_vec(dims.clone(), residual.clone()).expect("shape");
    let (x64, dz64) = (case.x_array().mapv(f64::from), case.dy_array().mapv(f64::from));
    let what = if with_residual { "relu(bn(x) + r)" } else { "relu(bn(x))" };

    for training in [true, false] {
        // The reference: batch norm's output and its backward at the
        // statistics the module uses, around the epilogue's.
        let (y, stats) = if training {
            let f = reference::forward_train(&shape, &case.x_array().view(), Some(&case.gamma), Some(&case.beta), eps).expect("reference");
            (f.y, Some((f.save_mean, f.save_invstd)))
        } else {
            (case.inference_reference(eps), None)
        };
        let z = reference::epilogue(&y.view(), with_residual.then_some(&residual_array.view()), Activation::Relu).expect("reference");
        let dpre = reference::epilogue_grad(&dz64.view(), &z.view(), Activation::Relu).expect("reference");
        let grads = match &stats {
            Some((mean, invstd)) => reference::backward_train(&shape, &dpre.view(), &x64.view(), mean, invstd, Some(&case.gamma)),
            None => reference::backward_inference(
                &shape,
                &dpre.view(),
                &x64.view(),
                &case.running_mean,
                &case.running_var,
                Some(&case.gamma),
                eps,
            ),
        }
        .expect("reference");

        // One step of `tail` over a module's gamma and beta: (z, dx, dresidual, dgamma, dbeta).
        let step = |gamma: &Param<Tensor<1>>, beta: &Param<Tensor<1>>, tail: &dyn Fn(Tensor<D>, Tensor<D>) -> Tensor<D>| {
            let x = tensor::<D>(&case.x, dims, &device).require_grad();
            let r = tensor::<D>(&residual, dims, &device).require_grad();
            let z = tail(x.clone(), r.clone());
            let grads = (z.clone() * tensor::<D>(&case.dy, dims, &device)).sum().backward();
            let dr = if with_residual { values(r.grad(&grads).expect("dresidual")) } else { Vec::new() };
            let (dgamma, dbeta) = (gamma.grad(&grads).expect("dgamma"), beta.grad(&grads).expect("dbeta"));
            (values(z), values(x.grad(&grads).expect("dx")), dr, values(dgamma), values(dbeta))
        };
        let mut ours = case.ours(&device, false);
        ours.training = Param::from_bool(training);
        let out = step(&ours.gamma, &ours.beta, &|x, r| if with_residual { ours.forward_add_relu(x, r) } else { ours.forward_relu(x) });
        let dpre_slice = dpre.as_slice().expect("standard order");
        let mut checks = vec![
            ("z", &out.0, z.as_slice().expect("standard order")),
            ("dx", &out.1, grads.dx.as_slice().expect("standard order")),
            ("dgamma", &out.3, &grads.dgamma[..]),
            ("dbeta", &out.4, &grads.dbeta[..]),
        ];
        if with_residual {
            checks.push(("dresidual", &out.2, dpre_slice));
        }
        for (name, got, want) in checks {
            let e = rel_err(got, want);
            assert!(e <= 1e-5, "{dims:?} {what} training {training} {name}: error {e:.2e} against the f64 reference");
        }
        let (mean, var) = (values(ours.running_mean.value_sync()), values(ours.running_var.value_sync()));
        if training {
            let running = case.reference_running(RunningVariance::Unbiased);
            assert!(rel_err(&mean, &running.mean) <= 1e-5, "{dims:?} {what} running mean");
            assert!(rel_err(&var, &running.var) <= 1e-5, "{dims:?} {what} running var");
        } else {
            assert_eq!(
                (mean, var),
                (case.running_mean.clone(), case.running_var.clone()),
                "{dims:?} {what}: eval keeps the running statistics"
            );
        }

        let mut burns = case.burns(&device);
        burns.training = Param::from_bool(training);
        let theirs = step(&burns.gamma, &burns.beta, &|x, r| {
            let y = burns.forward(x);
            activation::relu(if with_residual { y + r } else { y })
        });
        for (name, got, want) in [
            ("z", &out.0, &theirs.0),
            ("dx", &out.1, &theirs.1),
            ("dresidual", &out.2, &theirs.2),
            ("dgamma", &out.3, &theirs.3),
            ("dbeta", &out.4, &theirs.4),
        ] {
            if !got.is_empty() {
                let e = rel_err_f32(got, want);
                assert!(e <= 1e-4, "{dims:?} {what} training {training} {name}: {e:.2e} from burn::nn::BatchNorm and Burn's ReLU");
            }
        }
    }
}

#[test]
fn relu_and_residual_relu_tails_match_the_reference_and_burn() {
    for with_residual in [false, true] {
        check_fused::<4>(&Case::new(SHAPES[0], 21), with_residual);
        check_fused::<4>(&Case::new(SHAPES[1], 22), with_residual);
        check_fused::<2>(&Case::new(SHAPES[2], 23), with_residual);
    }
}
