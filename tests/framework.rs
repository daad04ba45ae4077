//! The framework path, as a framework drives it: prepared ops recorded into
//! several encoders and from several threads, layers fed through
//! `encode_forward`, several contexts side by side, a caller's own device,
//! buffers that died, a lost device, runtime parameters that must not compile
//! a pipeline each, huge views and ranks that fail. Every call either computes
//! the right numbers or returns a typed error.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{
    in_process, reference, Activation, Affine, BatchNorm, Collective, Epilogue, Error, GpuContext, LayerNorm, Layout, Momentum, Norm,
    NormBackwardInputs, NormForwardBuffers, NormInputs, NormStats, Options, PreparedNorm, RunningBuffers, RunningStats, Shape,
    SyncBatchNorm,
};

/// A context of its own, so that its device's counters count this test's objects alone.
fn fresh() -> GpuContext {
    GpuContext::new_blocking().expect("adapter")
}

fn read(ctx: &GpuContext, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    pollster::block_on(ctx.download(&[(buffer, len)])).expect("download").remove(0)
}

fn wait(ctx: &GpuContext) {
    ctx.device().poll(wgpu::PollType::wait_indefinitely()).expect("poll");
}

fn counters(ctx: &GpuContext) -> wgpu::wgt::HalCounters {
    ctx.device().get_internal_counters().hal
}

fn submit(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
}

/// Issue 21, defect 1: the backward of a layer belongs to its last forward,
/// whichever path that forward took; after a forward recorded through
/// `encode_forward`, the host backward has no `x` of it and is
/// `InvalidState` (it used to pair the first forward's host `x` with the
/// second's statistics), and after a failed forward there is nothing to
/// differentiate either.
#[test]
fn a_layers_backward_belongs_to_its_last_forward_whatever_its_path() {
    let ctx = ctx();
    // The second forward's input is another batch of the same shape: the host backward
    // used to pair the first batch's x with the second's statistics, and return Ok.
    let (shape1, shape2) = (Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap(), Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap());
    let (x1, x2) = (typical_data(&shape1, 1), typical_data(&shape2, 2));
    let dy2 = channel_data(&shape2, 3, |_| (0.0, 1.0));
    let (xb, yb) = (ctx.upload("x2", x2.as_slice().unwrap()).unwrap(), ctx.storage("y2", shape2.numel()).unwrap());

    let mut bn = BatchNorm::new(ctx.clone(), 3, Options::default()).unwrap();
    bn.forward_blocking(&x1.view(), Layout::ChannelsFirst).unwrap();
    submit(&ctx, |e| bn.encode_forward(e, &shape2, xb.slice(..), yb.slice(..)).unwrap());
    let r = bn.backward_blocking(&dy2.view());
    assert!(matches!(r, Err(Error::InvalidState(_))), "BatchNorm: {r:?}");
    // The encoded backward of the encoded forward is right.
    let (dyb, dxb) = (ctx.upload("dy2", dy2.as_slice().unwrap()).unwrap(), ctx.storage("dx2", shape2.numel()).unwrap());
    submit(&ctx, |e| bn.encode_backward(e, dyb.slice(..), xb.slice(..), dxb.slice(..)).unwrap());
    let want = reference::forward_train(&shape2, &x2.view(), None::<&[f32]>, None, 1e-5).unwrap();
    let wg =
        reference::backward_train(&shape2, &dy2.view(), &x2.view(), &want.save_mean, &want.save_invstd, Some(&[1.0f32; 3][..])).unwrap();
    assert_rel("encoded dx", &read(&ctx, &dxb, shape2.numel()), wg.dx.as_slice().unwrap(), 1e-5);

    // A forward that fails leaves nothing to differentiate.
    bn.forward_blocking(&x1.view(), Layout::ChannelsFirst).unwrap();
    assert!(bn.forward_blocking(&ArrayD::<f32>::zeros(vec![4, 5, 2]).view(), Layout::ChannelsFirst).is_err());
    let r = bn.backward_blocking(&channel_data(&shape1, 4, |_| (0.0, 1.0)).view());
    assert!(matches!(r, Err(Error::InvalidState(_))), "BatchNorm after a failed forward: {r:?}");

    // SyncBatchNorm: a host forward, then one over slices, then the host backward.
    let rank = in_process(1).remove(0);
    let mut sync = SyncBatchNorm::new(ctx.clone(), rank, 3, Options::default()).unwrap();
    sync.forward_blocking(&x1.view(), Layout::ChannelsFirst).unwrap();
    pollster::block_on(sync.forward_slices(Some((&shape2, xb.slice(..), yb.slice(..))))).unwrap();
    let r = sync.backward_blocking(&dy2.view());
    assert!(matches!(r, Err(Error::InvalidState(_))), "SyncBatchNorm: {r:?}");

    // The family's layers, the same way.
    let mut ln = LayerNorm::new(ctx.clone(), &[5], Options { affine: true, ..untracked() }).unwrap();
    ln.forward_blocking(&x1.view()).unwrap();
    let (lx, ly) = (ctx.upload("x", x1.as_slice().unwrap()).unwrap(), ctx.storage("y", shape1.numel()).unwrap());
    submit(&ctx, |e| ln.encode_forward(e, shape1.dims(), lx.slice(..), ly.slice(..)).unwrap());
    let r = ln.backward_blocking(&x1.view());
    assert!(matches!(r, Err(Error::InvalidState(_))), "LayerNorm: {r:?}");
}

