//! Fused epilogues, `z = act(bn(x) + residual)`, against the f64 reference
//! (`reference::epilogue` and `reference::epilogue_grad` over the reference's
//! batch norm) computed from the raw data: training and inference forward,
//! the backward from `dz` and `z` in both modes, ties at `z == 0`, and errors.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{
    reference, Activation, BackwardStats, Epilogue, Error, GpuContext, Layout, Norm, NormBackwardInputs, NormInputs, NormStats, Options,
    RunningStats, Shape,
};

const ACTIVATIONS: [Activation; 3] = [Activation::Identity, Activation::Relu, Activation::LeakyRelu(0.1)];

/// Every activation, with and without a residual.
fn epilogues() -> impl Iterator<Item = Epilogue> {
    ACTIVATIONS.into_iter().flat_map(|activation| [false, true].map(|residual| Epilogue { activation, residual }))
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// A residual of the size of batch norm's output, so that the sum crosses zero often.
fn residual_for(shape: &Shape, seed: u64) -> ArrayD<f32> {
    channel_data(shape, seed, |c| (((c % 3) as f64 - 1.0) * 0.5, 1.0))
}

/// The adapter's own tuning and the GPU one (which takes the one-pass
/// training forward for small channels): every fused variant is a pipeline of
/// its own per context, and GL compiles them slowly.
fn contexts() -> Vec<std::sync::Arc<GpuContext>> {
    tuned_contexts().into_iter().take(2).collect()
}

fn shapes() -> Vec<Shape> {
    [3, 64].into_iter().flat_map(shape_matrix).collect()
}

#[test]
fn training_forward_matches_reference() {
    for ctx in contexts() {
        for shape in shapes() {
            let c = shape.channels();
            let x = typical_data(&shape, 31);
            let r = residual_for(&shape, 32);
            let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
            let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            let want_running = reference_running(&shape, &x, &Options::default());
            for epilogue in epilogues() {
                let options = Options { epilogue, ..Options::default() };
                let mut running = RunningStats::new(c);
                let residual = epilogue.residual.then_some(r.view());
                let inputs = NormInputs { x: x.view(), residual: residual.clone() };
                let out = ctx
                    .norm_blocking(&Norm::Batch(shape.clone()), inputs, Some(&gamma[..]), Some(&beta[..]), Some(&mut running), &options)
                    .unwrap();
                let want = reference::epilogue(&f.y.view(), residual.as_ref(), epilogue.activation).unwrap();
                let what = format!("{:?} {:?} {epilogue:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
                assert_rel(&format!("z {what}"), out.y.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
                assert_rel(&format!("save_mean {what}"), out.mean.as_deref().unwrap(), &f.save_mean, 1e-5);
                assert_rel(&format!("save_invstd {what}"), &out.rstd, &f.save_invstd, 1e-5);
                assert_rel(&format!("running_var {what}"), &running.var, &want_running.var, 1e-5);
                if epilogue.activation == Activation::Relu {
                    assert!(out.y.iter().all(|&z| z >= 0.0), "ReLU output below 0: {what}");
                }
            }
        }
    }
}

#[test]
fn inference_forward_matches_reference() {
    for ctx in contexts() {
        for shape in shapes() {
            let c = shape.channels();
            let x = typical_data(&shape, 41);
            let r = residual_for(&shape, 42);
            let running = RunningStats { mean: vector(c, 43, -20.0, 20.0), var: vector(c, 44, 0.25, 40.0), num_batches_tracked: 3 };
            let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
            let y = reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)
                .unwrap();
            for epilogue in epilogues() {
                let options = Options { epilogue, ..Options::default() };
                let residual = epilogue.residual.then_some(r.view());
                let inputs = NormInputs { x: x.view(), residual: residual.clone() };
                let z = ctx
                    .norm_inference_blocking(&Norm::Batch(shape.clone()), inputs, Some(&gamma[..]), Some(&beta[..]), &running, &options)
                    .unwrap();
                let want = reference::epilogue(&y.view(), residual.as_ref(), epilogue.activation).unwrap();
                let what = format!("{:?} {:?} {epilogue:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
                assert_rel(&format!("z {what}"), z.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
            }
        }
    }
}

/// The backward from `dz` and the GPU forward's own `z` (its input, as in a
/// framework), against the reference's backward of `dz` masked by that `z`,
/// with the batch statistics from the raw data.
#[test]
fn backward_matches_reference_in_both_modes() {
    for ctx in contexts() {
        for shape in shapes() {
            let c = shape.channels();
            let x = typical_data(&shape, 51);
            let r = residual_for(&shape, 52);
            let dz = channel_data(&shape, 53, |_| (0.0, 1.0));
            let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
            let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            let (mean, invstd) = (to_f32(&f.save_mean), to_f32(&f.save_invstd));
            let running = RunningStats { mean: vector(c, 54, -5.0, 5.0), var: vector(c, 55, 0.25, 40.0), num_batches_tracked: 3 };
            for epilogue in epilogues() {
                let options = Options { epilogue, track_running_stats: false, ..Options::default() };
                let op = Norm::Batch(shape.clone());
                let residual = epilogue.residual.then_some(r.view());
                let z = ctx
                    .norm_blocking(&op, NormInputs { x: x.view(), residual }, Some(&gamma[..]), Some(&beta[..]), None, &options)
                    .unwrap()
                    .y;
                let dy = reference::epilogue_grad(&dz.view(), &z.view(), epilogue.activation).unwrap();
                let x64 = x.mapv(f64::from);
                let inputs = NormBackwardInputs { dy: dz.view(), x: x.view(), z: epilogue.needs_z().then_some(z.view()) };
                for batch in [true, false] {
                    let (stats, want) = if batch {
                        let stats = BackwardStats::Saved(NormStats { mean: Some(&mean[..]), rstd: &invstd[..] });
                        (stats, reference::backward_train(&shape, &dy.view(), &x64.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])))
                    } else {
                        let want = reference::backward_inference(
                            &shape,
                            &dy.view(),
                            &x64.view(),
                            &running.mean,
                            &running.var,
                            Some(&gamma[..]),
                            1e-5,
                        );
                        (running.backward_stats(), want)
                    };
                    let want = want.unwrap();
                    // The backward at the running statistics differentiates the inference forward, which tracks them.
                    let options = Options { track_running_stats: !batch, ..options };
                    let got = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma[..]), &options).unwrap();
                    let what = format!("{:?} {:?} {epilogue:?} batch={batch} {:?}", shape.dims(), shape.layout(), ctx.tuning());
                    assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 1e-5);
                    assert_rel(&format!("dgamma {what}"), got.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
                    assert_rel(&format!("dbeta {what}"), got.dbeta.as_deref().unwrap(), &want.dbeta, 1e-5);
                    match (&got.dresidual, epilogue.residual) {
                        // The masked dz itself: exact but for LeakyReLU's one rounding of slope * dz.
                        (Some(dr), true) => assert_rel(&format!("dresidual {what}"), dr.as_slice().unwrap(), dy.as_slice().unwrap(), 1e-7),
                        (None, false) => {}
                        (other, _) => panic!("dresidual {other:?}: {what}"),
                    }
                }
            }
        }
    }
}

