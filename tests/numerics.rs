//! docs/SPEC.md's numerics: data far from zero, constant channels, NaN and Inf
//! confined to their channel. Both layouts.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Layout, Momentum, RunningStats, Shape};

fn shapes() -> [Shape; 3] {
    [
        Shape::new(&[16, 3, 25, 25], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[16, 4, 20, 20], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[16, 25, 25, 4], Layout::ChannelsLast).unwrap(),
    ]
}

/// Channel `c` of flat index `i`.
fn channel_of(shape: &Shape, i: usize) -> usize {
    (i / shape.inner()) % shape.channels()
}

/// `|mean| / std = 1e4`: y and the gradients within 2e-5, the variance within 1e-5.
#[test]
fn offset_of_ten_thousand_standard_deviations() {
    let ctx = ctx();
    for shape in shapes() {
        let c = shape.channels();
        let x = channel_data(&shape, 31, |c| (if c % 2 == 0 { 1e4 } else { -2e4 } * (0.5 + c as f64), 0.5 + c as f64));
        let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
        let (out, running) = train_momentum_one(&ctx, &x, shape.layout(), &gamma, &beta);
        let want = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        let what = format!("{:?} {:?}", shape.dims(), shape.layout());
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 2e-5);
        assert_rel(&format!("save_mean {what}"), out.mean.as_deref().unwrap(), &want.save_mean, 1e-5);
        let m = shape.per_channel() as f64;
        let unbiased: Vec<f64> = want.var.iter().map(|v| v * m / (m - 1.0)).collect();
        assert_rel(&format!("variance {what}"), &running.var, &unbiased, 1e-5);

        // The gradients of the true batch statistics, from the raw data: the GPU
        // gets save_mean rounded to f32 (spacing 1e-3 at 1e4) and must not inherit it.
        let dy = channel_data(&shape, 32, |_| (0.0, 1.0));
        let got = ctx
            .grads_train(&dy.view(), &x.view(), shape.layout(), out.mean.as_deref().unwrap(), &out.rstd, Some(&gamma[..]), 1e-5)
            .unwrap();
        let want = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..])).unwrap();
        let (dgamma, dbeta) = param_grads(&got);
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 2e-5);
        assert_rel(&format!("dgamma {what}"), dgamma, &want.dgamma, 2e-5);
        assert_rel(&format!("dbeta {what}"), dbeta, &want.dbeta, 2e-5);
    }
}

/// A constant channel: y = beta exactly, no NaN, variance 0, finite gradients.
#[test]
fn constant_channel_gives_beta() {
    let ctx = ctx();
    for shape in shapes() {
        let c = shape.channels();
        let mut x = typical_data(&shape, 33);
        for (i, v) in x.iter_mut().enumerate() {
            if channel_of(&shape, i) == 1 {
                *v = 1234.5;
            }
        }
        let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
        let (out, running) = train_momentum_one(&ctx, &x, shape.layout(), &gamma, &beta);
        for (i, y) in out.y.iter().enumerate() {
            if channel_of(&shape, i) == 1 {
                assert_eq!(*y, beta[1], "y[{i}] of the constant channel");
            }
        }
        assert_eq!(out.mean.as_deref().unwrap()[1], 1234.5);
        assert_eq!(running.var[1], 0.0);
        let dy = channel_data(&shape, 34, |_| (0.0, 1.0));
        let g = ctx
            .grads_train(&dy.view(), &x.view(), shape.layout(), out.mean.as_deref().unwrap(), &out.rstd, Some(&gamma[..]), 1e-5)
            .unwrap();
        let (dgamma, dbeta) = param_grads(&g);
        assert!(g.dx.iter().all(|v| v.is_finite()) && dgamma.iter().chain(dbeta).all(|v| v.is_finite()));
        assert_eq!(param_grads(&g).0[1], 0.0, "xhat is 0 on a constant channel");
    }
}

