//! Backward (backward_reduce, backward_finalize, backward_dx) against the CPU
//! reference, in training and inference mode. The training reference takes
//! the batch statistics in f64 from the raw data; the GPU gets them as f32, as
//! a training forward hands them over.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, GpuContext, Layout, Momentum, RunningStats, Shape};

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// The GPU's training backward from `save_mean` and `save_invstd` against the
/// reference's from the exact batch statistics, on each of `contexts`.
fn check_train_on(contexts: &[std::sync::Arc<GpuContext>], shape: &Shape, x: &ArrayD<f32>, dy: &ArrayD<f32>, gamma: &[f32], tol: f64) {
    let f = reference::forward_train(shape, &x.view(), Some(gamma), None, 1e-5).unwrap();
    let want = reference::backward_train(shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(gamma)).unwrap();
    let (mean, invstd) = (to_f32(&f.save_mean), to_f32(&f.save_invstd));
    for ctx in contexts {
        let got = ctx.grads_train(&dy.view(), &x.view(), shape.layout(), &mean, &invstd, Some(gamma), 1e-5).unwrap();
        let what = format!("{:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
        let (dgamma, dbeta) = param_grads(&got);
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), tol);
        assert_rel(&format!("dgamma {what}"), dgamma, &want.dgamma, tol);
        assert_rel(&format!("dbeta {what}"), dbeta, &want.dbeta, tol);
    }
}

fn check_train(shape: &Shape, x: &ArrayD<f32>, dy: &ArrayD<f32>, gamma: &[f32], tol: f64) {
    let contexts = if shape.numel() > 1 << 22 { vec![ctx()] } else { tuned_contexts() };
    check_train_on(&contexts, shape, x, dy, gamma, tol);
}

#[test]
fn training_mode_matches_reference_over_the_shape_matrix() {
    for c in [1, 3, 64, 1000] {
        let gamma = vector(c, 4, 0.5, 1.5);
        for shape in shape_matrix(c) {
            let x = typical_data(&shape, 17);
            let dy = channel_data(&shape, 18, |_| (0.0, 1.0));
            check_train(&shape, &x, &dy, &gamma, 1e-5);
        }
    }
}

/// Two, three, four and eight values per channel (a BatchNorm1d batch of that
/// size, or one sample's few positions), in every layout and item width: with
/// m = 2 the true dx is a residual of order eps / var of dy, which the
/// textbook formula cancels to noise in f32; the kernels' closed form meets
/// the bound relative to ||dx|| itself (docs/SPEC.md, Backward). Channels with
/// small variances (near eps) and with offsets of 1e3 standard deviations too.
#[test]
fn two_to_eight_values_per_channel_meet_the_bound() {
    let contexts = tuned_contexts();
    for m in [2, 3, 4, 8] {
        for c in [3, 64] {
            let gamma = vector(c, 4, 0.5, 1.5);
            for (dims, layout) in
                [(vec![m, c], Layout::ChannelsFirst), (vec![1, c, m], Layout::ChannelsFirst), (vec![1, m, c], Layout::ChannelsLast)]
            {
                let shape = Shape::new(&dims, layout).unwrap();
                let dy = channel_data(&shape, 18, |_| (0.0, 1.0));
                let typical = typical_data(&shape, 17);
                let tiny_variance = channel_data(&shape, 19, |c| (1.0, 1e-3 * (1 + c % 5) as f64));
                let offset = channel_data(&shape, 20, |c| (1e3 * (1 + c % 3) as f64, 1.0));
                for x in [&typical, &tiny_variance, &offset] {
                    check_train_on(&contexts, &shape, x, &dy, &gamma, 1e-5);
                }
            }
        }
    }
}

#[test]
fn training_mode_with_over_100k_values_per_channel() {
    for c in [1, 3, 64] {
        let gamma = vector(c, 4, 0.5, 1.5);
        for (dims, layout) in [
            (vec![2, c, 50_021], Layout::ChannelsFirst),
            (vec![4, c, 160, 160], Layout::ChannelsFirst),
            (vec![4, 160, 160, c], Layout::ChannelsLast),
        ] {
            let shape = Shape::new(&dims, layout).unwrap();
            let x = typical_data(&shape, 19);
            let dy = channel_data(&shape, 20, |_| (0.0, 1.0));
            check_train(&shape, &x, &dy, &gamma, 1e-5);
        }
    }
}

