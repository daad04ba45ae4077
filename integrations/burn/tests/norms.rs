//! The family's Burn modules (`LayerNorm`, `RmsNorm`, `GroupNorm`,
//! `InstanceNorm`) against wgpu-batchnorm's f64 reference (computed from the
//! raw data) and against their `burn::nn` namesakes, forward and autodiff
//! backward, on Burn's own device.

mod common;

use common::{normal, rel_err, shared, tensor, values, widen};

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Layout, Norm, Shape};
use wgpu_batchnorm_burn::{GroupNormConfig, InstanceNormConfig, LayerNormConfig, RmsNormConfig};

/// What a training step gives: `y`, and the gradients of `sum(y * dy)`.
struct Step {
    y: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Option<Vec<f32>>,
    dbeta: Option<Vec<f32>>,
}

fn step<const D: usize>(
    x: &[f32],
    dy: &[f32],
    dims: &[usize],
    device: &Device,
    gamma: Option<&Param<Tensor<1>>>,
    beta: Option<&Param<Tensor<1>>>,
    forward: impl Fn(Tensor<D>) -> Tensor<D>,
) -> Step {
    let x = tensor::<D>(x, dims, device).require_grad();
    let y = forward(x.clone());
    let grads = (y.clone() * tensor::<D>(dy, dims, device)).sum().backward();
    Step {
        y: values(y),
        dx: values(x.grad(&grads).expect("dx")),
        dgamma: gamma.map(|g| values(g.grad(&grads).expect("dgamma"))),
        dbeta: beta.map(|b| values(b.grad(&grads).expect("dbeta"))),
    }
}

/// Checks `ours` against the f64 reference of `op` (1e-5) and against
/// `theirs`, Burn's module of the same parameters (1e-4: Burn composes f32
/// ops), in a training step on an autodiff device and a forward on Burn's
/// plain one.
#[allow(clippy::too_many_arguments)]
fn check<const D: usize>(
    what: &str,
    op: &Norm,
    x: &[f32],
    dy: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    ours: Step,
    theirs: Step,
    eval: (Vec<f32>, Vec<f32>),
) {
    let dims = op.dims().to_vec();
    let xa = ArrayD::from_shape_vec(dims.clone(), x.to_vec()).expect("shape");
    let dya = ArrayD::from_shape_vec(dims, dy.to_vec()).expect("shape");
    let forward = reference::norm(op, &xa.view(), gamma, beta, eps).expect("reference");
    let gamma64 = gamma.map(widen);
    let grads = reference::norm_backward(op, &dya.view(), &xa.view(), &forward.mean, &forward.rstd, gamma64.as_deref()).expect("reference");
    let reference_y = forward.y.as_slice().expect("standard order");
    let mut pairs = vec![("y", &ours.y, reference_y.to_vec()), ("dx", &ours.dx, grads.dx.as_slice().expect("standard order").to_vec())];
    if let Some(dgamma) = &ours.dgamma {
        pairs.push(("dgamma", dgamma, grads.dgamma.clone()));
    }
    if let Some(dbeta) = &ours.dbeta {
        pairs.push(("dbeta", dbeta, grads.dbeta.clone()));
    }
    for (name, out, want) in pairs {
        let e = rel_err(out, &want);
        assert!(e <= 1e-5, "{what} {name}: error {e:.2e} against the f64 reference");
    }
    let mut pairs = vec![("y", &ours.y, &theirs.y), ("dx", &ours.dx, &theirs.dx)];
    if let (Some(a), Some(b)) = (&ours.dgamma, &theirs.dgamma) {
        pairs.push(("dgamma", a, b));
    }
    if let (Some(a), Some(b)) = (&ours.dbeta, &theirs.dbeta) {
        pairs.push(("dbeta", a, b));
    }
    for (name, a, b) in pairs {
        let e = rel_err(a, &widen(b));
        assert!(e <= 1e-4, "{what} {name}: {e:.2e} from burn::nn's module");
    }
    let (eval_ours, eval_theirs) = eval;
    let e = rel_err(&eval_ours, reference_y);
    assert!(e <= 1e-5, "{what} y without autodiff: error {e:.2e} against the f64 reference");
    let e = rel_err(&eval_ours, &widen(&eval_theirs));
    assert!(e <= 1e-4, "{what} y without autodiff: {e:.2e} from burn::nn's module");
}

