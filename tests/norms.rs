//! The normalization family (group, instance, layer and RMS norm) against the
//! f64 reference (`reference::group_norm` ...) computed from the raw data:
//! forward outputs and saved statistics, and the backward at the reference's
//! statistics rounded to f32 (as a forward hands them over). Every check runs
//! on the shared context and the other tunings (`tuned_contexts`), so rows in
//! one chunk (the one-read path) and rows in many chunks (three passes) both run.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{
    reference, Affine, BackwardStats, Error, GpuContext, Layout, Norm, NormBackwardBuffers, NormBackwardInputs, NormForwardBuffers,
    NormParamGradBuffers, NormStats, Options, RunningStats, Shape,
};

const TOL: f64 = 1e-5;

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// Values with a different offset and scale per `block` consecutive elements:
/// rows of layer norm, or spans of channels.
fn blocky(dims: &[usize], block: usize, seed: u64, offset: f64) -> ArrayD<f32> {
    let n: usize = dims.iter().product();
    let z = channel_data(&Shape::new(&[1, n], Layout::ChannelsFirst).unwrap(), seed, |_| (0.0, 1.0));
    let data = z.iter().enumerate().map(|(i, &v)| {
        let r = i / block.max(1);
        let s = 0.5 + (r % 5) as f64;
        (offset * (1.0 + (r % 3) as f64) + ((r * 7 % 11) as f64 - 5.0) * s + s * f64::from(v)) as f32
    });
    ArrayD::from_shape_vec(dims, data.collect()).unwrap()
}

fn gradient(dims: &[usize], seed: u64) -> ArrayD<f32> {
    blocky(dims, usize::MAX, seed, 0.0)
}

// ---------------------------------------------------------------- group norm

fn check_group(ctxs: &[std::sync::Arc<GpuContext>], shape: &Shape, groups: usize, x: &ArrayD<f32>, tol: f64) {
    let c = shape.channels();
    let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
    let dy = gradient(shape.dims(), 3);
    let want = reference::group_norm(shape, &x.view(), groups, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
    let grads = reference::group_norm_backward(
        shape,
        &dy.view(),
        &x.view(),
        groups,
        &want.mean,
        &want.rstd,
        Some(&gamma.iter().map(|&g| f64::from(g)).collect::<Vec<_>>()[..]),
    )
    .unwrap();
    let op = Norm::Group { shape: shape.clone(), groups };
    let options = op.default_options();
    let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
    for ctx in ctxs {
        let what = format!("group norm {:?} {:?} G={groups} {:?}", shape.dims(), shape.layout(), ctx.tuning().workgroup_size);
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), tol);
        assert_rel(&format!("mean {what}"), out.mean.as_deref().unwrap(), &want.mean, tol);
        assert_rel(&format!("rstd {what}"), &out.rstd, &want.rstd, tol);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let got =
            ctx.norm_backward_blocking(&op, &inputs, NormStats { mean: Some(&mean[..]), rstd: &rstd[..] }, Some(&gamma), &options).unwrap();
        let (dgamma, dbeta) = param_grads(&got);
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), grads.dx.as_slice().unwrap(), tol);
        assert_rel(&format!("dgamma {what}"), dgamma, &grads.dgamma, tol);
        assert_rel(&format!("dbeta {what}"), dbeta, &grads.dbeta, tol);
    }
}

#[test]
fn group_norm_matches_reference_in_both_layouts() {
    let ctxs = tuned_contexts();
    for (dims, layout, groups) in [
        (vec![2, 6, 5, 7], Layout::ChannelsFirst, vec![1, 3, 6]),
        (vec![2, 5, 7, 6], Layout::ChannelsLast, vec![1, 2, 6]),
        (vec![3, 4, 257], Layout::ChannelsFirst, vec![2]),
        (vec![3, 257, 4], Layout::ChannelsLast, vec![4]),
        (vec![1, 3, 1], Layout::ChannelsFirst, vec![1]),
        (vec![2, 2, 3, 2, 8], Layout::ChannelsLast, vec![4]),
        // vec4 items: runs of S % 4 == 0 values a channel, and C / G % 4 == 0 channels a group.
        (vec![2, 8, 3, 4], Layout::ChannelsFirst, vec![1, 2, 8]),
        (vec![2, 8, 36], Layout::ChannelsFirst, vec![4]),
        (vec![2, 5, 7, 16], Layout::ChannelsLast, vec![1, 2, 4]),
    ] {
        let shape = Shape::new(&dims, layout).unwrap();
        let x = typical_data(&shape, 7);
        for g in groups {
            check_group(&ctxs, &shape, g, &x, TOL);
        }
    }
}

/// Rows of 4099 * 8 values: many chunks a row on the GPU tuning, one on the CPU one.
#[test]
fn group_norm_long_rows() {
    let shape = Shape::new(&[2, 8, 4099], Layout::ChannelsFirst).unwrap();
    check_group(&tuned_contexts(), &shape, 1, &typical_data(&shape, 8), TOL);
}

// ------------------------------------------------------------- instance norm