/// Running buffers holding PyTorch's initial statistics.
fn running_buffers(ctx: &GpuContext, c: usize) -> (wgpu::Buffer, wgpu::Buffer) {
    (ctx.upload("running_mean", &vec![0.0; c]).unwrap(), ctx.upload("running_var", &vec![1.0; c]).unwrap())
}

/// Issue 21, defect 2: a record's running-statistics weight belongs to that
/// record, whichever order the encoders are submitted in. With cumulative
/// averaging, a batch after `n` batches has weight `1 / (n + 1)`: from zero
/// running means, the running mean is the batch mean over `n + 1`.
#[test]
fn a_records_running_weight_is_its_own_in_any_submit_order() {
    let ctx = ctx();
    let shape = Shape::new(&[8, 4, 9], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 5);
    let batch = reference::batch_stats(&shape, &x.view()).unwrap();
    let options = Options { affine: false, momentum: Momentum::CumulativeAverage, ..Options::default() };
    let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
    let (y, mean, invstd) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 4).unwrap(), ctx.storage("invstd", 4).unwrap());
    for first_submitted in [1, 0] {
        let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options).unwrap();
        let tracked = [0u64, 5];
        let running: Vec<_> = tracked.iter().map(|_| running_buffers(&ctx, 4)).collect();
        let encoders: Vec<_> = tracked
            .iter()
            .zip(&running)
            .map(|(&n, (m, v))| {
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                let buffers = NormForwardBuffers {
                    x: xb.slice(..),
                    y: y.slice(..),
                    stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
                    gamma: None,
                    beta: None,
                    running: Some(RunningBuffers { mean: m.slice(..), var: v.slice(..), num_batches_tracked: n }),
                    residual: None,
                    workspace: None,
                };
                op.record(&mut encoder, &buffers).unwrap();
                Some(encoder.finish())
            })
            .collect();
        let mut encoders = encoders;
        for k in [first_submitted, 1 - first_submitted] {
            ctx.queue().submit(encoders[k].take());
        }
        for (&n, (m, _)) in tracked.iter().zip(&running) {
            let want: Vec<f64> = batch.mean.iter().map(|v| v / (n + 1) as f64).collect();
            assert_rel(&format!("running mean after {n} batches, encoder {first_submitted} first"), &read(&ctx, m, 4), &want, 1e-5);
        }
    }
}