#[test]
fn layer_norm_matches_the_reference_and_burn() {
    let device = shared().0.clone();
    let ad = device.clone().autodiff();
    for (dims, bias) in [([4usize, 6, 48], true), ([3, 5, 33], false)] {
        let (n, d) = (dims.iter().product::<usize>(), dims[2]);
        let (x, dy) = (normal(n, 1, 3.0, 2.0), normal(n, 2, 0.0, 1.0));
        let (gamma, beta) = (normal(d, 3, 1.0, 0.5), normal(d, 4, 0.0, 0.5));
        let config = LayerNormConfig::new(d).with_bias(bias);
        let burn_config = burn::nn::LayerNormConfig::new(d).with_bias(bias);
        let set = |g: &mut Param<Tensor<1>>, b: &mut Option<Param<Tensor<1>>>, device: &Device| {
            *g = Param::from_tensor(tensor(&gamma, &[d], device));
            if let Some(b) = b {
                *b = Param::from_tensor(tensor(&beta, &[d], device));
            }
        };
        let modules = |device: &Device| {
            let (mut ours, mut theirs) = (config.init(device), burn_config.init(device));
            set(&mut ours.gamma, &mut ours.beta, device);
            set(&mut theirs.gamma, &mut theirs.beta, device);
            (ours, theirs)
        };
        let (ours, theirs) = modules(&ad);
        let a = step::<3>(&x, &dy, &dims, &ad, Some(&ours.gamma), ours.beta.as_ref(), |x| ours.forward(x));
        let b = step::<3>(&x, &dy, &dims, &ad, Some(&theirs.gamma), theirs.beta.as_ref(), |x| theirs.forward(x));
        let (ours, theirs) = modules(&device);
        let eval = (values(ours.forward(tensor::<3>(&x, &dims, &device))), values(theirs.forward(tensor::<3>(&x, &dims, &device))));
        let zeros = vec![0.0; d];
        let beta_used = if bias { &beta } else { &zeros };
        let op = Norm::Layer { dims: dims.to_vec(), normalized_shape: vec![d] };
        check::<3>(&format!("LayerNorm {dims:?} bias {bias}"), &op, &x, &dy, Some(&gamma), Some(beta_used), 1e-5, a, b, eval);
    }
}

#[test]
fn rms_norm_matches_the_reference_and_burn() {
    let device = shared().0.clone();
    let ad = device.clone().autodiff();
    let dims = [5usize, 7, 40];
    let (n, d) = (dims.iter().product::<usize>(), dims[2]);
    let (x, dy, gamma) = (normal(n, 11, 1.0, 2.0), normal(n, 12, 0.0, 1.0), normal(d, 13, 1.0, 0.5));
    let modules = |device: &Device| {
        let (mut ours, mut theirs) = (RmsNormConfig::new(d).init(device), burn::nn::RmsNormConfig::new(d).init(device));
        ours.gamma = Param::from_tensor(tensor(&gamma, &[d], device));
        theirs.gamma = Param::from_tensor(tensor(&gamma, &[d], device));
        (ours, theirs)
    };
    let (ours, theirs) = modules(&ad);
    let a = step::<3>(&x, &dy, &dims, &ad, Some(&ours.gamma), None, |x| ours.forward(x));
    let b = step::<3>(&x, &dy, &dims, &ad, Some(&theirs.gamma), None, |x| theirs.forward(x));
    let (ours, theirs) = modules(&device);
    let eval = (values(ours.forward(tensor::<3>(&x, &dims, &device))), values(theirs.forward(tensor::<3>(&x, &dims, &device))));
    let op = Norm::Rms { dims: dims.to_vec(), normalized_shape: vec![d] };
    // Burn's RMSNorm default eps is 1e-5 (PyTorch's is f32::EPSILON): the member keeps Burn's.
    check::<3>(&format!("RmsNorm {dims:?}"), &op, &x, &dy, Some(&gamma), None, 1e-5, a, b, eval);
}