fn check_instance(ctxs: &[std::sync::Arc<GpuContext>], shape: &Shape, x: &ArrayD<f32>, tol: f64) {
    let c = shape.channels();
    let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
    let dy = gradient(shape.dims(), 3);
    let want = reference::instance_norm(shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
    let gamma64: Vec<f64> = gamma.iter().map(|&g| f64::from(g)).collect();
    let grads = reference::instance_norm_backward(shape, &dy.view(), &x.view(), &want.mean, &want.rstd, Some(&gamma64[..])).unwrap();
    let op = Norm::Instance(shape.clone());
    let options = Options { affine: true, track_running_stats: true, ..Options::default() };
    let mut want_running = RunningStats::<f64>::new(c);
    reference::instance_norm_update_running(&mut want_running, &want, shape.per_channel() / shape.dims()[0], options.momentum).unwrap();
    let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
    for ctx in ctxs {
        let what = format!("instance norm {:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning().workgroup_size);
        let mut running = RunningStats::new(c);
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), Some(&mut running), &options).unwrap();
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), tol);
        assert_rel(&format!("mean {what}"), out.mean.as_deref().unwrap(), &want.mean, tol);
        assert_rel(&format!("rstd {what}"), &out.rstd, &want.rstd, tol);
        assert_rel(&format!("running_mean {what}"), &running.mean, &want_running.mean, tol);
        assert_rel(&format!("running_var {what}"), &running.var, &want_running.var, tol);
        assert_eq!(running.num_batches_tracked, 1);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let got =
            ctx.norm_backward_blocking(&op, &inputs, NormStats { mean: Some(&mean[..]), rstd: &rstd[..] }, Some(&gamma), &options).unwrap();
        let (dgamma, dbeta) = param_grads(&got);
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), grads.dx.as_slice().unwrap(), tol);
        assert_rel(&format!("dgamma {what}"), dgamma, &grads.dgamma, tol);
        assert_rel(&format!("dbeta {what}"), dbeta, &grads.dbeta, tol);
    }
}

#[test]
fn instance_norm_matches_reference_in_both_layouts() {
    let ctxs = tuned_contexts();
    for (dims, layout) in [
        (vec![2, 3, 257], Layout::ChannelsFirst),
        (vec![2, 4, 5, 7], Layout::ChannelsFirst),
        (vec![3, 2, 2, 2, 3], Layout::ChannelsFirst),
        (vec![2, 5, 7, 4], Layout::ChannelsLast),
        (vec![2, 3, 5], Layout::ChannelsLast),
        (vec![1, 2, 4099], Layout::ChannelsFirst),
        (vec![2, 8, 3, 4], Layout::ChannelsFirst),
        (vec![3, 4, 260], Layout::ChannelsFirst),
    ] {
        let shape = Shape::new(&dims, layout).unwrap();
        check_instance(&ctxs, &shape, &typical_data(&shape, 9), TOL);
    }
}

/// Eval mode with running statistics is batch norm's inference forward.
#[test]
fn instance_norm_eval_uses_the_running_statistics() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 3, 16], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 4);
    let options = Options { affine: false, track_running_stats: true, ..Options::default() };
    let running = RunningStats { mean: vec![1.0, -2.0, 0.5], var: vec![4.0, 0.25, 1.0], num_batches_tracked: 3 };
    let y = ctx.norm_inference_blocking(&Norm::Instance(shape.clone()), x.view(), None, None, &running, &options).unwrap();
    let want = reference::forward_inference::<f32, f32>(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
    assert_rel("instance norm eval", y.as_slice().unwrap(), want.as_slice().unwrap(), TOL);
}

/// Its backward is batch norm's at the running statistics: `dx = dy * gamma *
/// invstd`, `dgamma = sum dy * (x - mean) * invstd`, `dbeta = sum dy`, from
/// the raw data in f64.
#[test]
fn instance_norm_eval_backward_is_at_the_running_statistics() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 3, 16], Layout::ChannelsFirst).unwrap();
    let (x, dy) = (typical_data(&shape, 4), gradient(shape.dims(), 5));
    let options = Options { affine: true, track_running_stats: true, ..Options::default() };
    let running = RunningStats { mean: vec![1.0, -2.0, 0.5], var: vec![4.0, 0.25, 1.0], num_batches_tracked: 3 };
    let gamma = [1.5f32, -0.5, 2.0];
    let op = Norm::Instance(shape.clone());
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let grads = ctx.norm_backward_blocking(&op, &inputs, running.backward_stats(), Some(&gamma), &options).unwrap();
    let invstd: Vec<f64> = running.var.iter().map(|&v| 1.0 / (f64::from(v) + 1e-5).sqrt()).collect();
    let (mut dgamma, mut dbeta, mut dx) = (vec![0.0f64; 3], vec![0.0f64; 3], Vec::new());
    for ((i, &d), &v) in dy.indexed_iter().zip(x.iter()) {
        let (c, d) = (i[1], f64::from(d));
        dx.push(d * f64::from(gamma[c]) * invstd[c]);
        dgamma[c] += d * (f64::from(v) - f64::from(running.mean[c])) * invstd[c];
        dbeta[c] += d;
    }
    assert_rel("eval dx", grads.dx.as_slice().unwrap(), &dx, TOL);
    assert_rel("eval dgamma", grads.dgamma.as_deref().unwrap(), &dgamma, TOL);
    assert_rel("eval dbeta", grads.dbeta.as_deref().unwrap(), &dbeta, TOL);
    let untracked = Options { affine: true, track_running_stats: false, ..Options::default() };
    let refused = ctx.norm_backward_blocking(&op, &inputs, running.backward_stats(), Some(&gamma), &untracked);
    assert!(matches!(refused, Err(Error::OptionsMismatch { .. })), "{refused:?}");
}

// ---------------------------------------------------------------- layer norm