#[test]
fn training_mode_on_16m_elements() {
    let shape = Shape::new(&[16, 64, 128, 128], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 23);
    let dy = channel_data(&shape, 24, |_| (0.0, 1.0));
    check_train(&shape, &x, &dy, &vector(64, 4, 0.5, 1.5), 1e-5);
}

#[test]
fn inference_mode_matches_reference() {
    let ctx = ctx();
    for c in [1, 3, 64, 1000] {
        let gamma = vector(c, 4, 0.5, 1.5);
        let running = RunningStats { mean: vector(c, 5, -5.0, 5.0), var: vector(c, 6, 0.5, 20.0), num_batches_tracked: 2 };
        for shape in shape_matrix(c) {
            let x = typical_data(&shape, 25);
            let dy = channel_data(&shape, 26, |_| (0.0, 1.0));
            for gamma in [Some(&gamma[..]), None] {
                let got = ctx.grads_inference(&dy.view(), &x.view(), shape.layout(), &running, gamma, 1e-5).unwrap();
                let want = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, gamma, 1e-5).unwrap();
                let what = format!("{:?} {:?} affine={}", shape.dims(), shape.layout(), gamma.is_some());
                assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 1e-5);
                match (&got.dgamma, &got.dbeta) {
                    (Some(dgamma), Some(dbeta)) => {
                        assert_rel(&format!("dgamma {what}"), dgamma, &want.dgamma, 1e-5);
                        assert_rel(&format!("dbeta {what}"), dbeta, &want.dbeta, 1e-5);
                    }
                    (None, None) => assert!(gamma.is_none(), "{what}: affine gradients missing"),
                    other => panic!("{what}: {other:?}"),
                }
            }
        }
    }
}

/// Without affine parameters, no path returns dgamma or dbeta.
#[test]
fn without_affine_no_parameter_gradients() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 1);
    let dy = channel_data(&shape, 2, |_| (0.0, 1.0));
    let out = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5).unwrap();
    let (mean, rstd) = saved(&out);
    let g = ctx.grads_train(&dy.view(), &x.view(), Layout::ChannelsFirst, mean, rstd, None, 1e-5).unwrap();
    assert_eq!((g.dgamma, g.dbeta), (None, None));
    let g = ctx.grads_inference(&dy.view(), &x.view(), Layout::ChannelsFirst, &RunningStats::new(3), None, 1e-5).unwrap();
    assert_eq!((g.dgamma, g.dbeta), (None, None));
}

/// The case the reference's finite-difference test checks (reference.rs):
/// the GPU gradients agree with the reference's on it, so with the numerical derivative.
#[test]
fn finite_difference_case_on_the_gpu() {
    let shape = Shape::new(&[3, 2, 5], Layout::ChannelsFirst).unwrap();
    let x = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 31 + i[1] * 17 + i[2] * 7) % 13) as f32 * 0.3 - 1.0);
    let dy = ArrayD::from_shape_fn(shape.dims(), |i| ((i[0] * 5 + i[1] * 3 + i[2] * 11) % 7) as f32 * 0.25 - 0.5);
    let gamma = [0.7f32, -1.3];
    let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), None, 1e-3).unwrap();
    let (mean, invstd) = (to_f32(&f.save_mean), to_f32(&f.save_invstd));
    let got = ctx().grads_train(&dy.view(), &x.view(), Layout::ChannelsFirst, &mean, &invstd, Some(&gamma[..]), 1e-3).unwrap();
    // Central differences of L = sum(dy * y(x)) in f64, step 1e-6.
    let loss = |x: &ArrayD<f64>| {
        let y = reference::forward_train(&shape, &x.view(), Some(&[0.7, -1.3][..]), Some(&[0.0, 0.0][..]), 1e-3).unwrap().y;
        (&y * &dy.mapv(f64::from)).sum()
    };
    let x64 = x.mapv(f64::from);
    let h = 1e-6;
    for (i, g) in got.dx.iter().enumerate() {
        let (mut xp, mut xm) = (x64.clone(), x64.clone());
        xp.as_slice_mut().unwrap()[i] += h;
        xm.as_slice_mut().unwrap()[i] -= h;
        let numeric = (loss(&xp) - loss(&xm)) / (2.0 * h);
        assert!((numeric - *g as f64).abs() <= 1e-4 * (1.0 + numeric.abs()), "dx[{i}]: numeric {numeric}, gpu {g}");
    }
}
