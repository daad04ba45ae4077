//! Inference forward (finalize.wgsl's prepare_inference, apply.wgsl) against the CPU reference.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{reference, Affine, Layout, RunningStats, Shape};

fn running_for(c: usize, seed: u64) -> RunningStats {
    RunningStats { mean: vector(c, seed, -20.0, 20.0), var: vector(c, seed + 1, 0.25, 40.0), num_batches_tracked: 3 }
}

#[test]
fn matches_reference_over_the_shape_matrix() {
    for ctx in tuned_contexts() {
        matrix_on(&ctx);
    }
}

fn matrix_on(ctx: &wgpu_batchnorm::GpuContext) {
    for c in [1, 3, 64, 1000] {
        let running = running_for(c, 5);
        let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
        for shape in shape_matrix(c)
            .into_iter()
            .chain([Shape::new(&[4, c, 160, 160], Layout::ChannelsFirst).unwrap()].into_iter().filter(|_| c <= 64))
        {
            let x = typical_data(&shape, 9);
            for affine in [true, false] {
                let a = affine.then_some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
                let y = ctx.infer(&x.view(), shape.layout(), a, &running, 1e-5).unwrap();
                let (g, b) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
                let want = reference::forward_inference(&shape, &x.view(), g, b, &running.mean, &running.var, 1e-5).unwrap();
                assert_rel(
                    &format!("y {:?} {:?} affine={affine}", shape.dims(), shape.layout()),
                    y.as_slice().unwrap(),
                    want.as_slice().unwrap(),
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn onnx_example_vectors() {
    let ctx = ctx();
    let x = ArrayD::from_shape_vec(vec![1, 2, 1, 3], vec![-1f32, 0., 1., 2., 3., 4.]).unwrap();
    let running = RunningStats { mean: vec![0.0, 3.0], var: vec![1.0, 1.5], num_batches_tracked: 1 };
    let (gamma, beta) = ([1f32, 1.5], [0f32, 1.]);
    let y = ctx.infer(&x.view(), Layout::ChannelsFirst, Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) }), &running, 1e-5).unwrap();
    let want = [-0.999995, 0.0, 0.999995, -0.2247408, 1.0, 2.2247408];
    for (g, w) in y.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "y {y:?}");
    }
}

/// Data ten thousand standard deviations from zero, normalized by running
/// statistics near it: x - running_mean must not round away the signal.
#[test]
fn offset_data_keeps_its_precision() {
    let ctx = ctx();
    let shape = Shape::new(&[8, 4, 33], Layout::ChannelsFirst).unwrap();
    let x = channel_data(&shape, 21, |c| (1e4 * (c as f64 + 1.0), 1.0));
    let running = RunningStats { mean: vec![1e4, 2e4, 3e4, 4e4], var: vec![1.0; 4], num_batches_tracked: 1 };
    let y = ctx.infer(&x.view(), Layout::ChannelsFirst, None, &running, 1e-5).unwrap();
    let want = reference::forward_inference(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
    assert_rel("y", y.as_slice().unwrap(), want.as_slice().unwrap(), 2e-5);
}