fn check_layer(ctxs: &[std::sync::Arc<GpuContext>], dims: &[usize], ns: &[usize], x: &ArrayD<f32>, tol: f64) {
    let d: usize = ns.iter().product();
    let (gamma, beta) = (vector(d, 1, 0.5, 1.5), vector(d, 2, -1.0, 1.0));
    let dy = gradient(dims, 3);
    let want = reference::layer_norm(&x.view(), ns, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
    let gamma64: Vec<f64> = gamma.iter().map(|&g| f64::from(g)).collect();
    let grads = reference::layer_norm_backward(&dy.view(), &x.view(), ns, &want.mean, &want.rstd, Some(&gamma64[..])).unwrap();
    let op = Norm::Layer { dims: dims.to_vec(), normalized_shape: ns.to_vec() };
    let options = op.default_options();
    let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
    for ctx in ctxs {
        let what = format!("layer norm {dims:?} over {ns:?} {:?}", ctx.tuning().workgroup_size);
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), tol);
        assert_rel(&format!("mean {what}"), out.mean.as_deref().unwrap(), &want.mean, tol);
        assert_rel(&format!("rstd {what}"), &out.rstd, &want.rstd, tol);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let got =
            ctx.norm_backward_blocking(&op, &inputs, NormStats { mean: Some(&mean[..]), rstd: &rstd[..] }, Some(&gamma), &options).unwrap();
        let (dgamma, dbeta) = param_grads(&got);
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), grads.dx.as_slice().unwrap(), tol);
        assert_rel(&format!("dgamma {what}"), dgamma, &grads.dgamma, tol);
        assert_rel(&format!("dbeta {what}"), dbeta, &grads.dbeta, tol);
    }
}

const ROWS: [(&[usize], &[usize]); 7] = [
    (&[5, 1], &[1]),
    (&[7, 3], &[3]),
    (&[2, 3, 257], &[257]),
    (&[2, 4099], &[4099]),
    (&[2, 3, 4, 5], &[4, 5]),
    (&[3, 2, 5, 8], &[2, 5, 8]),
    (&[300, 2], &[2]),
];

#[test]
fn layer_norm_matches_reference() {
    let ctxs = tuned_contexts();
    for (dims, ns) in ROWS {
        let d: usize = ns.iter().product();
        check_layer(&ctxs, dims, ns, &blocky(dims, d, 5, 0.0), TOL);
    }
}

/// Channels-last layer norm (ConvNeXt): over C of an NHWC tensor.
#[test]
fn layer_norm_over_the_channels_of_nhwc() {
    check_layer(&tuned_contexts(), &[2, 7, 5, 12], &[12], &blocky(&[2, 7, 5, 12], 12, 6, 0.0), TOL);
}

// ------------------------------------------------------------------ RMS norm

fn check_rms(ctxs: &[std::sync::Arc<GpuContext>], dims: &[usize], ns: &[usize], x: &ArrayD<f32>, tol: f64) {
    let d: usize = ns.iter().product();
    let gamma = vector(d, 1, 0.5, 1.5);
    let dy = gradient(dims, 3);
    let op = Norm::Rms { dims: dims.to_vec(), normalized_shape: ns.to_vec() };
    let options = op.default_options();
    let eps = options.eps;
    let want = reference::rms_norm(&x.view(), ns, Some(&gamma[..]), f64::from(eps)).unwrap();
    let gamma64: Vec<f64> = gamma.iter().map(|&g| f64::from(g)).collect();
    let grads = reference::rms_norm_backward(&dy.view(), &x.view(), ns, &want.rstd, Some(&gamma64[..])).unwrap();
    let rstd = f32s(&want.rstd);
    for ctx in ctxs {
        let what = format!("rms norm {dims:?} over {ns:?} {:?}", ctx.tuning().workgroup_size);
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), None, None, &options).unwrap();
        assert!(out.mean.is_none());
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), tol);
        assert_rel(&format!("rstd {what}"), &out.rstd, &want.rstd, tol);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let got = ctx.norm_backward_blocking(&op, &inputs, NormStats { mean: None, rstd: &rstd[..] }, Some(&gamma), &options).unwrap();
        assert!(got.dbeta.is_none());
        assert_rel(&format!("dx {what}"), got.dx.as_slice().unwrap(), grads.dx.as_slice().unwrap(), tol);
        assert_rel(&format!("dgamma {what}"), got.dgamma.as_deref().unwrap(), &grads.dgamma, tol);
    }
}

#[test]
fn rms_norm_matches_reference() {
    let ctxs = tuned_contexts();
    for (dims, ns) in ROWS {
        let d: usize = ns.iter().product();
        check_rms(&ctxs, dims, ns, &blocky(dims, d, 5, 0.0), TOL);
    }
}

/// Enough rows for blocks of 16 to 64 that sum `dgamma` and `dbeta` in their
/// `dx` walk (the CPU tunings), with rows of 20, 30 and 21 items: the walk's
/// last tile of four items a lane is partly past the row's end.
#[test]
fn long_row_blocks_with_partial_tiles() {
    let ctxs = tuned_contexts();
    for d in [80, 120, 21] {
        let dims = [1024, d];
        let x = blocky(&dims, d, 7, 0.0);
        check_layer(&ctxs, &dims, &[d], &x, TOL);
        check_rms(&ctxs, &dims, &[d], &x, TOL);
    }
}

// ---------------------------------------------------------------- numerics

/// Rows whose mean is 1e3 to 1e4 standard deviations (transformer outliers,
/// offset activations): y, dx and dgamma still to 2e-5, as batch norm.
#[test]
fn offset_rows_keep_their_accuracy() {
    let ctxs = tuned_contexts();
    for offset in [1e3, 1e4] {
        check_layer(&ctxs, &[6, 257], &[257], &blocky(&[6, 257], 257, 11, offset), 2e-5);
        check_rms(&ctxs, &[6, 257], &[257], &blocky(&[6, 257], 257, 11, offset), 2e-5);
        // Channels-last with scalar (C = 6) and vec4 (C = 8) items: lanes across channels.
        for (dims, layout) in
            [(vec![2, 4, 5, 7], Layout::ChannelsFirst), (vec![2, 5, 7, 6], Layout::ChannelsLast), (vec![2, 5, 7, 8], Layout::ChannelsLast)]
        {
            let shape = Shape::new(&dims, layout).unwrap();
            let x = channel_data(&shape, 12, |c| (offset * (1 + c % 3) as f64, 1.0 + c as f64));
            check_group(&ctxs, &shape, 2, &x, 2e-5);
            check_instance(&ctxs, &shape, &x, 2e-5);
        }
    }
}