/// Issue 21, defect 2, from eight threads: each records 40 encoders with
/// batch counts of its own, through one shared prepared op (and every eighth
/// through the context's cached op), and all 320 are submitted in a scrambled
/// order (a framework records many steps before it submits): each keeps its
/// own weight. (A ring of 256 slots, written through the queue, once carried
/// the weights: records past 256 of one op before a submit overwrote earlier ones.)
#[test]
fn eight_threads_sharing_one_prepared_op_keep_their_own_running_weights() {
    let ctx = ctx();
    let shape = Shape::new(&[6, 4, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 6);
    let batch = reference::batch_stats(&shape, &x.view()).unwrap();
    let options = Options { affine: false, momentum: Momentum::CumulativeAverage, ..Options::default() };
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options).unwrap();
    let xb = Arc::new(ctx.upload("x", x.as_slice().unwrap()).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (ctx, op, xb, shape) = (ctx.clone(), op.clone(), xb.clone(), shape.clone());
            std::thread::spawn(move || {
                let (y, sm, si) =
                    (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 4).unwrap(), ctx.storage("invstd", 4).unwrap());
                (0..40u64)
                    .map(|i| {
                        let n = t * 41 + i;
                        let (m, v) = running_buffers(&ctx, 4);
                        let buffers = NormForwardBuffers {
                            x: xb.slice(..),
                            y: y.slice(..),
                            stats: NormStats { mean: Some(sm.slice(..)), rstd: si.slice(..) },
                            gamma: None,
                            beta: None,
                            running: Some(RunningBuffers { mean: m.slice(..), var: v.slice(..), num_batches_tracked: n }),
                            residual: None,
                            workspace: None,
                        };
                        let mut encoder = ctx.device().create_command_encoder(&Default::default());
                        if i % 8 != 7 {
                            op.record(&mut encoder, &buffers).unwrap();
                        } else {
                            ctx.encode_norm(&mut encoder, &Norm::Batch(shape.clone()), &options, &buffers).unwrap();
                        }
                        (n, m, encoder.finish())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut recorded: Vec<_> = threads.into_iter().flat_map(|t| t.join().expect("thread")).collect();
    // A fixed scramble: every 7th of the 320, cycling.
    let order: Vec<usize> = (0..recorded.len()).map(|k| k * 7 % recorded.len()).collect();
    let mut buffers = Vec::new();
    for (k, (n, m, commands)) in recorded.drain(..).enumerate() {
        buffers.push((order[k], n, m, commands));
    }
    buffers.sort_by_key(|(o, ..)| *o);
    let mut checks = Vec::new();
    for (_, n, m, commands) in buffers {
        ctx.queue().submit([commands]);
        checks.push((n, m));
    }
    let wrong: Vec<u64> = checks
        .iter()
        .filter(|(n, m)| {
            let want: Vec<f64> = batch.mean.iter().map(|v| v / (n + 1) as f64).collect();
            rel_err(&read(&ctx, m, 4), &want) > 1e-5
        })
        .map(|(n, _)| *n)
        .collect();
    assert!(wrong.is_empty(), "{} of 320 records got another record's running weight, batch counts {wrong:?}", wrong.len());
}

/// Issue 21, defect 2, the family: instance norm's running statistics take
/// each record's own weight too.
#[test]
fn instance_norm_records_keep_their_own_running_weights() {
    let ctx = ctx();
    let shape = Shape::new(&[3, 4, 10], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 8);
    let options = Options { affine: false, track_running_stats: true, momentum: Momentum::CumulativeAverage, ..Options::default() };
    let op = ctx.prepare_norm(&Norm::Instance(shape.clone()), &options).unwrap();
    let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
    let (y, mean, rstd) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 12).unwrap(), ctx.storage("rstd", 12).unwrap());
    let tracked = [0u64, 3];
    let running: Vec<_> = tracked.iter().map(|_| running_buffers(&ctx, 4)).collect();
    let mut encoders: Vec<_> = tracked
        .iter()
        .zip(&running)
        .map(|(&n, (m, v))| {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            let buffers = NormForwardBuffers {
                x: xb.slice(..),
                y: y.slice(..),
                stats: NormStats { mean: Some(mean.slice(..)), rstd: rstd.slice(..) },
                gamma: None,
                beta: None,
                running: Some(RunningBuffers { mean: m.slice(..), var: v.slice(..), num_batches_tracked: n }),
                residual: None,
                workspace: None,
            };
            op.record(&mut encoder, &buffers).unwrap();
            Some(encoder.finish())
        })
        .collect();
    ctx.queue().submit(encoders[1].take());
    ctx.queue().submit(encoders[0].take());
    let stats = reference::instance_norm(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
    for (&n, (m, v)) in tracked.iter().zip(&running) {
        let mut want = RunningStats::<f64>::new(4);
        want.num_batches_tracked = n;
        reference::instance_norm_update_running(&mut want, &stats, 10, Momentum::CumulativeAverage).unwrap();
        assert_rel(&format!("running mean after {n}"), &read(&ctx, m, 4), &want.mean, 1e-5);
        assert_rel(&format!("running var after {n}"), &read(&ctx, v, 4), &want.var, 1e-5);
    }
}

/// `x` with channel (or group, or row) `bad` drawn at `scale` around 0, the rest typical.
fn with_huge(shape: &Shape, bad: impl Fn(usize) -> bool, scale: f64) -> ArrayD<f32> {
    let mut x = typical_data(shape, 11);
    let spread = channel_data(shape, 12, |_| (0.0, scale));
    for (i, (v, s)) in x.iter_mut().zip(spread.iter()).enumerate() {
        if bad(i) {
            *v = *s;
        }
    }
    x
}

/// Each output of the rows `bad` picks is NaN or right (an f32 variance
/// overflows before the f64 reference's does: never a finite wrong value);
/// every other output is right.
fn nan_or_right(what: &str, got: &ndarray::ArrayD<f32>, want: &ndarray::ArrayD<f64>, bad: impl Fn(usize) -> bool) {
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let right = (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs());
        assert!(right || (bad(i) && g.is_nan()), "{what}: y[{i}] = {g}, want {w}");
    }
    assert!(got.iter().enumerate().any(|(i, g)| bad(i) && g.is_nan()) || got.iter().enumerate().all(|(i, _)| !bad(i)), "{what}: no NaN");
}

/// Issue 21, defect 3: NaN stays NaN on every backend. A channel, group or
/// row whose statistics pass f32's range normalizes to NaN (or, where its
/// variance still fits, to the right values), never to finite wrong values
/// (GL's compiler folded `select(v, 0, v < 0)` into `max(v, 0)`, which turned
/// an overflowed M2's NaN into a variance of 0 and y into 1e7 to 1e32);
/// fused ReLU and LeakyReLU keep a NaN; a NaN instance makes instance norm's
/// running statistics NaN.
#[test]
fn nan_stays_nan_on_every_backend() {
    let ctx = ctx();
    let first = Shape::new(&[4, 8, 6], Layout::ChannelsFirst).unwrap();
    let last = Shape::new(&[4, 6, 8], Layout::ChannelsLast).unwrap();
    let channel = |shape: &Shape| {
        let shape = shape.clone();
        move |i: usize| (i / shape.inner()) % shape.channels()
    };
    // Scalar and vec4 items, rows in one chunk and in several.
    let shapes = [
        first.clone(),
        last.clone(),
        Shape::new(&[8, 16, 32], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[2, 16, 16, 16], Layout::ChannelsLast).unwrap(),
        Shape::new(&[2, 8, 5, 7], Layout::ChannelsFirst).unwrap(),
    ];
    for scale in [1.5e19, 1e20, 1e25, 1e30] {
        for shape in &shapes {
            let of = channel(shape);
            let layout = shape.layout();
            let x = with_huge(shape, |i| of(i) == 2, scale);
            let options = Options { affine: false, track_running_stats: false, ..Options::default() };
            let y = ctx.norm_blocking(&Norm::Batch(shape.clone()), x.view(), None, None, None, &options).unwrap().y;
            let want = reference::forward_train(shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap().y;
            nan_or_right(&format!("batch norm {layout:?} at {scale:e}"), &y, &want, |i| of(i) == 2);

            // Group norm, 4 groups: group 1 of every sample huge.
            let per_group = shape.channels() / 4;
            let x = with_huge(shape, |i| of(i) / per_group == 1, scale);
            let op = Norm::Group { shape: shape.clone(), groups: 4 };
            let y = ctx.norm_blocking(&op, x.view(), None, None, None, &untracked()).unwrap().y;
            let want = reference::group_norm(shape, &x.view(), 4, None::<&[f32]>, None, 1e-5).unwrap().y;
            nan_or_right(&format!("group norm {layout:?} at {scale:e}"), &y, &want, |i| of(i) / per_group == 1);

            let x = with_huge(shape, |i| of(i) == 2, scale);
            let y = ctx.norm_blocking(&Norm::Instance(shape.clone()), x.view(), None, None, None, &untracked()).unwrap().y;
            let want = reference::instance_norm(shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap().y;
            nan_or_right(&format!("instance norm {layout:?} at {scale:e}"), &y, &want, |i| of(i) == 2);
        }
        // Layer and RMS norm over rows of 48: row 1 huge.
        let rows = Shape::new(&[4, 48], Layout::ChannelsFirst).unwrap();
        let x = with_huge(&rows, |i| i / 48 == 1, scale);
        let op = Norm::Layer { dims: rows.dims().to_vec(), normalized_shape: vec![48] };
        let y = ctx.norm_blocking(&op, x.view(), None, None, None, &untracked()).unwrap().y;
        let want = reference::layer_norm(&x.view(), &[48], None::<&[f32]>, None, 1e-5).unwrap().y;
        nan_or_right(&format!("layer norm at {scale:e}"), &y, &want, |i| i / 48 == 1);
        let op = Norm::Rms { dims: rows.dims().to_vec(), normalized_shape: vec![48] };
        let options = Options { affine: false, ..op.default_options() };
        let y = ctx.norm_blocking(&op, x.view(), None, None, None, &options).unwrap().y;
        let want = reference::rms_norm(&x.view(), &[48], None::<&[f32]>, 1e-5).unwrap().y;
        nan_or_right(&format!("rms norm at {scale:e}"), &y, &want, |i| i / 48 == 1);
    }

    // Fused activations keep a NaN channel NaN.
    for activation in [Activation::Relu, Activation::LeakyRelu(0.1)] {
        for shape in [&first, &last] {
            let of = channel(shape);
            let mut x = typical_data(shape, 13);
            let idx = x.iter().enumerate().find(|(i, _)| of(*i) == 1).map(|(i, _)| i).unwrap();
            x.as_slice_mut().unwrap()[idx] = f32::NAN;
            let options =
                Options { affine: false, track_running_stats: false, epilogue: Epilogue::activation(activation), ..Options::default() };
            let z = ctx.norm_blocking(&Norm::Batch(shape.clone()), x.view(), None, None, None, &options).unwrap().y;
            let what = format!("{activation:?} {:?}", shape.layout());
            assert!(z.iter().enumerate().filter(|(i, _)| of(*i) == 1).all(|(_, v)| v.is_nan()), "{what}: the NaN channel");
            assert!(z.iter().enumerate().filter(|(i, _)| of(*i) != 1).all(|(_, v)| v.is_finite()), "{what}: the others");
        }
    }

    // A NaN instance makes instance norm's running statistics of its channel NaN.
    for shape in [&first, &last] {
        let of = channel(shape);
        let mut x = typical_data(shape, 14);
        let idx = x.iter().enumerate().find(|(i, _)| of(*i) == 3).map(|(i, _)| i).unwrap();
        x.as_slice_mut().unwrap()[idx] = f32::NAN;
        let options = Options { affine: false, track_running_stats: true, ..Options::default() };
        let mut running = RunningStats::new(8);
        ctx.norm_blocking(&Norm::Instance(shape.clone()), x.view(), None, None, Some(&mut running), &options).unwrap();
        let what = format!("instance norm running statistics {:?}", shape.layout());
        assert!(running.mean[3].is_nan() && running.var[3].is_nan(), "{what}: {:?} {:?}", running.mean, running.var);
        assert!((0..8).filter(|&c| c != 3).all(|c| running.mean[c].is_finite() && running.var[c].is_finite()), "{what}");
    }
}

/// Training-forward buffers over whole buffers, no affine, no running statistics.
fn plain_buffers<'a>(x: &'a wgpu::Buffer, y: &'a wgpu::Buffer, mean: &'a wgpu::Buffer, invstd: &'a wgpu::Buffer) -> NormForwardBuffers<'a> {
    NormForwardBuffers {
        x: x.slice(..),
        y: y.slice(..),
        stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
        gamma: None,
        beta: None,
        running: None,
        residual: None,
        workspace: None,
    }
}

fn untracked() -> Options {
    Options { affine: false, track_running_stats: false, ..Options::default() }
}

/// Issue 21, defect 4: a buffer of another context is an error, never a
/// computation over one of this context's buffers (each context had its own
/// wgpu instance, whose buffer ids collide with another's).
#[test]
fn a_buffer_of_another_context_is_an_error() {
    let (a, b) = (fresh(), fresh());
    let shape = Shape::new(&[5, 3, 4], Layout::ChannelsFirst).unwrap();
    let x = channel_data(&shape, 15, |_| (949.75, 2.0));
    let op = a.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let (y, mean, invstd) = (a.storage("y", shape.numel()).unwrap(), a.storage("mean", 3).unwrap(), a.storage("invstd", 3).unwrap());
    // Buffers of a made before, so that b's ids are the same numbers as a's.
    let _a_x = a.upload("a's x", &vec![3.5; shape.numel()]).unwrap();
    let foreign = b.upload("b's x", x.as_slice().unwrap()).unwrap();
    x_is_refused(&a, &op, &shape, &plain_buffers(&foreign, &y, &mean, &invstd));
}

/// `record`, `bind` and the one-shot `encode_norm` over `buffers`
/// are each `BadBuffer` naming `x`.
fn x_is_refused(ctx: &GpuContext, op: &PreparedNorm, shape: &Shape, buffers: &NormForwardBuffers<'_>) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let r = op.record(&mut encoder, buffers);
    assert!(matches!(r, Err(Error::BadBuffer { name: "x", .. })), "record: {r:?}");
    let r = op.bind(buffers).map(|_| ());
    assert!(matches!(r, Err(Error::BadBuffer { name: "x", .. })), "bind: {r:?}");
    let r = ctx.encode_norm(&mut encoder, &Norm::Batch(shape.clone()), &untracked(), buffers);
    assert!(matches!(r, Err(Error::BadBuffer { name: "x", .. })), "encode: {r:?}");
}

/// Issue 21, defect 5: `record` checks what it binds. On a caller's device
/// (wgpu's default handlers, which panic on an uncaptured error), a buffer the
/// caller destroyed is an error from `record` and `encode_*`, not an `Ok`
/// whose submit fails.
#[test]
fn a_destroyed_buffer_is_an_error_at_record() {
    let (device, queue) = device_with_limits(|limits| limits);
    let ctx = GpuContext::from_device(device, queue).unwrap();
    let shape = Shape::new(&[6, 3, 4], Layout::ChannelsFirst).unwrap();
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let x = typical_data(&shape, 16);
    let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
    let (y, mean, invstd) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 3).unwrap(), ctx.storage("invstd", 3).unwrap());
    submit(&ctx, |e| op.record(e, &plain_buffers(&xb, &y, &mean, &invstd)).unwrap());
    let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
    assert_rel("y", &read(&ctx, &y, shape.numel()), want.y.as_slice().unwrap(), 1e-5);
    xb.destroy();
    x_is_refused(&ctx, &op, &shape, &plain_buffers(&xb, &y, &mean, &invstd));
}

/// Issue 21, defect 5: the family's per-row values past one binding. Layer
/// norm over rows of 4 values keeps 24 bytes a row, more than the tensor's
/// 16: with a 64 KiB binding limit, 4096 rows fit one binding as a tensor but
/// not as per-row values. The one-shot call and `encode_layer_norm` both
/// compute it, in windows.
#[test]
fn per_row_values_past_one_binding_run_in_windows() {
    let (device, queue) = limited_device(64 << 10);
    let ctx = GpuContext::from_device(device, queue).unwrap();
    for rows in [4096, 16384] {
        let shape = Shape::new(&[rows, 4], Layout::ChannelsFirst).unwrap();
        let x = typical_data(&shape, 17);
        let (op, options) = (Norm::Layer { dims: shape.dims().to_vec(), normalized_shape: vec![4] }, untracked());
        let want = reference::layer_norm(&x.view(), &[4], None::<&[f32]>, None, 1e-5).unwrap();
        let out = ctx.norm_blocking(&op, x.view(), None, None, None, &options).unwrap();
        assert_rel(&format!("one-shot y, {rows} rows"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
        let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
        let (y, mean, rstd) =
            (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", rows).unwrap(), ctx.storage("rstd", rows).unwrap());
        let buffers = NormForwardBuffers {
            x: xb.slice(..),
            y: y.slice(..),
            stats: NormStats { mean: Some(mean.slice(..)), rstd: rstd.slice(..) },
            gamma: None,
            beta: None,
            running: None,
            residual: None,
            workspace: None,
        };
        submit(&ctx, |e| ctx.encode_norm(e, &op, &options, &buffers).unwrap());
        assert_rel(&format!("encoded y, {rows} rows"), &read(&ctx, &y, shape.numel()), want.y.as_slice().unwrap(), 1e-5);
        assert_rel(&format!("encoded rstd, {rows} rows"), &read(&ctx, &rstd, rows), &want.rstd, 1e-5);
    }
}

/// Issue 21, defect 6: a caller's own device (`from_device`, wgpu's default
/// handlers) that is lost gives `DeviceLost` from every call, never a panic.
#[test]
fn a_callers_lost_device_gives_errors_not_panics() {
    let (device, queue) = device_with_limits(|limits| limits);
    let ctx = Arc::new(GpuContext::from_device(device, queue).unwrap());
    let shape = Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 18);
    let op = Norm::Batch(shape.clone());
    ctx.norm_blocking(&op, x.view(), None, None, None, &untracked()).unwrap();
    let mut bn = BatchNorm::new(ctx.clone(), 3, Options::default()).unwrap();
    bn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    ctx.device().destroy();
    for _ in 0..2 {
        let lost = |what: &str, r: Result<(), Error>| assert!(matches!(r, Err(Error::DeviceLost(_))), "{what}: {r:?}");
        lost("check_alive", ctx.check_alive());
        lost("forward_train", ctx.norm_blocking(&op, x.view(), None, None, None, &untracked()).map(|_| ()));
        let mut running = RunningStats::new(3);
        let tracked = Options { affine: false, ..Options::default() };
        lost("forward_inference", ctx.norm_inference_blocking(&op, x.view(), None, None, &running, &tracked).map(|_| ()));
        lost("tracked forward", ctx.norm_blocking(&op, x.view(), None, None, Some(&mut running), &tracked).map(|_| ()));
        let layer_norm = Norm::Layer { dims: x.shape().to_vec(), normalized_shape: vec![5] };
        lost("layer_norm", ctx.norm_blocking(&layer_norm, x.view(), None, None, None, &untracked()).map(|_| ()));
        lost("prepare", ctx.prepare_norm(&op, &untracked()).map(|_| ()));
        lost("BatchNorm::new", BatchNorm::new(ctx.clone(), 3, Options::default()).map(|_| ()));
        lost("BatchNorm::forward", bn.forward_blocking(&x.view(), Layout::ChannelsFirst).map(|_| ()));
        lost("BatchNorm::set_affine", bn.set_affine(Affine { gamma: &[1.0; 3], beta: Some(&[0.0; 3]) }));
        lost("LayerNorm::new", LayerNorm::new(ctx.clone(), &[5], Options { affine: true, ..untracked() }).map(|_| ()));
    }
}

/// Issue 21, defect 7: a LeakyReLU slope is a runtime value, not a pipeline
/// each: ten slopes compile no pipeline past the first's, and each is right.
#[test]
fn leaky_relu_slopes_share_their_pipelines() {
    let ctx = fresh();
    let shape = Shape::new(&[4, 3, 6], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 19);
    let mut compiled = None;
    for k in 1..=10 {
        let slope = 0.01 * k as f32;
        let activation = Activation::LeakyRelu(slope);
        let options =
            Options { affine: false, track_running_stats: false, epilogue: Epilogue::activation(activation), ..Options::default() };
        let z = ctx.norm_blocking(&Norm::Batch(shape.clone()), x.view(), None, None, None, &options).unwrap().y;
        let bn = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap().y;
        let want = reference::epilogue(&bn.view(), None::<&ndarray::ArrayViewD<f32>>, activation).unwrap();
        assert_rel(&format!("slope {slope}"), z.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
        let now = counters(&ctx).compute_pipelines.read();
        assert_eq!(*compiled.get_or_insert(now), now, "slope {slope} compiled pipelines of its own");
    }
}

/// Issue 21, defect 8: after the device is lost, with work still in flight,
/// the liveness check, `record` and the cached `encode_*` say `DeviceLost`.
#[test]
fn a_loss_with_work_in_flight_is_seen_by_every_call() {
    let ctx = fresh();
    let shape = Shape::new(&[16, 64, 64, 64], Layout::ChannelsFirst).unwrap();
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let xb = ctx.upload("x", &vec![0.5; shape.numel()]).unwrap();
    let (y, mean, invstd) =
        (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 64).unwrap(), ctx.storage("invstd", 64).unwrap());
    let buffers = plain_buffers(&xb, &y, &mean, &invstd);
    submit(&ctx, |e| ctx.encode_norm(e, &Norm::Batch(shape.clone()), &untracked(), &buffers).unwrap());
    wait(&ctx);
    // Work that takes a while on any adapter, then the loss while it runs.
    submit(&ctx, |e| (0..8).for_each(|_| op.record(e, &buffers).unwrap()));
    ctx.device().destroy();
    let r = ctx.check_alive();
    assert!(matches!(r, Err(Error::DeviceLost(_))), "check_alive: {r:?}");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let r = op.record(&mut encoder, &buffers);
    assert!(matches!(r, Err(Error::DeviceLost(_))), "record: {r:?}");
    let r = ctx.encode_norm(&mut encoder, &Norm::Batch(shape.clone()), &untracked(), &buffers);
    assert!(matches!(r, Err(Error::DeviceLost(_))), "encode: {r:?}");
}

/// Issue 21, defect 9: a huge view (here zero strides) is checked for size
/// before it is copied: `TooLarge`, not an allocation that aborts the process.
#[test]
fn a_huge_broadcast_view_is_too_large_before_any_copy() {
    let ctx = ctx();
    let one = ArrayD::<f32>::zeros(vec![1, 1, 1]);
    let huge = one.broadcast(vec![65536, 65536, 2]).unwrap();
    let too_large = |what: &str, r: Result<(), Error>| assert!(matches!(r, Err(Error::TooLarge { .. })), "{what}: {r:?}");
    // The shape itself is fine (no element count overflows): the calls refuse the view.
    let batch_norm = Norm::Batch(Shape::new(huge.shape(), Layout::ChannelsFirst).unwrap());
    too_large("forward_train", ctx.norm_blocking(&batch_norm, &huge, None, None, None, &untracked()).map(|_| ()));
    too_large("forward_train_epilogue", {
        let options = Options { epilogue: Epilogue { activation: Activation::Relu, residual: true }, ..untracked() };
        let inputs = NormInputs { x: huge.clone(), residual: Some(huge.clone()) };
        ctx.norm_blocking(&batch_norm, inputs, None, None, None, &options).map(|_| ())
    });
    let running = RunningStats::new(65536);
    let tracked = Options { affine: false, ..Options::default() };
    too_large("forward_inference", ctx.norm_inference_blocking(&batch_norm, &huge, None, None, &running, &tracked).map(|_| ()));
    let inputs = NormBackwardInputs { dy: huge.clone(), x: huge.clone(), z: None };
    too_large("backward", ctx.norm_backward_blocking(&batch_norm, &inputs, running.backward_stats(), None, &tracked).map(|_| ()));
    let layer_norm = Norm::Layer { dims: huge.shape().to_vec(), normalized_shape: vec![2] };
    too_large("layer_norm", ctx.norm_blocking(&layer_norm, &huge, None, None, None, &untracked()).map(|_| ()));
    let group_norm = Shape::new(huge.shape(), Layout::ChannelsFirst).map(|shape| Norm::Group { shape, groups: 1 });
    too_large("group_norm", group_norm.and_then(|op| ctx.norm_blocking(&op, &huge, None, None, None, &untracked())).map(|_| ()));
    let mut bn = BatchNorm::new(ctx.clone(), 65536, Options::default()).unwrap();
    too_large("BatchNorm::forward", bn.forward_blocking(&huge, Layout::ChannelsFirst).map(|_| ()));
    let mut layer = LayerNorm::new(ctx.clone(), &[2], Options { affine: true, ..untracked() }).unwrap();
    too_large("LayerNorm::forward", layer.forward_blocking(&huge).map(|_| ()));
}

/// Runs `ranks` ranks on threads and collects what each returned, failing
/// the test where one has not returned within `within`.
fn ranks_return<T: Send + 'static>(
    ranks: Vec<wgpu_batchnorm::InProcessRank>,
    within: Duration,
    body: impl Fn(wgpu_batchnorm::InProcessRank) -> T + Send + Sync + 'static,
) -> Vec<Option<T>> {
    let (send, receive) = mpsc::channel();
    let body = Arc::new(body);
    let n = ranks.len();
    for rank in ranks {
        let (send, body) = (send.clone(), body.clone());
        std::thread::spawn(move || {
            let r = rank.rank();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(rank)));
            let _ = send.send((r, out.ok()));
        });
    }
    let deadline = Instant::now() + within;
    let mut out: Vec<Option<Option<T>>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok((r, v)) => out[r] = Some(v),
            Err(_) => panic!("ranks {:?} did not return within {within:?}", (0..n).filter(|&r| out[r].is_none()).collect::<Vec<_>>()),
        }
    }
    out.into_iter().map(|v| v.flatten()).collect()
}

