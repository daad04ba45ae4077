//! Every bad input gets its typed error, before anything reaches the GPU.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{
    Affine, BackwardStats, BatchNorm, Error, GpuContext, Layout, Momentum, Norm, NormBackwardBuffers, NormBackwardInputs,
    NormForwardBuffers, NormInferenceBuffers, NormOutput, NormStats, Options, RunningBuffers, RunningStats, Shape, Tuning,
};

fn zeros(dims: &[usize]) -> ArrayD<f32> {
    ArrayD::zeros(dims.to_vec())
}

/// The training forward of batch norm over any `x`, its descriptor built
/// from `x`'s dims as a caller builds it (`Shape::new(..)?`), so that a
/// shape no op can take is the call's error.
fn train_any(ctx: &GpuContext, x: &ArrayD<f32>, layout: Layout) -> wgpu_batchnorm::Result<NormOutput> {
    let op = Norm::Batch(Shape::new(x.shape(), layout)?);
    let options = Options { affine: false, track_running_stats: false, ..Options::default() };
    ctx.norm_blocking(&op, x.view(), None, None, None, &options)
}

/// The inference forward of batch norm over any `x`, as `train_any`.
fn infer_any(ctx: &GpuContext, x: &ArrayD<f32>, layout: Layout, running: &RunningStats) -> wgpu_batchnorm::Result<ArrayD<f32>> {
    let op = Norm::Batch(Shape::new(x.shape(), layout)?);
    let options = Options { affine: false, ..Options::default() };
    ctx.norm_inference_blocking(&op, x.view(), None, None, running, &options)
}

#[test]
fn wrong_rank_and_empty_tensors() {
    let ctx = ctx();
    let e = train_any(&ctx, &zeros(&[5]), Layout::ChannelsFirst);
    assert!(matches!(e, Err(Error::BadRank { rank: 1, .. })), "{e:?}");
    let e = train_any(&ctx, &zeros(&[5, 4]), Layout::ChannelsLast);
    assert!(matches!(e, Err(Error::BadRank { rank: 2, .. })), "{e:?}");
    let e = infer_any(&ctx, &zeros(&[1, 2, 3, 4, 5, 6]), Layout::ChannelsFirst, &RunningStats::new(2));
    assert!(matches!(e, Err(Error::BadRank { rank: 6, .. })), "{e:?}");
    let e = train_any(&ctx, &zeros(&[0, 3, 4]), Layout::ChannelsFirst);
    assert!(matches!(e, Err(Error::EmptyTensor { .. })), "{e:?}");
}

#[test]
fn parameter_lengths_must_match_channels() {
    let ctx = ctx();
    let x = zeros(&[4, 3, 5]);
    let (g2, b3) = ([1.0f32; 2], [0.0f32; 3]);
    let e =
        ctx.train(&x.view(), Layout::ChannelsFirst, Some(Affine { gamma: &g2[..], beta: Some(&b3[..]) }), None, Momentum::default(), 1e-5);
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "gamma", .. })), "{e:?}");
    let e = ctx.infer(&x.view(), Layout::ChannelsFirst, None, &RunningStats::new(4), 1e-5);
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "running_mean", .. })), "{e:?}");
    let mut wrong = RunningStats::new(3);
    wrong.var.pop();
    let e = ctx.train(&x.view(), Layout::ChannelsFirst, None, Some(&mut wrong), Momentum::default(), 1e-5);
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "running_var", .. })), "{e:?}");
    let e = ctx.grads_train(&zeros(&[4, 3, 6]).view(), &x.view(), Layout::ChannelsFirst, &[0.0; 3], &[1.0; 3], None, 1e-5);
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "dy", .. })), "{e:?}");
    let e = ctx.grads_train(&x.view(), &x.view(), Layout::ChannelsFirst, &[0.0; 3], &[1.0; 2], None, 1e-5);
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "rstd", .. })), "{e:?}");
}