/// A constant row normalizes to beta exactly, with finite gradients; NaN in
/// one row leaves every other row's outputs as they were.
#[test]
fn constant_rows_give_beta_and_nan_stays_in_its_row() {
    for ctx in tuned_contexts() {
        let (rows, d) = (4, 300);
        let mut x = blocky(&[rows, d], d, 13, 0.0);
        x.as_slice_mut().unwrap()[d..2 * d].fill(3.25);
        let (gamma, beta) = (vector(d, 1, 0.5, 1.5), vector(d, 2, -1.0, 1.0));
        let op = Norm::Layer { dims: vec![rows, d], normalized_shape: vec![d] };
        let options = op.default_options();
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        assert_eq!(&out.y.as_slice().unwrap()[d..2 * d], &beta[..], "constant row");
        let dy = gradient(&[rows, d], 3);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), Some(&gamma), &options).unwrap();
        assert!(grads.dx.iter().all(|v| v.is_finite()));

        let clean = out;
        x.as_slice_mut().unwrap()[2 * d + 17] = f32::NAN;
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let (y, y0) = (out.y.as_slice().unwrap(), clean.y.as_slice().unwrap());
        assert!(y[2 * d..3 * d].iter().all(|v| v.is_nan()), "the NaN row");
        assert_eq!(&y[..2 * d], &y0[..2 * d]);
        assert_eq!(&y[3 * d..], &y0[3 * d..]);

        let shape = Shape::new(&[2, 4, 9], Layout::ChannelsFirst).unwrap();
        let mut x = typical_data(&shape, 14);
        x.as_slice_mut().unwrap()[9..18].fill(-7.5);
        let op = Norm::Group { shape, groups: 4 };
        let options = op.default_options();
        let (gamma, beta) = (vec![2.0; 4], vec![0.25, 0.5, 0.75, 1.0]);
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        assert!(out.y.as_slice().unwrap()[9..18].iter().all(|&v| v == 0.5), "constant group");

        // Channels-last: a NaN in sample 0's first value (the position its
        // partial statistics are shifted by) stays in sample 0's group.
        let shape = Shape::new(&[2, 3, 5, 8], Layout::ChannelsLast).unwrap();
        let mut x = typical_data(&shape, 17);
        let op = Norm::Group { shape: shape.clone(), groups: 4 };
        let (gamma, beta) = (vector(8, 1, 0.5, 1.5), vector(8, 2, -1.0, 1.0));
        let clean = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        x.as_slice_mut().unwrap()[0] = f32::NAN;
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let (y, y0, half) = (out.y.as_slice().unwrap(), clean.y.as_slice().unwrap(), shape.numel() / 2);
        assert!((0..half).filter(|i| i % 8 < 2).all(|i| y[i].is_nan()), "the NaN group of sample 0");
        assert!((0..half).filter(|i| i % 8 >= 2).all(|i| y[i] == y0[i]), "sample 0's other groups");
        assert_eq!(&y[half..], &y0[half..], "sample 1");
    }
}

// ---------------------------------------------------------- low-level calls

/// The prepared ops over slices of one pooled buffer give bitwise what the
/// high-level calls give; wrong slices are typed errors before anything is recorded.
#[test]
fn prepared_ops_over_slices_of_one_buffer() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 5, 7, 6], Layout::ChannelsLast).unwrap();
    let op = Norm::Group { shape: shape.clone(), groups: 3 };
    let options = op.default_options();
    let x = typical_data(&shape, 15);
    let dy = gradient(shape.dims(), 16);
    let (gamma, beta) = (vector(6, 1, 0.5, 1.5), vector(6, 2, -1.0, 1.0));
    let want = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let want_grads = ctx.norm_backward_blocking(&op, &inputs, want.stats(), Some(&gamma), &options).unwrap();

    let a = ctx.slice_alignment().max(256);
    let n = shape.numel() as u64 * 4;
    let tensor = n.next_multiple_of(a);
    // x, y, dy, dx, then 256-byte parts: mean, rstd, gamma, beta, dgamma, dbeta.
    let pool = ctx.storage("pool", ((4 * tensor + 6 * a) / 4) as usize).unwrap();
    let t = |i: u64| pool.slice(i * tensor..i * tensor + n);
    let p = |i: u64| pool.slice(4 * tensor + i * a..4 * tensor + (i + 1) * a);
    ctx.queue().write_buffer(&pool, 0, bytemuck::cast_slice(x.as_slice().unwrap()));
    ctx.queue().write_buffer(&pool, 2 * tensor, bytemuck::cast_slice(dy.as_slice().unwrap()));
    ctx.queue().write_buffer(&pool, 4 * tensor + 2 * a, bytemuck::cast_slice(&gamma));
    ctx.queue().write_buffer(&pool, 4 * tensor + 3 * a, bytemuck::cast_slice(&beta));
    let forward = ctx.prepare_norm(&op, &options).unwrap();
    let backward = ctx.prepare_norm_backward(&op, &options, true).unwrap();
    assert_eq!((forward.rows(), forward.params()), (6, 6));
    let fb = NormForwardBuffers {
        x: t(0),
        y: t(1),
        stats: NormStats { mean: Some(p(0)), rstd: p(1) },
        gamma: Some(p(2)),
        beta: Some(p(3)),
        running: None,
        residual: None,
        workspace: None,
    };
    let bb = NormBackwardBuffers {
        dy: t(2),
        x: t(0),
        dx: t(3),
        stats: BackwardStats::Saved(NormStats { mean: Some(p(0)), rstd: p(1) }),
        gamma: Some(p(2)),
        param_grads: Some(NormParamGradBuffers { dgamma: p(4), dbeta: Some(p(5)) }),
        z: None,
        dresidual: None,
        workspace: None,
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    forward.record(&mut encoder, &fb).unwrap();
    backward.record(&mut encoder, &bb).unwrap();
    ctx.queue().submit([encoder.finish()]);
    let all = pollster::block_on(ctx.download(&[(&pool, ((4 * tensor + 6 * a) / 4) as usize)])).unwrap().remove(0);
    let at = |bytes: u64, len: usize| &all[(bytes / 4) as usize..(bytes / 4) as usize + len];
    assert_eq!(at(tensor, shape.numel()), want.y.as_slice().unwrap());
    assert_eq!(at(4 * tensor, 6), want.mean.as_deref().unwrap());
    assert_eq!(at(4 * tensor + a, 6), &want.rstd[..]);
    assert_eq!(at(3 * tensor, shape.numel()), want_grads.dx.as_slice().unwrap());
    assert_eq!(at(4 * tensor + 4 * a, 6), want_grads.dgamma.as_deref().unwrap());
    assert_eq!(at(4 * tensor + 5 * a, 6), want_grads.dbeta.as_deref().unwrap());

    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let overlapping = NormForwardBuffers { y: t(0), ..fb };
    assert!(matches!(forward.record(&mut encoder, &overlapping), Err(Error::BadBuffer { name: "y", .. })));
    let short = NormForwardBuffers { stats: NormStats { mean: Some(pool.slice(4 * tensor..4 * tensor + 8)), rstd: p(1) }, ..fb };
    assert!(matches!(forward.record(&mut encoder, &short), Err(Error::BadBuffer { name: "mean", .. })));
    let no_beta = NormForwardBuffers { beta: None, ..fb };
    assert!(matches!(forward.record(&mut encoder, &no_beta), Err(Error::OptionsMismatch { .. })));
    if ctx.slice_alignment() > 4 {
        let misaligned = NormForwardBuffers { gamma: Some(pool.slice(4 * tensor + 2 * a + 4..4 * tensor + 3 * a)), ..fb };
        assert!(matches!(forward.record(&mut encoder, &misaligned), Err(Error::BadBuffer { name: "gamma", .. })));
    }
}