/// Issue 21, defect 10: a rank that fails before a collective (a bad shape,
/// a panic, a rank dropped) makes every other rank's synchronized call
/// return `Error::Collective` promptly, instead of waiting for ever.
#[test]
fn a_failing_rank_makes_the_others_return_errors() {
    for failure in ["bad shape", "panic", "dropped"] {
        let results = ranks_return(in_process(3), Duration::from_secs(60), move |rank| {
            let ctx = Arc::new(GpuContext::new_blocking().expect("adapter"));
            let me = rank.rank();
            let mut bn = SyncBatchNorm::new(ctx, rank, 3, Options::default()).expect("layer");
            let x = ArrayD::from_shape_fn(vec![4, 3, 5], |i| (i[0] * 5 + i[2]) as f32);
            if me == 1 {
                match failure {
                    "bad shape" => {
                        return bn.forward_blocking(&ArrayD::<f32>::zeros(vec![4, 2, 5]).view(), Layout::ChannelsFirst).map(|_| ())
                    }
                    "panic" => panic!("rank 1 fails"),
                    _ => {
                        drop(bn);
                        return Ok(());
                    }
                }
            }
            bn.forward_blocking(&x.view(), Layout::ChannelsFirst).map(|_| ())
        });
        for (r, out) in results.iter().enumerate() {
            match (r, out) {
                (1, _) => {}
                (_, Some(Err(Error::Collective(_)))) => {}
                _ => panic!("{failure}: rank {r} returned {out:?}"),
            }
        }
    }
}