/// `gamma` and `beta`, and running statistics, are given exactly as the
/// options say: a call never ignores one silently.
#[test]
fn arguments_must_agree_with_the_options() {
    let ctx = ctx();
    let x = zeros(&[4, 3, 5]);
    let (gamma, beta) = ([1.0f32; 3], [0.0f32; 3]);
    let (g, b) = (Some(&gamma[..]), Some(&beta[..]));
    let op = batch(x.shape(), Layout::ChannelsFirst);
    let defaults = Options::default();
    // The training forward checks gamma and beta one by one; the inference forward refuses a lone one as the pair.
    let e = ctx.norm_blocking(&op, x.view(), None, None, Some(&mut RunningStats::new(3)), &defaults);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "gamma", .. })), "{e:?}");
    let e = ctx.norm_blocking(&op, x.view(), g, None, Some(&mut RunningStats::new(3)), &defaults);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "beta", .. })), "{e:?}");
    let unaffine = Options { affine: false, ..Options::default() };
    let e = ctx.norm_blocking(&op, x.view(), None, b, Some(&mut RunningStats::new(3)), &unaffine);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "beta", .. })), "{e:?}");
    let e = ctx.norm_inference_blocking(&op, x.view(), g, None, &RunningStats::new(3), &defaults);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "gamma and beta", .. })), "{e:?}");
    let e = ctx.norm_blocking(&op, x.view(), g, b, None, &defaults);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "running statistics", .. })), "{e:?}");
    let untracked = Options { track_running_stats: false, ..Options::default() };
    let e = ctx.norm_blocking(&op, x.view(), g, b, Some(&mut RunningStats::new(3)), &untracked);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "running statistics", .. })), "{e:?}");
    let e = ctx.norm_inference_blocking(&op, x.view(), g, b, &RunningStats::new(3), &untracked);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "running statistics", .. })), "{e:?}");
    let inputs = NormBackwardInputs { dy: x.view(), x: x.view(), z: None };
    let stats = BackwardStats::Saved(NormStats { mean: Some(&[0.0; 3][..]), rstd: &[1.0; 3][..] });
    let e = ctx.norm_backward_blocking(&op, &inputs, stats, None, &defaults);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "gamma", .. })), "{e:?}");
    let e = ctx.norm_backward_blocking(&op, &inputs, stats, g, &unaffine);
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "gamma", .. })), "{e:?}");
}

#[test]
fn one_value_per_channel_cannot_train() {
    let ctx = ctx();
    let e = ctx.train(&zeros(&[1, 8]).view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5);
    assert!(matches!(e, Err(Error::TooFewValuesPerChannel { count: 1, .. })), "{e:?}");
    let e = ctx.train(&zeros(&[1, 1, 1, 8]).view(), Layout::ChannelsLast, None, None, Momentum::default(), 1e-5);
    assert!(matches!(e, Err(Error::TooFewValuesPerChannel { count: 1, .. })), "{e:?}");
    // Inference with running statistics is fine with one value per channel.
    assert!(ctx.infer(&zeros(&[1, 8]).view(), Layout::ChannelsFirst, None, &RunningStats::new(8), 1e-5).is_ok());
}

#[test]
fn eps_and_momentum_are_checked() {
    let ctx = ctx();
    let x = zeros(&[4, 3]);
    for eps in [-1.0, f32::NAN, f32::INFINITY] {
        let e = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), eps);
        assert!(matches!(e, Err(Error::InvalidEps(_))), "{eps}: {e:?}");
        let e = ctx.infer(&x.view(), Layout::ChannelsFirst, None, &RunningStats::new(3), eps);
        assert!(matches!(e, Err(Error::InvalidEps(_))), "{eps}: {e:?}");
    }
    for m in [-0.5, 1.01, f32::NAN] {
        let mut running = RunningStats::new(3);
        let e = ctx.train(&x.view(), Layout::ChannelsFirst, None, Some(&mut running), Momentum::Exponential(m), 1e-5);
        assert!(matches!(e, Err(Error::InvalidMomentum(_))), "{m}: {e:?}");
        assert_eq!(running.num_batches_tracked, 0, "a refused call changes nothing");
    }
    let options = Options { momentum: Momentum::Exponential(2.0), ..Options::default() };
    assert!(matches!(BatchNorm::new(ctx, 3, options), Err(Error::InvalidMomentum(_))));
}

/// A tuning the kernels cannot be compiled for is an error, not a panic or a wrong answer.
#[test]
fn a_workgroup_size_that_is_not_a_power_of_two_is_refused() {
    let x = zeros(&[4, 3, 5]);
    for workgroup_size in [0, 48, 512] {
        let ctx = wgpu_batchnorm::GpuContext::new_blocking().unwrap().with_tuning(Tuning { workgroup_size, ..Tuning::GPU });
        let e = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5);
        match e {
            Err(Error::InvalidTuning(msg)) => assert!(msg.contains(&workgroup_size.to_string()), "{msg}"),
            other => panic!("{workgroup_size}: {other:?}"),
        }
    }
}