/// The backward without `dgamma` and `dbeta` (a frozen affine layer): its dx
/// walk is not the one that sums them. Group norm (G = 1 and 4, and instance
/// norm as G = C) in channels-first, whose rows are runs of one channel each,
/// on every tuning.
#[test]
fn dx_without_parameter_gradients() {
    for ctx in tuned_contexts() {
        for (dims, groups) in [([2, 8, 8, 8], 1), ([2, 8, 8, 8], 4), ([3, 4, 6, 10], 4)] {
            let shape = Shape::new(&dims, Layout::ChannelsFirst).unwrap();
            let c = shape.channels();
            let (x, dy) = (typical_data(&shape, 60), gradient(shape.dims(), 61));
            let gamma = vector(c, 1, 0.5, 1.5);
            let want = reference::group_norm(&shape, &x.view(), groups, Some(&gamma[..]), None, 1e-5).unwrap();
            let gamma64: Vec<f64> = gamma.iter().map(|&g| f64::from(g)).collect();
            let grads =
                reference::group_norm_backward(&shape, &dy.view(), &x.view(), groups, &want.mean, &want.rstd, Some(&gamma64[..])).unwrap();
            let op = Norm::Group { shape: shape.clone(), groups };
            let backward = ctx.prepare_norm_backward(&op, &op.default_options(), false).unwrap();
            let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
            let n = shape.numel();
            let (dy_b, x_b, dx_b) = (
                ctx.upload("dy", dy.as_slice().unwrap()).unwrap(),
                ctx.upload("x", x.as_slice().unwrap()).unwrap(),
                ctx.storage("dx", n).unwrap(),
            );
            let (mean_b, rstd_b, gamma_b) =
                (ctx.upload("mean", &mean).unwrap(), ctx.upload("rstd", &rstd).unwrap(), ctx.upload("gamma", &gamma).unwrap());
            let bb = NormBackwardBuffers {
                dy: dy_b.slice(..),
                x: x_b.slice(..),
                dx: dx_b.slice(..),
                stats: BackwardStats::Saved(NormStats { mean: Some(mean_b.slice(..)), rstd: rstd_b.slice(..) }),
                gamma: Some(gamma_b.slice(..)),
                param_grads: None,
                z: None,
                dresidual: None,
                workspace: None,
            };
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            backward.record(&mut encoder, &bb).unwrap();
            ctx.queue().submit([encoder.finish()]);
            let dx = pollster::block_on(ctx.download(&[(&dx_b, n)])).unwrap().remove(0);
            let what = format!("dx {dims:?} G={groups} {:?}", ctx.tuning());
            assert_rel(&what, &dx, grads.dx.as_slice().unwrap(), TOL);
        }
    }
}

// ------------------------------------------------------------------- errors

