//! Adversarial numbers: what the crate returns at the edges of f32, as the
//! README's numerical guarantees state it. Both layouts.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Affine, Layout, Momentum, RunningStats, Shape};

fn shapes() -> [Shape; 2] {
    [Shape::new(&[8, 4, 9, 11], Layout::ChannelsFirst).unwrap(), Shape::new(&[8, 9, 11, 4], Layout::ChannelsLast).unwrap()]
}

fn channel_of(shape: &Shape, i: usize) -> usize {
    (i / shape.inner()) % shape.channels()
}

/// Offsets |mean| / std of 1e2, 1e4 and 1e6 keep y within 2e-5 and the mean within 1e-5
/// of the f64 reference on the same f32 inputs.
#[test]
fn large_offsets() {
    let ctx = ctx();
    for ratio in [1e2, 1e4, 1e6] {
        for shape in shapes() {
            let x = channel_data(&shape, 3, |c| (ratio * (1.0 + c as f64) * if c % 2 == 0 { 1.0 } else { -1.0 }, 1.0 + c as f64));
            let mut running = RunningStats::new(4);
            let out = ctx.train(&x.view(), shape.layout(), None, Some(&mut running), Momentum::Exponential(1.0), 1e-5).unwrap();
            let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
            let what = format!("ratio {ratio:e} {:?}", shape.layout());
            assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 2e-5);
            assert_rel(&format!("mean {what}"), out.mean.as_deref().unwrap(), &want.save_mean, 1e-5);
            assert_rel(&format!("invstd {what}"), &out.rstd, &want.save_invstd, 1e-5);
            let y = ctx.infer(&x.view(), shape.layout(), None, &running, 1e-5).unwrap();
            let wy = reference::forward_inference(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
            assert_rel(&format!("inference y {what}"), y.as_slice().unwrap(), wy.as_slice().unwrap(), 2e-5);
        }
    }
}

/// A variance of 1e-30 times the squared mean is below f32's resolution: the
/// channel is constant in f32, and y is beta exactly.
#[test]
fn variance_below_f32_resolution_is_a_constant_channel() {
    let ctx = ctx();
    for shape in shapes() {
        let x = channel_data(&shape, 5, |c| (3.0 * (c + 1) as f64, 3e-15 * (c + 1) as f64));
        let beta = [0.25f32, -0.5, 0.75, 1.0];
        let out = ctx
            .train(&x.view(), shape.layout(), Some(Affine { gamma: &[2.0; 4][..], beta: Some(&beta[..]) }), None, Momentum::default(), 1e-5)
            .unwrap();
        for (i, y) in out.y.iter().enumerate() {
            assert_eq!(*y, beta[channel_of(&shape, i)], "y[{i}]");
        }
    }
}

/// Values of about 1e30 whose variance overflows f32: the channel's y is NaN
/// (never a silent y = beta), its mean finite, its invstd 0 or NaN and its running
/// variance inf or NaN (which one depends on where the sum overflowed); other
/// channels are exact.
#[test]
fn variance_overflow_gives_nan_not_beta() {
    let ctx = ctx();
    for shape in shapes() {
        let x = channel_data(&shape, 7, |c| if c == 2 { (0.0, 1e30) } else { (c as f64, 1.0) });
        let mut running = RunningStats::new(4);
        let out = ctx.train(&x.view(), shape.layout(), None, Some(&mut running), Momentum::default(), 1e-5).unwrap();
        let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
        for (i, (y, w)) in out.y.iter().zip(want.y.iter()).enumerate() {
            if channel_of(&shape, i) == 2 {
                assert!(y.is_nan(), "y[{i}] = {y}");
            } else {
                assert!((*y as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "y[{i}] = {y}, want {w}");
            }
        }
        assert!(out.mean.as_deref().unwrap()[2].is_finite());
        assert!(out.rstd[2] == 0.0 || out.rstd[2].is_nan(), "{}", out.rstd[2]);
        assert!(running.var[2] == f32::INFINITY || running.var[2].is_nan(), "{}", running.var[2]);
        assert!(running.var.iter().enumerate().all(|(c, v)| c == 2 || v.is_finite()));
    }
}

/// eps = 0 on a constant channel: invstd = inf (as PyTorch), y NaN in that channel only.
#[test]
fn zero_eps_constant_channel() {
    let ctx = ctx();
    for shape in shapes() {
        let mut x = typical_data(&shape, 9);
        for (i, v) in x.iter_mut().enumerate() {
            if channel_of(&shape, i) == 0 {
                *v = -7.5;
            }
        }
        let out = ctx.train(&x.view(), shape.layout(), None, None, Momentum::default(), 0.0).unwrap();
        assert_eq!(out.rstd[0], f32::INFINITY);
        let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 0.0).unwrap();
        for (i, (y, w)) in out.y.iter().zip(want.y.iter()).enumerate() {
            if channel_of(&shape, i) == 0 {
                assert!(y.is_nan(), "y[{i}]");
            } else {
                assert!((*y as f64 - w).abs() < 1e-4, "y[{i}]");
            }
        }
    }
}

/// Denormal inputs: a channel of denormals normalizes to beta within 1e-5 (the
/// adapter may flush them to zero: y differs from beta by under 1e-30 either
/// way); denormals mixed into normal data change nothing measurable.
#[test]
fn denormal_inputs() {
    let ctx = ctx();
    for shape in shapes() {
        let mut x: ArrayD<f32> = typical_data(&shape, 11);
        for (i, v) in x.iter_mut().enumerate() {
            let c = channel_of(&shape, i);
            if c == 1 {
                *v = f32::from_bits(1 + (i as u32 * 7919) % 0x007f_ffff) * if i % 2 == 0 { 1.0 } else { -1.0 };
            } else if c == 3 && i % 5 == 0 {
                *v = f32::from_bits(0x0000_0100);
            }
        }
        assert!(x.iter().any(|v| v.is_subnormal()));
        let beta = [0.0f32, 0.5, 0.0, 0.0];
        let out = ctx
            .train(&x.view(), shape.layout(), Some(Affine { gamma: &[1.0; 4][..], beta: Some(&beta[..]) }), None, Momentum::default(), 1e-5)
            .unwrap();
        let want = reference::forward_train(&shape, &x.view(), Some(&[1.0f32; 4][..]), Some(&beta[..]), 1e-5).unwrap();
        assert!(out.y.iter().all(|v| v.is_finite()));
        assert_rel(&format!("y {:?}", shape.layout()), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
        let dy = channel_data(&shape, 12, |_| (0.0, 1.0));
        let g = ctx
            .grads_train(&dy.view(), &x.view(), shape.layout(), out.mean.as_deref().unwrap(), &out.rstd, Some(&[1.0; 4][..]), 1e-5)
            .unwrap();
        let (dgamma, dbeta) = param_grads(&g);
        assert!(g.dx.iter().chain(dgamma).chain(dbeta).all(|v| v.is_finite()));
    }
}