/// Values equal to their channel's mean normalize to exactly 0, so `z == 0`:
/// ReLU passes no gradient there, LeakyReLU `slope * dz` (docs/SPEC.md, Fused epilogues).
#[test]
fn ties_at_zero_follow_the_documented_mask() {
    let ctx = ctx();
    // Channels [-1, 0, 1] and [2, 4, 6]: the middle value of each is its mean.
    let x = ArrayD::from_shape_vec(vec![3, 2], vec![-1f32, 2., 0., 4., 1., 6.]).unwrap();
    let zero_residual = ArrayD::zeros(vec![3, 2]);
    let dz = ArrayD::from_elem(vec![3, 2], 1f32);
    for (activation, at_tie) in [(Activation::Relu, 0.0), (Activation::LeakyRelu(0.25), 0.25)] {
        let epilogue = Epilogue { activation, residual: true };
        let options = Options { affine: false, track_running_stats: false, epilogue, ..Options::default() };
        let op = batch(&[3, 2], Layout::ChannelsFirst);
        let out =
            ctx.norm_blocking(&op, NormInputs { x: x.view(), residual: Some(zero_residual.view()) }, None, None, None, &options).unwrap();
        assert_eq!(out.y[[1, 0]], 0.0, "{activation:?}");
        assert_eq!(out.y[[1, 1]], 0.0, "{activation:?}");
        let inputs = NormBackwardInputs { dy: dz.view(), x: x.view(), z: Some(out.y.view()) };
        let g = ctx.norm_backward_blocking(&op, &inputs, out.stats(), None, &options).unwrap();
        let dr = g.dresidual.unwrap();
        // Rows: below the mean, at it, above it.
        assert_eq!([dr[[0, 0]], dr[[1, 0]], dr[[2, 0]]], [at_tie, at_tie, 1.0], "{activation:?}");
        let dy = reference::epilogue_grad(&dz.view(), &out.y.view(), activation).unwrap();
        let f = reference::forward_train::<f32, f64>(&Shape::new(&[3, 2], Layout::ChannelsFirst).unwrap(), &x.view(), None, None, 1e-5)
            .unwrap();
        let shape = Shape::new(&[3, 2], Layout::ChannelsFirst).unwrap();
        let want =
            reference::backward_train::<f64, f64, f64>(&shape, &dy.view(), &x.mapv(f64::from).view(), &f.save_mean, &f.save_invstd, None)
                .unwrap();
        assert_rel(&format!("dx {activation:?}"), g.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 1e-5);
    }
}