#[test]
fn group_and_instance_norm_match_the_reference_and_burn() {
    let device = shared().0.clone();
    let ad = device.clone().autodiff();
    let dims = [3usize, 6, 5, 7];
    let (n, c) = (dims.iter().product::<usize>(), dims[1]);
    let (x, dy) = (normal(n, 21, -2.0, 3.0), normal(n, 22, 0.0, 1.0));
    let (gamma, beta) = (normal(c, 23, 1.0, 0.5), normal(c, 24, 0.0, 0.5));
    let shape = Shape::new(&dims, Layout::ChannelsFirst).expect("shape");
    for affine in [true, false] {
        let params = |device: &Device| {
            affine.then(|| (Param::from_tensor(tensor(&gamma, &[c], device)), Param::from_tensor(tensor(&beta, &[c], device))))
        };
        let (g, b) = (affine.then_some(&gamma[..]), affine.then_some(&beta[..]));
        for groups in [3, 1] {
            let modules = |device: &Device| {
                let mut ours = GroupNormConfig::new(groups, c).with_affine(affine).init(device);
                let mut theirs = burn::nn::GroupNormConfig::new(groups, c).with_affine(affine).init(device);
                let (p, q) = (params(device).unzip(), params(device).unzip());
                (ours.gamma, ours.beta, theirs.gamma, theirs.beta) = (p.0, p.1, q.0, q.1);
                (ours, theirs)
            };
            let (ours, theirs) = modules(&ad);
            let a = step::<4>(&x, &dy, &dims, &ad, ours.gamma.as_ref(), ours.beta.as_ref(), |x| ours.forward(x));
            let bs = step::<4>(&x, &dy, &dims, &ad, theirs.gamma.as_ref(), theirs.beta.as_ref(), |x| theirs.forward(x));
            let (ours, theirs) = modules(&device);
            let eval = (values(ours.forward(tensor::<4>(&x, &dims, &device))), values(theirs.forward(tensor::<4>(&x, &dims, &device))));
            let op = Norm::Group { shape: shape.clone(), groups };
            check::<4>(&format!("GroupNorm {groups} groups affine {affine}"), &op, &x, &dy, g, b, 1e-5, a, bs, eval);
        }
        let modules = |device: &Device| {
            let mut ours = InstanceNormConfig::new(c).with_affine(affine).init(device);
            let mut theirs = burn::nn::InstanceNormConfig::new(c).with_affine(affine).init(device);
            let (p, q) = (params(device).unzip(), params(device).unzip());
            (ours.gamma, ours.beta, theirs.gamma, theirs.beta) = (p.0, p.1, q.0, q.1);
            (ours, theirs)
        };
        let (ours, theirs) = modules(&ad);
        let a = step::<4>(&x, &dy, &dims, &ad, ours.gamma.as_ref(), ours.beta.as_ref(), |x| ours.forward(x));
        let bs = step::<4>(&x, &dy, &dims, &ad, theirs.gamma.as_ref(), theirs.beta.as_ref(), |x| theirs.forward(x));
        let (ours, theirs) = modules(&device);
        let eval = (values(ours.forward(tensor::<4>(&x, &dims, &device))), values(theirs.forward(tensor::<4>(&x, &dims, &device))));
        check::<4>(&format!("InstanceNorm affine {affine}"), &Norm::Instance(shape.clone()), &x, &dy, g, b, 1e-5, a, bs, eval);
    }
}

/// f16 activations with f32 parameters, as Burn's mixed precision keeps
/// them: the output is f16, within f16's rounding of the f64 reference.
/// Not run (and says so) where Burn has no f16 tensors.
#[test]
fn layer_norm_takes_f16_activations() {
    // Burn's wgpu runtime makes f16 tensors only with SHADER_F16 (llvmpipe through GL has none).
    if !shared().1.shader_f16() {
        eprintln!("not run: Burn has no f16 tensors on {} (no SHADER_F16)", shared().1.describe());
        return;
    }
    let device = shared().0.clone();
    let dims = [8usize, 64];
    let x = normal(8 * 64, 31, 0.5, 2.0);
    let ours = LayerNormConfig::new(64).init(&device);
    let input = tensor::<2>(&x, &dims, &device).cast(burn::tensor::DType::F16);
    let y = ours.forward(input);
    assert_eq!(y.dtype(), burn::tensor::DType::F16);
    let xh: Vec<f32> = x.iter().map(|&v| wgpu_batchnorm::half::f16::from_f32(v).to_f32()).collect();
    let xa = ArrayD::from_shape_vec(dims.to_vec(), xh).expect("shape");
    let op = Norm::Layer { dims: dims.to_vec(), normalized_shape: vec![64] };
    let want = reference::norm::<f32, f32>(&op, &xa.view(), None, None, 1e-5).expect("reference");
    let e = rel_err(&values(y), want.y.as_slice().expect("standard order"));
    assert!(e <= 1e-3, "f16 LayerNorm: error {e:.2e} against the f64 reference");
}
