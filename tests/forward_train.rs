//! Training forward (stats.wgsl, finalize.wgsl, apply.wgsl, and forward_fused.wgsl for small
//! channels) against the CPU reference.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Affine, Layout, Momentum, Options, RunningStats, RunningVariance, Shape};

/// Runs one training step on the GPU and on the reference and checks every output.
fn check(shape: &Shape, x: &ArrayD<f32>, tol: f64) {
    for ctx in tuned_contexts() {
        check_on(&ctx, shape, x, tol);
    }
}

fn check_on(ctx: &wgpu_batchnorm::GpuContext, shape: &Shape, x: &ArrayD<f32>, tol: f64) {
    let c = shape.channels();
    let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
    let mut running = RunningStats::new(c);
    let affine = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let out = ctx.train(&x.view(), shape.layout(), affine, Some(&mut running), Momentum::default(), 1e-5).unwrap();
    let want = reference::forward_train(shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
    let what = format!("{:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
    assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), tol);
    let (mean, rstd) = saved(&out);
    assert_rel(&format!("save_mean {what}"), mean, &want.save_mean, 1e-5);
    assert_rel(&format!("save_invstd {what}"), rstd, &want.save_invstd, 1e-5);
    let mut want_running = RunningStats::<f64>::new(c);
    let batch = reference::BatchStats { mean: want.save_mean, var: want.var };
    reference::update_running(&mut want_running, &batch, shape.per_channel(), &Options::default());
    assert_rel(&format!("running_mean {what}"), &running.mean, &want_running.mean, 1e-5);
    assert_rel(&format!("running_var {what}"), &running.var, &want_running.var, 1e-5);
    assert_eq!(running.num_batches_tracked, 1);
}

#[test]
fn matches_reference_over_the_shape_matrix() {
    for c in [1, 3, 64, 1000] {
        for shape in shape_matrix(c) {
            check(&shape, &typical_data(&shape, 7), 1e-5);
        }
    }
}

#[test]
fn matches_reference_with_over_100k_values_per_channel() {
    for c in [1, 3, 64] {
        for (dims, layout) in [
            (vec![2, c, 50_021], Layout::ChannelsFirst),
            (vec![4, c, 160, 160], Layout::ChannelsFirst),
            (vec![4, 160, 160, c], Layout::ChannelsLast),
        ] {
            let shape = Shape::new(&dims, layout).unwrap();
            check(&shape, &typical_data(&shape, 11), 1e-5);
        }
    }
}

#[test]
fn matches_reference_on_16m_elements() {
    for (dims, layout) in [([16, 64, 128, 128], Layout::ChannelsFirst), ([16, 128, 128, 64], Layout::ChannelsLast)] {
        let shape = Shape::new(&dims, layout).unwrap();
        assert!(shape.numel() >= 16 << 20);
        check_on(&ctx(), &shape, &typical_data(&shape, 13), 1e-5);
    }
}

#[test]
fn onnx_example_in_training_mode() {
    let ctx = ctx();
    let shape = Shape::new(&[1, 2, 1, 3], Layout::ChannelsFirst).unwrap();
    let x = ArrayD::from_shape_vec(shape.dims(), vec![-1f32, 0., 1., 2., 3., 4.]).unwrap();
    let (gamma, beta) = ([1f32, 1.5], [0f32, 1.]);
    // docs/SPEC.md's running_var = [1.0, 1.45] starts from the example's mean and var.
    let mut running = RunningStats { mean: vec![0.0, 3.0], var: vec![1.0, 1.5], num_batches_tracked: 0 };
    let out = ctx
        .train(
            &x.view(),
            Layout::ChannelsFirst,
            Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) }),
            Some(&mut running),
            Momentum::Exponential(0.1),
            1e-5,
        )
        .unwrap();
    let want = [-1.2247357, 0.0, 1.2247357, -0.8371035, 1.0, 2.8371035];
    for (g, w) in out.y.iter().zip(want) {
        assert!((g - w).abs() <= 2e-6, "y {:?}", out.y);
    }
    assert!((running.var[0] - 1.0).abs() < 1e-6 && (running.var[1] - 1.45).abs() < 1e-6, "{:?}", running.var);
    assert!(running.mean[0].abs() < 1e-6 && (running.mean[1] - 3.0).abs() < 1e-6, "{:?}", running.mean);
}