#[test]
fn bad_arguments_are_typed_errors() {
    let ctx = ctx();
    let x = ArrayD::<f32>::zeros(vec![2, 6, 4]);
    let shape = Shape::new(&[2, 6, 4], Layout::ChannelsFirst).unwrap();
    let group = |groups| Norm::Group { shape: shape.clone(), groups };
    let gn = |g| ctx.norm_blocking(&group(g), x.view(), None, None, None, &Options { affine: false, ..group(g).default_options() });
    assert!(matches!(gn(4), Err(Error::InvalidGroups { channels: 6, groups: 4 })));
    assert!(matches!(gn(0), Err(Error::InvalidGroups { .. })));
    let eps = Options { eps: -1.0, affine: false, ..group(3).default_options() };
    assert!(matches!(ctx.norm_blocking(&group(3), x.view(), None, None, None, &eps), Err(Error::InvalidEps(_))));
    let (g, b) = (vec![1.0; 5], vec![0.0; 6]);
    let wrong_len = ctx.norm_blocking(&group(3), x.view(), Some(&g), Some(&b), None, &group(3).default_options());
    assert!(matches!(wrong_len, Err(Error::ShapeMismatch { what: "gamma", .. })));
    assert!(matches!(
        ctx.norm_blocking(&group(3), x.view(), None, None, None, &group(3).default_options()),
        Err(Error::OptionsMismatch { .. })
    ));

    let untracked = |affine| Options { affine, track_running_stats: false, ..Options::default() };
    let ln = |ns: &[usize]| {
        let op = Norm::Layer { dims: x.shape().to_vec(), normalized_shape: ns.to_vec() };
        ctx.norm_blocking(&op, x.view(), None, None, None, &untracked(false))
    };
    assert!(matches!(ln(&[6]), Err(Error::ShapeMismatch { what: "normalized_shape", .. })));
    assert!(matches!(ln(&[]), Err(Error::ShapeMismatch { what: "normalized_shape", .. })));
    let layer = wgpu_batchnorm::LayerNorm::new(ctx.clone(), &[], untracked(true));
    assert!(matches!(layer, Err(Error::ShapeMismatch { what: "normalized_shape", .. })));
    assert!(matches!(ln(&[2, 6, 4, 1]), Err(Error::ShapeMismatch { .. })));
    let empty = ArrayD::<f32>::zeros(vec![0, 4]);
    let rms = Norm::Rms { dims: vec![0, 4], normalized_shape: vec![4] };
    assert!(matches!(
        ctx.norm_blocking(&rms, empty.view(), None, None, None, &Options { affine: false, ..rms.default_options() }),
        Err(Error::EmptyTensor { .. })
    ));

    let one = ArrayD::<f32>::zeros(vec![2, 3, 1]);
    let instance = Norm::Instance(Shape::new(one.shape(), Layout::ChannelsFirst).unwrap());
    let r = ctx.norm_blocking(&instance, one.view(), None, None, None, &instance.default_options());
    assert!(matches!(r, Err(Error::TooFewValuesPerChannel { count: 1, .. })));
    let instance = Norm::Instance(shape.clone());
    let untracked_eval = ctx.norm_inference_blocking(&instance, x.view(), None, None, &RunningStats::new(6), &instance.default_options());
    assert!(matches!(untracked_eval, Err(Error::OptionsMismatch { what: "running statistics", .. })), "{untracked_eval:?}");
    let out = reference::instance_norm::<f32, f32>(&shape, &x.view(), None, None, 1e-5).unwrap();
    let mut wrong = RunningStats::<f64>::new(5);
    let r = reference::instance_norm_update_running(&mut wrong, &out, 4, Default::default());
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })) && wrong.num_batches_tracked == 0, "{r:?}");
    let tracked = Options { affine: false, track_running_stats: true, ..Options::default() };
    assert!(matches!(ctx.norm_blocking(&instance, x.view(), None, None, None, &tracked), Err(Error::OptionsMismatch { .. })));

    let dy = ArrayD::<f32>::zeros(vec![2, 6, 5]);
    let stats = NormStats { mean: Some(&[0.0; 12][..]), rstd: &[1.0; 12][..] };
    let op = Norm::Layer { dims: vec![2, 6, 4], normalized_shape: vec![4] };
    let options = untracked(false);
    assert!(matches!(
        ctx.norm_backward_blocking(&op, &NormBackwardInputs { dy: dy.view(), x: x.view(), z: None }, stats, None, &options),
        Err(Error::ShapeMismatch { what: "dy", .. })
    ));
    let same = NormBackwardInputs { dy: x.view(), x: x.view(), z: None };
    let short = NormStats { mean: Some(&[0.0; 11][..]), rstd: &[1.0; 12][..] };
    assert!(matches!(ctx.norm_backward_blocking(&op, &same, short, None, &options), Err(Error::ShapeMismatch { what: "mean", .. })));
    let no_mean = NormStats { mean: None, rstd: &[1.0; 12][..] };
    assert!(matches!(ctx.norm_backward_blocking(&op, &same, no_mean, None, &options), Err(Error::OptionsMismatch { .. })));
    assert!(matches!(ctx.prepare_norm_backward(&op, &options, true), Err(Error::OptionsMismatch { .. })));
}

// ------------------------------------------------------------------- layers