/// Issue 21, defect 11: a failed forward is not a tracked batch; error messages say what they mean.
#[test]
fn small_defects() {
    let ctx = fresh();
    let ctx = Arc::new(ctx);
    let mut bn = BatchNorm::new(ctx.clone(), 3, Options::default()).unwrap();
    let x = typical_data(&Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap(), 20);
    // The caller destroys the layer's gamma: the forward fails, and counts no batch.
    bn.affine_buffers().unwrap().gamma.destroy();
    assert!(bn.forward_blocking(&x.view(), Layout::ChannelsFirst).is_err());
    assert_eq!(bn.num_batches_tracked(), 0);

    let e = Shape::new(&[4, 3], Layout::ChannelsLast).unwrap_err().to_string();
    assert!(e.contains("rank 3 to 5") && !e.contains("rank 2 to 5"), "{e}");
    let e = Shape::new(&[usize::MAX / 2, 4, 2], Layout::ChannelsFirst).unwrap_err().to_string();
    assert!(!e.contains(&u64::MAX.to_string()), "{e}");
}

/// Issue 21, defect 12: an op keeps none of the caller's buffers past the
/// record: a pool the caller drops is freed (prepared ops kept bind groups of
/// their last four sets of slices, and with them the buffers).
#[test]
fn an_op_keeps_no_caller_buffer_alive() {
    let ctx = fresh();
    let shape = Shape::new(&[4, 16, 32, 32], Layout::ChannelsFirst).unwrap();
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let (mean, invstd) = (ctx.storage("mean", 16).unwrap(), ctx.storage("invstd", 16).unwrap());
    let bytes = shape.bytes(wgpu_batchnorm::Dtype::F32);
    let mut base = None;
    // Step 0 makes the context's cached op, whose own buffers stay.
    for step in 0..4 {
        let pool = ctx.storage("pool", 2 * shape.numel()).unwrap();
        let x = pool.slice(..bytes);
        let y = pool.slice(bytes..);
        let buffers = NormForwardBuffers {
            x,
            y,
            stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
            gamma: None,
            beta: None,
            running: None,
            residual: None,
            workspace: None,
        };
        submit(&ctx, |e| {
            op.record(e, &buffers).unwrap();
            ctx.encode_norm(e, &Norm::Batch(shape.clone()), &untracked(), &buffers).unwrap();
        });
        drop(pool);
        wait(&ctx);
        let now = counters(&ctx);
        let base = base.get_or_insert((now.buffers.read(), now.buffer_memory.read()));
        assert_eq!((now.buffers.read(), now.buffer_memory.read()), *base, "step {step}: buffers and their bytes alive");
    }
}