fn mismatch<T>(e: wgpu_batchnorm::Result<T>, what: &str) {
    match e {
        Err(Error::OptionsMismatch { what: got, .. }) => assert_eq!(got, what),
        Err(other) => panic!("{what}: {other:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn arguments_against_the_epilogue_are_errors() {
    let ctx = ctx();
    let x = typical_data(&Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap(), 1);
    let wrong = ArrayD::<f32>::zeros(vec![4, 3, 6]);
    let plain = Options { affine: false, track_running_stats: false, ..Options::default() };
    let relu = Options { epilogue: Epilogue::activation(Activation::Relu), ..plain };
    let with_residual = Options { epilogue: Epilogue { activation: Activation::Relu, residual: true }, ..plain };
    let op = batch(x.shape(), Layout::ChannelsFirst);
    let residual = |r| NormInputs { x: x.view(), residual: Some(r) };
    mismatch(ctx.norm_blocking(&op, x.view(), None, None, None, &with_residual), "residual");
    mismatch(ctx.norm_blocking(&op, residual(x.view()), None, None, None, &relu), "residual");
    let running = RunningStats::new(3);
    let tracked = Options { track_running_stats: true, ..with_residual };
    mismatch(ctx.norm_inference_blocking(&op, x.view(), None, None, &running, &tracked), "residual");
    let e = ctx.norm_blocking(&op, residual(wrong.view()), None, None, None, &with_residual);
    assert!(matches!(&e, Err(Error::ShapeMismatch { what: "residual", .. })), "{e:?}");

    let out = ctx.norm_blocking(&op, x.view(), None, None, None, &relu).unwrap();
    let with_z = NormBackwardInputs { dy: x.view(), x: x.view(), z: Some(out.y.view()) };
    let without_z = NormBackwardInputs { z: None, ..with_z.clone() };
    mismatch(ctx.norm_backward_blocking(&op, &without_z, out.stats(), None, &relu), "z");
    mismatch(ctx.norm_backward_blocking(&op, &with_z, out.stats(), None, &plain), "z");
    // The one backward takes a residual epilogue (there is no plain backward
    // left to refuse it): an activation still needs z, and without one
    // dresidual is dz itself.
    mismatch(ctx.norm_backward_blocking(&op, &without_z, out.stats(), None, &with_residual), "z");
    let residual_only = Options { epilogue: Epilogue { activation: Activation::Identity, residual: true }, ..plain };
    let g = ctx.norm_backward_blocking(&op, &without_z, out.stats(), None, &residual_only).unwrap();
    assert_eq!(g.dresidual.as_ref(), Some(&x), "dresidual of the identity epilogue");
    let bad_z = NormBackwardInputs { z: Some(wrong.view()), ..with_z };
    let e = ctx.norm_backward_blocking(&op, &bad_z, out.stats(), None, &relu);
    assert!(matches!(&e, Err(Error::ShapeMismatch { what: "z", .. })), "{e:?}");

    for slope in [-0.5, f32::NAN, f32::INFINITY] {
        let leaky = Options { epilogue: Epilogue::activation(Activation::LeakyRelu(slope)), ..plain };
        let e = ctx.norm_blocking(&op, x.view(), None, None, None, &leaky);
        assert!(matches!(&e, Err(Error::InvalidSlope(_))), "{slope}: {e:?}");
    }
}

/// The identity epilogue with no residual is plain batch norm, bit for bit.
#[test]
fn the_default_epilogue_is_plain_batch_norm() {
    let ctx: std::sync::Arc<GpuContext> = ctx();
    let shape = Shape::new(&[5, 8, 51], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 61);
    let plain = Options { affine: false, track_running_stats: false, ..Options::default() };
    let op = Norm::Batch(shape.clone());
    let a = ctx.norm_blocking(&op, x.view(), None, None, None, &plain).unwrap();
    let identity = Options { epilogue: Epilogue { activation: Activation::Identity, residual: false }, ..plain };
    let b = ctx.norm_blocking(&op, NormInputs { x: x.view(), residual: None }, None, None, None, &identity).unwrap();
    assert_eq!(a, b);
}

/// The layer through its fused epilogue: training forward and backward on
/// host arrays against the reference, then eval mode; SyncBatchNorm refuses
/// an epilogue (its backward has reductions of its own).
#[test]
fn the_layer_runs_its_epilogue_forward_and_backward() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 6, 5, 8], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 81);
    let r = residual_for(&shape, 82);
    let dz = channel_data(&shape, 83, |_| (0.0, 1.0));
    for activation in [Activation::Relu, Activation::LeakyRelu(0.2)] {
        let epilogue = Epilogue { activation, residual: true };
        let options = Options { epilogue, ..Options::default() };
        let mut bn = wgpu_batchnorm::BatchNorm::new(ctx.clone(), 6, options).unwrap();
        let z = bn.forward_epilogue_blocking(&x.view(), Some(&r.view()), shape.layout()).unwrap();
        let f = reference::forward_train::<f32, f32>(&shape, &x.view(), None, None, 1e-5).unwrap();
        let want = reference::epilogue(&f.y.view(), Some(&r.view()), activation).unwrap();
        assert_rel(&format!("layer z {activation:?}"), z.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
        // The layer's one backward returns dresidual (backward_epilogue is gone).
        let g = bn.backward_blocking(&dz.view()).unwrap();
        let dy = reference::epilogue_grad(&dz.view(), &z.view(), activation).unwrap();
        let ones = [1.0f64; 6];
        let want = reference::backward_train(&shape, &dy.view(), &x.mapv(f64::from).view(), &f.save_mean, &f.save_invstd, Some(&ones[..]))
            .unwrap();
        assert_rel(&format!("layer dx {activation:?}"), g.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 1e-5);
        assert_rel(&format!("layer dgamma {activation:?}"), g.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
        assert_rel(&format!("layer dresidual {activation:?}"), g.dresidual.unwrap().as_slice().unwrap(), dy.as_slice().unwrap(), 1e-7);
        mismatch(bn.forward_blocking(&x.view(), shape.layout()), "residual");

        bn.eval();
        let running = bn.running_stats_blocking().unwrap().unwrap();
        let z = bn.forward_epilogue_blocking(&x.view(), Some(&r.view()), shape.layout()).unwrap();
        let y = reference::forward_inference::<f32, f32>(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
        let want = reference::epilogue(&y.view(), Some(&r.view()), activation).unwrap();
        assert_rel(&format!("layer eval z {activation:?}"), z.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
    }
    let options = Options { epilogue: Epilogue::activation(Activation::Relu), ..Options::default() };
    let rank = wgpu_batchnorm::in_process(1).pop().unwrap();
    mismatch(wgpu_batchnorm::SyncBatchNorm::new(ctx, rank, 6, options), "epilogue");
}