/// Each layer gives what the context's calls give for its parameters, keeps
/// its parameter gradients on the GPU, and refuses a backward it cannot take.
#[test]
fn layers_match_the_calls_they_wrap() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 6, 5, 3], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 21);
    let dy = gradient(shape.dims(), 22);
    let (gamma, beta) = (vector(6, 1, 0.5, 1.5), vector(6, 2, -1.0, 1.0));
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };

    let op = Norm::Group { shape: shape.clone(), groups: 3 };
    let options = op.default_options();
    let mut gn = wgpu_batchnorm::GroupNorm::new(ctx.clone(), 3, 6, options).unwrap();
    assert!(matches!(gn.backward_blocking(&dy.view()), Err(Error::InvalidState(_))));
    gn.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
    let y = gn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    let want = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
    assert_eq!(y, want.y);
    let grads = gn.backward_blocking(&dy.view()).unwrap();
    assert_eq!(grads, ctx.norm_backward_blocking(&op, &inputs, want.stats(), Some(&gamma), &options).unwrap());
    let saved = gn.saved_stats_blocking().unwrap().unwrap();
    assert_eq!((saved.mean.as_deref(), &saved.rstd), (want.mean.as_deref(), &want.rstd));
    assert!(matches!(wgpu_batchnorm::GroupNorm::new(ctx.clone(), 4, 6, options), Err(Error::InvalidGroups { .. })));

    let op = Norm::Instance(shape.clone());
    let options = Options { affine: true, track_running_stats: true, ..Options::default() };
    let mut norm = wgpu_batchnorm::InstanceNorm::new(ctx.clone(), 6, options).unwrap();
    norm.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
    let mut running = RunningStats::new(6);
    for step in 0..2 {
        let xs = typical_data(&shape, 30 + step);
        let y = norm.forward_blocking(&xs.view(), Layout::ChannelsFirst).unwrap();
        assert_eq!(y, ctx.norm_blocking(&op, xs.view(), Some(&gamma), Some(&beta), Some(&mut running), &options).unwrap().y);
    }
    assert_eq!(norm.running_stats_blocking().unwrap().unwrap(), running);
    assert_eq!(norm.num_batches_tracked(), 2);
    norm.eval();
    assert!(!norm.is_training());
    let y = norm.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    assert_eq!(y, ctx.norm_inference_blocking(&op, x.view(), Some(&gamma), Some(&beta), &running, &options).unwrap());
    // Its backward is batch norm's at the running statistics, on either path.
    let eval_grads = ctx.norm_backward_blocking(&op, &inputs, running.backward_stats(), Some(&gamma), &options).unwrap();
    assert_eq!(norm.backward_blocking(&dy.view()).unwrap(), eval_grads);
    let (xb, yb) = (ctx.upload("x", x.as_slice().unwrap()).unwrap(), ctx.storage("y", shape.numel()).unwrap());
    let (dyb, dxb) = (ctx.upload("dy", dy.as_slice().unwrap()).unwrap(), ctx.storage("dx", shape.numel()).unwrap());
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    norm.encode_forward(&mut encoder, &shape, xb.slice(..), yb.slice(..)).unwrap();
    norm.encode_backward(&mut encoder, dyb.slice(..), xb.slice(..), dxb.slice(..)).unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(pollster::block_on(ctx.download(&[(&yb, shape.numel())])).unwrap()[0], y.as_slice().unwrap());
    assert_eq!(pollster::block_on(ctx.download(&[(&dxb, shape.numel())])).unwrap()[0], eval_grads.dx.as_slice().unwrap());
    let dgamma = norm.param_grad_buffers().unwrap().gamma;
    assert_eq!(pollster::block_on(ctx.download(&[(dgamma, 6)])).unwrap()[0], eval_grads.dgamma.unwrap());
    // A checkpoint's statistics, loaded into a fresh layer, give the same eval output.
    let mut restored = wgpu_batchnorm::InstanceNorm::new(ctx.clone(), 6, options).unwrap();
    restored.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
    restored.set_running_stats(&running).unwrap();
    assert_eq!(restored.running_stats_blocking().unwrap().unwrap(), running);
    restored.eval();
    assert_eq!(restored.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap(), y);
    assert!(matches!(restored.set_running_stats(&RunningStats::new(5)), Err(Error::ShapeMismatch { .. })));
    let mut untracked = wgpu_batchnorm::InstanceNorm::new(ctx.clone(), 6, op.default_options()).unwrap();
    assert!(matches!(untracked.set_running_stats(&running), Err(Error::InvalidState(_))));

    let d = 15;
    let rows = blocky(&[4, 3, d], d, 23, 0.0);
    let drows = gradient(&[4, 3, d], 24);
    let (g, b) = (vector(d, 1, 0.5, 1.5), vector(d, 2, -1.0, 1.0));
    let row_inputs = NormBackwardInputs { dy: drows.view(), x: rows.view(), z: None };
    let op = Norm::Layer { dims: vec![4, 3, d], normalized_shape: vec![d] };
    let mut ln = wgpu_batchnorm::LayerNorm::new(ctx.clone(), &[d], op.default_options()).unwrap();
    ln.set_affine(Affine { gamma: &g, beta: Some(&b) }).unwrap();
    assert!(matches!(ln.set_affine(Affine { gamma: &g, beta: None }), Err(Error::OptionsMismatch { .. })));
    let want = ctx.norm_blocking(&op, rows.view(), Some(&g), Some(&b), None, &op.default_options()).unwrap();
    assert_eq!(ln.forward_blocking(&rows.view()).unwrap(), want.y);
    let grads = ln.backward_blocking(&drows.view()).unwrap();
    let want_grads = ctx.norm_backward_blocking(&op, &row_inputs, want.stats(), Some(&g), &op.default_options()).unwrap();
    assert_eq!(grads, want_grads);
    let on_gpu = pollster::block_on(ctx.download(&[(ln.param_grad_buffers().unwrap().gamma, d)])).unwrap().remove(0);
    assert_eq!(Some(on_gpu), want_grads.dgamma);

    let op = Norm::Rms { dims: vec![4, 3, d], normalized_shape: vec![3, d] };
    let mut rms = wgpu_batchnorm::RmsNorm::new(ctx.clone(), &[3, d], op.default_options()).unwrap();
    let ones = vec![1.0; 3 * d];
    let want = ctx.norm_blocking(&op, rows.view(), Some(&ones), None, None, &op.default_options()).unwrap();
    assert_eq!(rms.forward_blocking(&rows.view()).unwrap(), want.y);
    let grads = rms.backward_blocking(&drows.view()).unwrap();
    assert!(grads.dbeta.is_none());
    assert_eq!(grads, ctx.norm_backward_blocking(&op, &row_inputs, want.stats(), Some(&ones), &op.default_options()).unwrap());
    assert!(matches!(rms.forward_blocking(&x.view()), Err(Error::ShapeMismatch { what: "normalized_shape", .. })));
}