/// Tensors larger than one binding are processed in windows of whole rows
/// (tests/large.rs); one row of C * S values larger than a binding is refused
/// with the limit named.
#[test]
fn a_row_larger_than_the_binding_limit_names_the_limit() {
    let ctx = ctx();
    let limit = ctx.max_binding_bytes();
    let s = (limit / 4 + 1) as usize;
    let x = zeros(&[2, 1, s]);
    let e = ctx.infer(&x.view(), Layout::ChannelsFirst, None, &RunningStats::new(1), 1e-5);
    match e {
        Err(Error::TooLarge { what, requested, limit: l }) => {
            assert!(what.starts_with("max_storage_buffer_binding_size"), "{what}");
            assert_eq!((requested, l), (s as u64 * 4, limit));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn low_level_buffers_are_checked_before_recording() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap();
    let x = ctx.storage("x", 60).unwrap();
    let y = ctx.storage("y", 60).unwrap();
    let short = ctx.storage("short", 59).unwrap();
    let (m, v) = (ctx.storage("m", 3).unwrap(), ctx.storage("v", 3).unwrap());
    let no_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 240,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let plain = Options { affine: false, track_running_stats: false, ..Options::default() };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let op = Norm::Batch(shape);
    let stats = NormStats { mean: Some(m.slice(..)), rstd: v.slice(..) };
    let train = |x, y| NormForwardBuffers { x, y, stats, gamma: None, beta: None, running: None, residual: None, workspace: None };
    let e = ctx.encode_norm(&mut encoder, &op, &plain, &train(x.slice(..), short.slice(..)));
    assert!(matches!(&e, Err(Error::BadBuffer { name: "y", .. })), "{e:?}");
    let e = ctx.encode_norm(&mut encoder, &op, &plain, &train(no_storage.slice(..), y.slice(..)));
    assert!(matches!(&e, Err(Error::BadBuffer { name: "x", .. })), "{e:?}");
    let e = ctx.encode_norm(&mut encoder, &op, &plain, &train(x.slice(..), x.slice(..)));
    assert!(matches!(&e, Err(Error::BadBuffer { name: "y", .. })), "training forward is not in place: {e:?}");
    let running = RunningBuffers { mean: short.slice(..), var: v.slice(..), num_batches_tracked: 0 };
    let bad_momentum = Options { momentum: Momentum::Exponential(1.5), affine: false, ..Options::default() };
    let e = ctx.encode_norm(
        &mut encoder,
        &op,
        &bad_momentum,
        &NormForwardBuffers { running: Some(running), ..train(x.slice(..), y.slice(..)) },
    );
    assert!(matches!(&e, Err(Error::InvalidMomentum(_))), "{e:?}");
    let e = ctx.encode_norm(&mut encoder, &op, &Options::default(), &train(x.slice(..), y.slice(..)));
    assert!(matches!(&e, Err(Error::OptionsMismatch { .. })), "{e:?}");
    let inference = NormInferenceBuffers {
        x: x.slice(..),
        y: y.slice(..),
        gamma: Some(m.slice(..)),
        beta: Some(no_storage.slice(..)),
        running_mean: m.slice(..),
        running_var: v.slice(..),
        residual: None,
        workspace: None,
    };
    let e = ctx.encode_norm_inference(&mut encoder, &op, &Options::default(), &inference);
    assert!(matches!(&e, Err(Error::BadBuffer { name: "beta", .. })), "{e:?}");
    let stats = BackwardStats::Saved(stats);
    let backward = NormBackwardBuffers {
        dy: y.slice(..),
        x: x.slice(..),
        dx: y.slice(..),
        stats,
        gamma: None,
        param_grads: None,
        z: None,
        dresidual: None,
        workspace: None,
    };
    let e = ctx.encode_norm_backward(&mut encoder, &op, &plain, &backward);
    assert!(matches!(&e, Err(Error::BadBuffer { name: "dx", .. })), "{e:?}");
    // Nothing was recorded: the encoder still finishes and submits cleanly.
    ctx.queue().submit([encoder.finish()]);
}

#[test]
fn messages_say_what_was_expected() {
    let e = Shape::new(&[2], Layout::ChannelsFirst).unwrap_err().to_string();
    assert!(e.contains("rank 2 to 5") && e.contains("got rank 1"), "{e}");
    let e = Error::TooFewValuesPerChannel { count: 1, dims: vec![1, 4] }.to_string();
    assert!(e.starts_with("expected more than 1 value per channel when training"), "{e}");
}
