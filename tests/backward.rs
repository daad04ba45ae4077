//! Backward (backward_reduce.wgsl, backward_finalize.wgsl, backward_dx.wgsl)
//! against the CPU reference, in training and inference mode.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Layout, RunningStats, Shape};

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// dx of a channel with m = 2 is the residual of dy after removing two
/// directions from a 2-D space, about eps / var of |gamma * invstd * dy|, so
/// its relative error says nothing about the kernel; such shapes are measured
/// against |gamma * invstd * dy| instead.
fn dx_floor(shape: &Shape, dy: &ArrayD<f32>, gamma: &[f32], invstd: &[f32]) -> f64 {
    if shape.per_channel() > 2 {
        return 0.0;
    }
    let (c_count, s) = (shape.channels(), shape.inner());
    dy.iter()
        .enumerate()
        .map(|(i, &d)| {
            let c = (i / s) % c_count;
            (gamma[c] as f64 * invstd[c] as f64 * d as f64).powi(2)
        })
        .sum::<f64>()
        .sqrt()
}

fn check_train(shape: &Shape, x: &ArrayD<f32>, dy: &ArrayD<f32>, gamma: &[f32], tol: f64) {
    let f = reference::forward_train(shape, &x.view(), Some(gamma), None, 1e-5).unwrap();
    let (mean, invstd) = (to_f32(&f.save_mean), to_f32(&f.save_invstd));
    let want = reference::backward_train(shape, &dy.view(), &x.view(), &mean, &invstd, Some(gamma)).unwrap();
    let floor = dx_floor(shape, dy, gamma, &invstd);
    let contexts = if shape.numel() > 1 << 22 { vec![ctx()] } else { tuned_contexts() };
    for ctx in contexts {
        let got = ctx.backward_train_blocking(&dy.view(), &x.view(), shape.layout(), &mean, &invstd, Some(gamma)).unwrap();
        let what = format!("{:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
        let e = rel_err_floor(got.dx.iter(), want.dx.iter(), floor);
        assert!(e <= tol, "dx {what}: relative error {e:.3e} > {tol:.0e}");
        assert_rel(&format!("dgamma {what}"), &got.dgamma, &want.dgamma, tol);
        assert_rel(&format!("dbeta {what}"), &got.dbeta, &want.dbeta, tol);
    }
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
                let got = ctx.backward_inference_blocking(&dy.view(), &x.view(), shape.layout(), &running, gamma, 1e-5).unwrap();
                let want = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, gamma, 1e-5).unwrap();
                let what = format!("{:?} {:?} affine={}", shape.dims(), shape.layout(), gamma.is_some());
                assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), want.dx.as_slice().unwrap(), 1e-5);
                assert_rel(&format!("dgamma {what}"), &got.dgamma, &want.dgamma, 1e-5);
                assert_rel(&format!("dbeta {what}"), &got.dbeta, &want.dbeta, 1e-5);
            }
        }
    }
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
    let got = ctx().backward_train_blocking(&dy.view(), &x.view(), Layout::ChannelsFirst, &mean, &invstd, Some(&gamma[..])).unwrap();
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