// -------------------------------------------------------------- determinism

/// The same input gives bitwise the same outputs run to run, and the subgroup
/// tree (lavapipe with the CPU tuning) gives what the workgroup-memory tree gives.
#[test]
fn results_are_bitwise_reproducible_and_tree_independent() {
    let ctxs = tuned_contexts();
    let workgroup_tree =
        ctxs.iter().find(|c| c.tuning() == wgpu_batchnorm::Tuning { subgroups: false, ..wgpu_batchnorm::Tuning::CPU }).unwrap();
    let shape = Shape::new(&[2, 8, 3, 4], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 40);
    let dy = gradient(shape.dims(), 41);
    let (gamma, beta) = (vector(8, 1, 0.5, 1.5), vector(8, 2, -1.0, 1.0));
    let rows = blocky(&[6, 260], 260, 42, 1e3);
    let drows = gradient(&[6, 260], 43);
    let (g, b) = (vector(260, 1, 0.5, 1.5), vector(260, 2, -1.0, 1.0));
    // Channels-last: lanes across channels, partials per (channel, chunk).
    let last = Shape::new(&[2, 3, 11, 8], Layout::ChannelsLast).unwrap();
    let (x_last, dy_last) = (typical_data(&last, 44), gradient(last.dims(), 45));
    let (op, op_last) = (Norm::Group { shape: shape.clone(), groups: 4 }, Norm::Group { shape: last.clone(), groups: 4 });
    let op_rows = Norm::Layer { dims: vec![6, 260], normalized_shape: vec![260] };
    let run = |ctx: &GpuContext| {
        let options = op.default_options();
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), Some(&gamma), &options).unwrap();
        let out_last = ctx.norm_blocking(&op_last, x_last.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let inputs = NormBackwardInputs { dy: dy_last.view(), x: x_last.view(), z: None };
        let grads_last = ctx.norm_backward_blocking(&op_last, &inputs, out_last.stats(), Some(&gamma), &options).unwrap();
        let options = op_rows.default_options();
        let ln = ctx.norm_blocking(&op_rows, rows.view(), Some(&g), Some(&b), None, &options).unwrap();
        let inputs = NormBackwardInputs { dy: drows.view(), x: rows.view(), z: None };
        let ln_grads = ctx.norm_backward_blocking(&op_rows, &inputs, ln.stats(), Some(&g), &options).unwrap();
        (out, grads, out_last, grads_last, ln, ln_grads)
    };
    let first = run(&ctx());
    assert_eq!(first, run(&ctx()), "run to run");
    assert_eq!(first, run(workgroup_tree), "subgroup against workgroup-memory tree (subgroups: {})", ctx().subgroup_reductions());
}

/// A tensor past the device's `max_storage_buffer_binding_size` is bound in
/// windows of whole samples (whole rows for layer and RMS norm) at aligned
/// offsets, and matches the reference; one sample or row past the limit is
/// `TooLarge`. On a device asked for a 64 KiB binding limit, with the
/// adapter's tuning, one whose workgroup target cuts rows into chunks, and
/// one whose single-workgroup target gives layer and RMS norm's backward
/// long row blocks.
#[test]
fn tensors_past_the_binding_limit_run_in_windows() {
    let (device, queue) = common::limited_device(1 << 16);
    let limited = std::sync::Arc::new(GpuContext::from_device(device.clone(), queue.clone()).unwrap());
    let chunked = wgpu_batchnorm::Tuning { workgroup_size: 8, subgroups: false, ..wgpu_batchnorm::Tuning::GPU };
    // One workgroup's target: layer and RMS norm's backward in 64-row blocks
    // that sum dgamma and dbeta, each window's last block shorter.
    let blocks = wgpu_batchnorm::Tuning { reduce_groups: 1, ..wgpu_batchnorm::Tuning::CPU };
    let ctxs = [
        limited.clone(),
        std::sync::Arc::new(GpuContext::from_device(device.clone(), queue.clone()).unwrap().with_tuning(chunked)),
        std::sync::Arc::new(GpuContext::from_device(device, queue).unwrap().with_tuning(blocks)),
    ];
    // 160 rows of 1024 bytes, then rows of 400 bytes, which reach 256-byte alignment every 16 rows.
    check_layer(&ctxs, &[160, 256], &[256], &blocky(&[160, 256], 256, 50, 0.0), TOL);
    check_layer(&ctxs, &[200, 100], &[100], &blocky(&[200, 100], 100, 51, 10.0), TOL);
    check_rms(&ctxs, &[200, 100], &[100], &blocky(&[200, 100], 100, 52, 0.0), TOL);
    for (dims, layout, groups) in [(vec![9, 4, 1024], Layout::ChannelsFirst, 2), (vec![9, 256, 16], Layout::ChannelsLast, 4)] {
        let shape = Shape::new(&dims, layout).unwrap();
        let x = typical_data(&shape, 53);
        check_group(&ctxs, &shape, groups, &x, TOL);
        check_instance(&ctxs, &shape, &x, TOL);
    }
    let one_row_over = ArrayD::<f32>::zeros(vec![2, 20_000]);
    let op = Norm::Layer { dims: vec![2, 20_000], normalized_shape: vec![20_000] };
    let r = limited.norm_blocking(&op, one_row_over.view(), None, None, None, &Options { affine: false, ..op.default_options() });
    assert!(matches!(r, Err(Error::TooLarge { requested: 80_000, limit: 65_536, .. })), "{r:?}");
    let sample_over = Shape::new(&[2, 4, 5000], Layout::ChannelsFirst).unwrap();
    let op = Norm::Group { shape: sample_over, groups: 2 };
    assert!(matches!(limited.prepare_norm(&op, &op.default_options()), Err(Error::TooLarge { .. })));
}