/// ONNX's training-mode BatchNormalization (docs/SPEC.md, Running statistics):
/// momentum 0.9 is the old value's weight and the running variance averages
/// the biased batch variance, from a running variance that is not zero.
#[test]
fn onnx_running_statistics_with_the_biased_variance() {
    let ctx = ctx();
    let shape = Shape::new(&[1, 2, 1, 3], Layout::ChannelsFirst).unwrap();
    let x = ArrayD::from_shape_vec(shape.dims(), vec![-1f32, 0., 1., 2., 3., 4.]).unwrap();
    let (gamma, beta) = ([1f32, 1.5], [0f32, 1.]);
    let mut running = RunningStats { mean: vec![0.0, 3.0], var: vec![1.0, 1.5], num_batches_tracked: 0 };
    let onnx = Options { momentum: Momentum::Exponential(1.0 - 0.9), running_variance: RunningVariance::Biased, ..Options::default() };
    let affine = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let op = batch(x.shape(), Layout::ChannelsFirst);
    let out = ctx.norm_blocking(&op, x.view(), affine.map(|a| a.gamma), affine.and_then(|a| a.beta), Some(&mut running), &onnx).unwrap();
    // input_var * momentum + batch_var * (1 - momentum), with the batch's biased variance 2/3.
    let want_var = [0.9 * 1.0 + 0.1 * 2.0 / 3.0, 0.9 * 1.5 + 0.1 * 2.0 / 3.0];
    for (g, w) in running.var.iter().zip(want_var) {
        assert!((f64::from(*g) - w).abs() < 1e-6, "running_var {:?}, want {want_var:?}", running.var);
    }
    assert!(running.mean[0].abs() < 1e-6 && (running.mean[1] - 3.0).abs() < 1e-6, "{:?}", running.mean);
    let want_y = [-1.2247357, 0.0, 1.2247357, -0.8371035, 1.0, 2.8371035];
    for (g, w) in out.y.iter().zip(want_y) {
        assert!((g - w).abs() <= 2e-6, "y {:?}", out.y);
    }
}

/// Several steps with momentum, and with the cumulative average, against the reference.
#[test]
fn running_statistics_over_several_steps() {
    let ctx = ctx();
    for momentum in [Momentum::Exponential(0.1), Momentum::Exponential(0.7), Momentum::CumulativeAverage] {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let dims = match layout {
                Layout::ChannelsFirst => [4, 5, 6, 7],
                Layout::ChannelsLast => [4, 6, 7, 5],
            };
            let shape = Shape::new(&dims, layout).unwrap();
            let mut running = RunningStats::new(5);
            let mut want = RunningStats::<f64>::new(5);
            for step in 0..4 {
                let x = typical_data(&shape, 100 + step);
                ctx.train(&x.view(), layout, None, Some(&mut running), momentum, 1e-5).unwrap();
                let batch = reference::batch_stats(&shape, &x.view()).unwrap();
                reference::update_running(&mut want, &batch, shape.per_channel(), &options_for(false, true, momentum, 1e-5));
            }
            assert_eq!(running.num_batches_tracked, 4);
            assert_rel(&format!("running_mean {momentum:?} {layout:?}"), &running.mean, &want.mean, 1e-5);
            assert_rel(&format!("running_var {momentum:?} {layout:?}"), &running.var, &want.var, 1e-5);
        }
    }
}

#[test]
fn without_affine_gamma_is_one_and_beta_zero() {
    let ctx = ctx();
    let shape = Shape::new(&[6, 4, 9], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 3);
    let out = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-3).unwrap();
    let want = reference::forward_train::<_, f32>(&shape, &x.view(), None, None, 1e-3).unwrap();
    assert_rel("y", out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
}

/// The one-pass forward (`Tuning::GPU` on channels of at most 4096 items) and the
/// three-pass one on docs/SPEC.md's hard data: offsets of 1e4 standard deviations,
/// zero means, and a NaN confined to its channel, in every width and layout.
#[test]
fn small_channels_meet_the_numerics_targets_in_every_tuning() {
    let shapes = [
        Shape::new(&[8, 6, 7, 7], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[8, 6, 4, 4], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[300, 12], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[300, 3], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[8, 7, 7, 8], Layout::ChannelsLast).unwrap(),
        Shape::new(&[4000, 4], Layout::ChannelsFirst).unwrap(),
    ];
    for ctx in tuned_contexts() {
        for shape in &shapes {
            let what = format!("{:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
            let c = shape.channels();
            let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
            let offset = channel_data(shape, 41, |c| (if c % 2 == 0 { 1e4 } else { -2e4 } * (0.5 + c as f64), 0.5 + c as f64));
            let zero_mean = channel_data(shape, 42, |_| (0.0, 3.0));
            for (name, x, y_tol) in [("offset", &offset, 2e-5), ("zero mean", &zero_mean, 1e-5)] {
                let mut running = RunningStats::new(c);
                let affine = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
                let out = ctx.train(&x.view(), shape.layout(), affine, Some(&mut running), Momentum::Exponential(1.0), 1e-5).unwrap();
                let want = reference::forward_train(shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                assert_rel(&format!("{name} y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), y_tol);
                assert_rel(&format!("{name} save_mean {what}"), saved(&out).0, &want.save_mean, 1e-5);
                let m = shape.per_channel() as f64;
                let unbiased: Vec<f64> = want.var.iter().map(|v| v * m / (m - 1.0)).collect();
                assert_rel(&format!("{name} running_var {what}"), &running.var, &unbiased, 1e-5);
            }
            let mut poisoned = zero_mean.clone();
            // Element 0 belongs to channel 0 in both layouts.
            poisoned.as_slice_mut().unwrap()[0] = f32::NAN;
            let out = ctx.train(&poisoned.view(), shape.layout(), None, None, Momentum::default(), 1e-5).unwrap();
            let mean = saved(&out).0;
            assert!(mean[0].is_nan() && mean[1..].iter().all(|v| v.is_finite()), "{what}");
            let finite = out.y.iter().filter(|v| v.is_finite()).count();
            assert_eq!(finite, shape.numel() - shape.per_channel(), "only channel 0's y is NaN: {what}");
        }
    }
}