/// NaN or Inf in one channel makes that channel's outputs NaN; the others match the reference.
#[test]
fn nan_and_inf_stay_in_their_channel() {
    let ctx = ctx();
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for shape in shapes() {
            let mut x = typical_data(&shape, 35);
            let bad = shape.channels() - 1;
            let first_bad = (0..shape.numel()).find(|&i| channel_of(&shape, i) == bad).unwrap();
            x.as_slice_mut().unwrap()[first_bad + shape.inner() * shape.channels()] = poison;
            let mut running = RunningStats::new(shape.channels());
            let out = ctx.train(&x.view(), shape.layout(), None, Some(&mut running), Momentum::default(), 1e-5).unwrap();
            let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
            let (mut good_got, mut good_want) = (Vec::new(), Vec::new());
            for (i, (g, w)) in out.y.iter().zip(want.y.iter()).enumerate() {
                if channel_of(&shape, i) == bad {
                    assert!(g.is_nan(), "{poison} {:?}: y[{i}] = {g}", shape.dims());
                } else {
                    good_got.push(*g);
                    good_want.push(*w);
                }
            }
            assert_rel("other channels", &good_got, &good_want, 1e-5);
            assert!(running.mean[bad].is_nan() && running.var[bad].is_nan());
            assert!(running.mean[..bad].iter().chain(&running.var[..bad]).all(|v| v.is_finite()));
        }
    }
}

/// A channel that is constant at zero, with eps = 0: invstd is +inf as in PyTorch, and y is NaN.
#[test]
fn zero_eps_on_a_constant_channel_is_documented_behaviour() {
    let shape = Shape::new(&[4, 2, 8], Layout::ChannelsFirst).unwrap();
    let x = ArrayD::from_shape_fn(shape.dims(), |i| if i[1] == 0 { 3.0 } else { i[2] as f32 });
    let out = ctx().train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 0.0).unwrap();
    assert_eq!(out.rstd[0], f32::INFINITY);
    assert!(out.y.iter().take(8).all(|v| v.is_nan()));
    assert!(out.rstd[1].is_finite());
}

/// Zero-mean channels: the batch mean is about std / sqrt(m), and save_mean keeps
/// its relative precision (it is computed from the plain sum there, welford.wgsl).
#[test]
fn means_near_zero_keep_their_relative_precision() {
    let ctx = ctx();
    for (dims, layout) in
        [(vec![4, 2, 160, 160], Layout::ChannelsFirst), (vec![4, 160, 160, 2], Layout::ChannelsLast), (vec![403, 1], Layout::ChannelsFirst)]
    {
        let shape = Shape::new(&dims, layout).unwrap();
        for seed in 0..4 {
            let x = channel_data(&shape, 200 + seed, |_| (0.0, 3.0));
            let mut running = RunningStats::new(shape.channels());
            let out = ctx.train(&x.view(), layout, None, Some(&mut running), Momentum::Exponential(1.0), 1e-5).unwrap();
            let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
            assert_rel(&format!("save_mean {dims:?} seed {seed}"), out.mean.as_deref().unwrap(), &want.save_mean, 1e-5);
            assert_rel(&format!("running_mean {dims:?} seed {seed}"), &running.mean, &want.save_mean, 1e-5);
            assert_rel(&format!("y {dims:?} seed {seed}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
        }
    }
}

/// Sums that cancel are compensated (compensated.wgsl): with values 1e8, 1, -1e8, 1
/// a plain f32 sum returns half the true total; dbeta and the mean come out exact
/// under every tuning.
#[test]
fn cancelling_sums_are_exact() {
    let shape = Shape::new(&[1024, 1], Layout::ChannelsFirst).unwrap();
    let pattern = ArrayD::from_shape_fn(shape.dims(), |i| [1e8f32, 1.0, -1e8, 1.0][i[0] / 256]);
    for ctx in tuned_contexts() {
        let running = RunningStats { mean: vec![0.0], var: vec![1.0], num_batches_tracked: 1 };
        let g = ctx.grads_inference(&pattern.view(), &pattern.view(), Layout::ChannelsFirst, &running, Some(&[1.0][..]), 0.0).unwrap();
        assert_eq!(param_grads(&g).1[0], 512.0, "{:?}", ctx.tuning());
        let out = ctx.train(&pattern.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5).unwrap();
        assert_eq!(out.mean.as_deref().unwrap()[0], 0.5, "{:?}", ctx.tuning());
    }
}