/// Issue 21, defect 12: a `Bound` records any number of times, each step
/// with its own batch count, and holds its buffers until it is dropped.
#[test]
fn a_bound_op_records_steps_and_frees_its_buffers_when_dropped() {
    let ctx = fresh();
    let shape = Shape::new(&[6, 4, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 21);
    let batch = reference::batch_stats(&shape, &x.view()).unwrap();
    let options = Options { affine: false, momentum: Momentum::CumulativeAverage, ..Options::default() };
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options).unwrap();
    // The queue's staging buffers of the op's uniforms go with the next submit.
    submit(&ctx, |_| {});
    wait(&ctx);
    let before = counters(&ctx).buffers.read();
    let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
    let (y, sm, si) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 4).unwrap(), ctx.storage("invstd", 4).unwrap());
    let (m, v) = running_buffers(&ctx, 4);
    let buffers = NormForwardBuffers {
        x: xb.slice(..),
        y: y.slice(..),
        stats: NormStats { mean: Some(sm.slice(..)), rstd: si.slice(..) },
        gamma: None,
        beta: None,
        running: Some(RunningBuffers { mean: m.slice(..), var: v.slice(..), num_batches_tracked: 0 }),
        residual: None,
        workspace: None,
    };
    let bound = op.bind(&buffers).unwrap();
    // Three steps of the same batch: the cumulative average of the batch mean is the batch mean.
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    bound.record(&mut encoder).unwrap();
    bound.record_step(&mut encoder, 1).unwrap();
    bound.record_step(&mut encoder, 2).unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_rel("running mean after three steps", &read(&ctx, &m, 4), &batch.mean, 1e-5);
    let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
    assert_rel("y", &read(&ctx, &y, shape.numel()), want.y.as_slice().unwrap(), 1e-5);
    drop((xb, y, sm, si, m, v));
    wait(&ctx);
    assert!(counters(&ctx).buffers.read() > before, "the bound op holds its buffers");
    drop(bound);
    wait(&ctx);
    let own_workspace = isize::from(op.workspace_bytes() > 0);
    assert_eq!(counters(&ctx).buffers.read(), before + own_workspace, "dropped with the bound op (the op keeps its own workspace)");
    let untracked_op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
    let (y, sm, si) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 4).unwrap(), ctx.storage("invstd", 4).unwrap());
    let bound = untracked_op.bind(&plain_buffers(&xb, &y, &sm, &si)).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let r = bound.record_step(&mut encoder, 3);
    assert!(matches!(r, Err(Error::OptionsMismatch { .. })), "a step count for an op without running statistics: {r:?}");
}

/// Issue 21, defect 13: `prepare` compiles the op's pipelines; recording compiles nothing.
#[test]
fn prepare_compiles_and_record_does_not() {
    let ctx = fresh();
    let shape = Shape::new(&[4, 8, 6, 6], Layout::ChannelsFirst).unwrap();
    let before = counters(&ctx).compute_pipelines.read();
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &untracked()).unwrap();
    let prepared = counters(&ctx).compute_pipelines.read();
    assert!(prepared > before, "prepare compiled nothing");
    let xb = ctx.upload("x", &vec![0.5; shape.numel()]).unwrap();
    let (y, mean, invstd) = (ctx.storage("y", shape.numel()).unwrap(), ctx.storage("mean", 8).unwrap(), ctx.storage("invstd", 8).unwrap());
    submit(&ctx, |e| op.record(e, &plain_buffers(&xb, &y, &mean, &invstd)).unwrap());
    assert_eq!(counters(&ctx).compute_pipelines.read(), prepared, "record compiled pipelines");
}
