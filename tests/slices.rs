//! The low-level calls over slices of one pooled buffer, as a framework keeps
//! its tensors: every op and both layouts at non-zero aligned offsets, inputs
//! and outputs sharing the buffer, in-place inference, prepared ops recorded
//! many times, the layer's GPU-resident path, fused epilogues with the output
//! in place of the residual, and the errors of misaligned, short and
//! overlapping slices.

mod common;

use std::ops::Range;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::{
    reference, Activation, Affine, BackwardStats, BatchNorm, Dtype, Epilogue, Error, GpuContext, Layout, Momentum, Norm,
    NormBackwardBuffers, NormForwardBuffers, NormInferenceBuffers, NormParamGradBuffers, NormStats, Options, RunningBuffers, RunningStats,
    Shape,
};

/// One storage buffer holding named regions at aligned offsets, the first one
/// not at zero, the gaps between them filled with a sentinel.
struct Pool {
    buffer: wgpu::Buffer,
    regions: Vec<(&'static str, Range<u64>)>,
}

const SENTINEL: f32 = 12345.5;

impl Pool {
    fn new(ctx: &GpuContext, sizes: &[(&'static str, usize)]) -> Self {
        let align = ctx.slice_alignment();
        let mut offset = align;
        let mut regions = Vec::new();
        for &(name, len) in sizes {
            let bytes = len as u64 * 4;
            regions.push((name, offset..offset + bytes));
            // A gap of at least one aligned block after each region.
            offset = (offset + bytes).next_multiple_of(align) + align;
        }
        let buffer = ctx.upload("pool", &vec![SENTINEL; offset as usize / 4]).unwrap();
        Self { buffer, regions }
    }

    fn range(&self, name: &str) -> Range<u64> {
        self.regions.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no region {name}")).1.clone()
    }

    fn slice(&self, name: &str) -> wgpu::BufferSlice<'_> {
        self.buffer.slice(self.range(name))
    }

    fn write(&self, ctx: &GpuContext, name: &str, data: &[f32]) {
        ctx.queue().write_buffer(&self.buffer, self.range(name).start, bytemuck::cast_slice(data));
    }

    /// Every region's contents, after checking that no byte outside them changed.
    fn read(&self, ctx: &GpuContext) -> impl Fn(&str) -> Vec<f32> + '_ {
        let all = pollster::block_on(ctx.download(&[(&self.buffer, self.buffer.size() as usize / 4)])).unwrap().pop().unwrap();
        let inside = |i: usize| self.regions.iter().any(|(_, r)| r.contains(&(i as u64 * 4)));
        let touched = all.iter().enumerate().filter(|&(i, &v)| !inside(i) && v.to_bits() != SENTINEL.to_bits()).count();
        assert_eq!(touched, 0, "{touched} floats outside the slices were written");
        move |name| {
            let r = self.range(name);
            all[r.start as usize / 4..r.end as usize / 4].to_vec()
        }
    }
}

fn submit(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
}

fn shapes() -> [Shape; 3] {
    [
        Shape::new(&[4, 6, 5, 8], Layout::ChannelsFirst).unwrap(),
        Shape::new(&[4, 5, 8, 6], Layout::ChannelsLast).unwrap(),
        Shape::new(&[3, 7, 7, 8], Layout::ChannelsLast).unwrap(),
    ]
}

/// Training forward, backward and inference, with every argument a slice of
/// one buffer (so each dispatch reads and writes the same buffer), against
/// the reference from the raw data.
#[test]
fn every_op_on_slices_of_one_buffer() {
    for ctx in tuned_contexts() {
        for shape in shapes() {
            let (n, c) = (shape.numel(), shape.channels());
            let what = format!("{:?} {:?} {:?}", shape.dims(), shape.layout(), ctx.tuning());
            let regions = [
                ("x", n),
                ("y", n),
                ("dy", n),
                ("dx", n),
                ("z", n),
                ("save_mean", c),
                ("save_invstd", c),
                ("gamma", c),
                ("beta", c),
                ("running_mean", c),
                ("running_var", c),
                ("dgamma", c),
                ("dbeta", c),
            ];
            let pool = Pool::new(&ctx, &regions);
            let x = typical_data(&shape, 1);
            let dy = channel_data(&shape, 2, |_| (0.0, 1.0));
            let (gamma, beta) = (vector(c, 3, 0.5, 1.5), vector(c, 4, -1.0, 1.0));
            for (name, data) in [("x", x.as_slice().unwrap()), ("dy", dy.as_slice().unwrap()), ("gamma", &gamma), ("beta", &beta)] {
                pool.write(&ctx, name, data);
            }
            pool.write(&ctx, "running_mean", &vec![0.0; c]);
            pool.write(&ctx, "running_var", &vec![1.0; c]);
            let options = Options::default();
            let op = Norm::Batch(shape.clone());
            submit(&ctx, |e| {
                let running = RunningBuffers { mean: pool.slice("running_mean"), var: pool.slice("running_var"), num_batches_tracked: 0 };
                let train = NormForwardBuffers {
                    x: pool.slice("x"),
                    y: pool.slice("y"),
                    stats: NormStats { mean: Some(pool.slice("save_mean")), rstd: pool.slice("save_invstd") },
                    gamma: Some(pool.slice("gamma")),
                    beta: Some(pool.slice("beta")),
                    running: Some(running),
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm(e, &op, &options, &train).unwrap();
                let stats = BackwardStats::Saved(NormStats { mean: Some(pool.slice("save_mean")), rstd: pool.slice("save_invstd") });
                let backward = NormBackwardBuffers {
                    dy: pool.slice("dy"),
                    x: pool.slice("x"),
                    dx: pool.slice("dx"),
                    stats,
                    gamma: Some(pool.slice("gamma")),
                    param_grads: Some(NormParamGradBuffers { dgamma: pool.slice("dgamma"), dbeta: Some(pool.slice("dbeta")) }),
                    z: None,
                    dresidual: None,
                    workspace: None,
                };
                ctx.encode_norm_backward(e, &op, &options, &backward).unwrap();
                let inference = NormInferenceBuffers {
                    x: pool.slice("x"),
                    y: pool.slice("z"),
                    gamma: Some(pool.slice("gamma")),
                    beta: Some(pool.slice("beta")),
                    running_mean: pool.slice("running_mean"),
                    running_var: pool.slice("running_var"),
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm_inference(e, &op, &options, &inference).unwrap();
            });
            let read = pool.read(&ctx);
            let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            assert_rel(&format!("y {what}"), &read("y"), f.y.as_slice().unwrap(), 1e-5);
            assert_rel(&format!("save_mean {what}"), &read("save_mean"), &f.save_mean, 1e-5);
            let running = reference_running(&shape, &x, &options);
            assert_rel(&format!("running_var {what}"), &read("running_var"), &running.var, 1e-5);
            let g = reference::backward_train(&shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
            assert_rel(&format!("dx {what}"), &read("dx"), g.dx.as_slice().unwrap(), 1e-5);
            assert_rel(&format!("dgamma {what}"), &read("dgamma"), &g.dgamma, 1e-5);
            assert_rel(&format!("dbeta {what}"), &read("dbeta"), &g.dbeta, 1e-5);
            let (rm, rv) = (read("running_mean"), read("running_var"));
            let z = reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &rm, &rv, 1e-5).unwrap();
            assert_rel(&format!("inference y {what}"), &read("z"), z.as_slice().unwrap(), 1e-5);
        }
    }
}

/// Inference forward in place: `y` is `x`.
#[test]
fn inference_in_place() {
    let ctx = ctx();
    for shape in shapes() {
        let (n, c) = (shape.numel(), shape.channels());
        let pool = Pool::new(&ctx, &[("x", n), ("mean", c), ("var", c)]);
        let x = typical_data(&shape, 5);
        let running = RunningStats { mean: vector(c, 6, -5.0, 5.0), var: vector(c, 7, 0.5, 20.0), num_batches_tracked: 1 };
        pool.write(&ctx, "x", x.as_slice().unwrap());
        pool.write(&ctx, "mean", &running.mean);
        pool.write(&ctx, "var", &running.var);
        let options = Options { affine: false, ..Options::default() };
        let op = Norm::Batch(shape.clone());
        submit(&ctx, |e| {
            let b = NormInferenceBuffers {
                x: pool.slice("x"),
                y: pool.slice("x"),
                gamma: None,
                beta: None,
                running_mean: pool.slice("mean"),
                running_var: pool.slice("var"),
                residual: None,
                workspace: None,
            };
            ctx.encode_norm_inference(e, &op, &options, &b).unwrap();
        });
        let want = reference::forward_inference::<_, f32>(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
        assert_rel(&format!("in place {:?}", shape.layout()), &pool.read(&ctx)("x"), want.as_slice().unwrap(), 1e-5);
    }
}

/// One prepared op recorded many times into one encoder, over alternating
/// slices: each record binds its own slices (bind groups cached per set).
#[test]
fn a_prepared_op_records_over_many_sets_of_slices() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 6, 5, 8], Layout::ChannelsFirst).unwrap();
    let (n, c) = (shape.numel(), shape.channels());
    let options = Options { affine: false, track_running_stats: false, ..Options::default() };
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options).unwrap();
    let names = ["x0", "x1", "x2"];
    let outs = ["y0", "y1", "y2", "y3", "y4", "y5"];
    let mut sizes: Vec<(&'static str, usize)> = names.iter().chain(&outs).map(|&s| (s, n)).collect();
    sizes.extend([("mean", c), ("invstd", c)]);
    let pool = Pool::new(&ctx, &sizes);
    let inputs: Vec<ArrayD<f32>> = (0..3).map(|i| typical_data(&shape, 10 + i)).collect();
    for (name, x) in names.iter().zip(&inputs) {
        pool.write(&ctx, name, x.as_slice().unwrap());
    }
    submit(&ctx, |e| {
        for (k, y) in outs.iter().enumerate() {
            let b = NormForwardBuffers {
                x: pool.slice(names[k % 3]),
                y: pool.slice(y),
                stats: NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") },
                gamma: None,
                beta: None,
                running: None,
                residual: None,
                workspace: None,
            };
            op.record(e, &b).unwrap();
        }
    });
    let read = pool.read(&ctx);
    for (k, y) in outs.iter().enumerate() {
        let want = reference::forward_train::<_, f32>(&shape, &inputs[k % 3].view(), None, None, 1e-5).unwrap();
        assert_rel(&format!("record {k}"), &read(y), want.y.as_slice().unwrap(), 1e-5);
    }
}

/// With the cumulative average each training step has its own weight: three
/// steps recorded into one encoder before one submit update the running
/// statistics as three separate calls would.
#[test]
fn steps_recorded_before_one_submit_keep_their_own_running_weight() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 5, 8, 6], Layout::ChannelsLast).unwrap();
    let (n, c) = (shape.numel(), shape.channels());
    let options = Options { momentum: Momentum::CumulativeAverage, affine: false, ..Options::default() };
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options).unwrap();
    let pool = Pool::new(&ctx, &[("x0", n), ("x1", n), ("x2", n), ("y", n), ("mean", c), ("invstd", c), ("rm", c), ("rv", c)]);
    let inputs: Vec<ArrayD<f32>> = (0..3).map(|i| typical_data(&shape, 20 + i)).collect();
    let mut want = RunningStats::<f64>::new(c);
    for (k, x) in inputs.iter().enumerate() {
        pool.write(&ctx, ["x0", "x1", "x2"][k], x.as_slice().unwrap());
        let batch = reference::batch_stats(&shape, &x.view()).unwrap();
        reference::update_running(&mut want, &batch, shape.per_channel(), &options);
    }
    pool.write(&ctx, "rm", &vec![0.0; c]);
    pool.write(&ctx, "rv", &vec![1.0; c]);
    submit(&ctx, |e| {
        for k in 0..3 {
            let b = NormForwardBuffers {
                x: pool.slice(["x0", "x1", "x2"][k]),
                y: pool.slice("y"),
                stats: NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") },
                gamma: None,
                beta: None,
                running: Some(RunningBuffers { mean: pool.slice("rm"), var: pool.slice("rv"), num_batches_tracked: k as u64 }),
                residual: None,
                workspace: None,
            };
            op.record(e, &b).unwrap();
        }
    });
    let read = pool.read(&ctx);
    assert_rel("running_mean", &read("rm"), &want.mean, 1e-5);
    assert_rel("running_var", &read("rv"), &want.var, 1e-5);
}

/// The layer inside a caller's graph: forward and backward over the caller's
/// slices, gradients in the layer's buffers, no host round trip.
#[test]
fn the_layer_records_over_the_callers_slices() {
    let ctx = ctx();
    for shape in shapes() {
        let (n, c) = (shape.numel(), shape.channels());
        let mut bn = BatchNorm::new(ctx.clone(), c, Options::default()).unwrap();
        let (gamma, beta) = (vector(c, 3, 0.5, 1.5), vector(c, 4, -1.0, 1.0));
        bn.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
        let pool = Pool::new(&ctx, &[("x", n), ("y", n), ("dy", n), ("dx", n)]);
        let x = typical_data(&shape, 30);
        let dy = channel_data(&shape, 31, |_| (0.0, 1.0));
        pool.write(&ctx, "x", x.as_slice().unwrap());
        pool.write(&ctx, "dy", dy.as_slice().unwrap());
        submit(&ctx, |e| {
            bn.encode_forward(e, &shape, pool.slice("x"), pool.slice("y")).unwrap();
            bn.encode_backward(e, pool.slice("dy"), pool.slice("x"), pool.slice("dx")).unwrap();
        });
        let what = format!("{:?} {:?}", shape.dims(), shape.layout());
        let read = pool.read(&ctx);
        let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        assert_rel(&format!("y {what}"), &read("y"), f.y.as_slice().unwrap(), 1e-5);
        let g = reference::backward_train(&shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
        assert_rel(&format!("dx {what}"), &read("dx"), g.dx.as_slice().unwrap(), 1e-5);
        let grads = bn.param_grad_buffers().unwrap();
        let got = pollster::block_on(ctx.download(&[(grads.gamma, c), (grads.beta.expect("batch norm's dbeta"), c)])).unwrap();
        assert_rel(&format!("dgamma {what}"), &got[0], &g.dgamma, 1e-5);
        assert_rel(&format!("dbeta {what}"), &got[1], &g.dbeta, 1e-5);
        assert_eq!(bn.num_batches_tracked(), 1);
    }
}

/// Misaligned, short and overlapping slices are errors before anything is recorded.
#[test]
fn misaligned_short_and_overlapping_slices_are_errors() {
    let ctx = ctx();
    let align = ctx.slice_alignment();
    let shape = Shape::new(&[4, 6, 5, 8], Layout::ChannelsFirst).unwrap();
    let (n, c) = (shape.numel(), shape.channels());
    let pool = Pool::new(&ctx, &[("x", n), ("y", n), ("mean", c), ("invstd", c), ("dgamma", c)]);
    let (x, y) = (pool.range("x"), pool.range("y"));
    let plain = Options { affine: false, track_running_stats: false, ..Options::default() };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let op = Norm::Batch(shape.clone());
    let train = |x, y| NormForwardBuffers {
        x,
        y,
        stats: NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") },
        gamma: None,
        beta: None,
        running: None,
        residual: None,
        workspace: None,
    };
    let bad = |e: wgpu_batchnorm::Result<()>, name: &str, says: &str| match e {
        Err(Error::BadBuffer { name: got, reason }) => assert!(got == name && reason.contains(says), "{got}: {reason}"),
        other => panic!("{name}: {other:?}"),
    };
    let misaligned = pool.buffer.slice(x.start + 4..x.end + 4);
    bad(ctx.encode_norm(&mut encoder, &op, &plain, &train(misaligned, pool.slice("y"))), "x", "min_storage_buffer_offset_alignment");
    let short = pool.buffer.slice(y.start..y.end - 4);
    bad(ctx.encode_norm(&mut encoder, &op, &plain, &train(pool.slice("x"), short)), "y", "needs");
    // y starting one aligned block inside x.
    let overlapping = pool.buffer.slice(x.start + align..x.start + align + n as u64 * 4);
    bad(ctx.encode_norm(&mut encoder, &op, &plain, &train(pool.slice("x"), overlapping)), "y", "overlap");
    // Inference allows y to be exactly x, not a shifted x.
    let inference = |y| NormInferenceBuffers {
        x: pool.slice("x"),
        y,
        gamma: None,
        beta: None,
        running_mean: pool.slice("mean"),
        running_var: pool.slice("invstd"),
        residual: None,
        workspace: None,
    };
    bad(ctx.encode_norm_inference(&mut encoder, &op, &plain_tracked(), &inference(overlapping)), "y", "overlap");
    let grads = NormParamGradBuffers { dgamma: pool.slice("dgamma"), dbeta: Some(pool.slice("dgamma")) };
    let stats = BackwardStats::Saved(NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") });
    let backward = NormBackwardBuffers {
        dy: pool.slice("x"),
        x: pool.slice("x"),
        dx: pool.slice("y"),
        stats,
        gamma: Some(pool.slice("invstd")),
        param_grads: Some(grads),
        z: None,
        dresidual: None,
        workspace: None,
    };
    bad(ctx.encode_norm_backward(&mut encoder, &op, &Options::default(), &backward), "dgamma", "overlap");
    ctx.queue().submit([encoder.finish()]);
    let read = pool.read(&ctx);
    assert!(read("y").iter().all(|&v| v == SENTINEL), "a refused call recorded nothing");
}

fn plain_tracked() -> Options {
    Options { affine: false, ..Options::default() }
}

/// A ResNet block's tail over slices of one buffer: training forward with
/// `z = relu(bn(x) + residual)` written in place over the residual (prepared,
/// recorded twice), then the backward from `dz` and that `z`, writing `dx` and
/// `dresidual`; the inference forward the same way; against the reference.
#[test]
fn fused_epilogues_over_slices_with_the_output_in_place_of_the_residual() {
    let ctx = ctx();
    let epilogue = Epilogue { activation: Activation::Relu, residual: true };
    for shape in shapes() {
        let (n, c) = (shape.numel(), shape.channels());
        let regions =
            [("x", n), ("z", n), ("dz", n), ("dx", n), ("dr", n), ("mean", c), ("invstd", c), ("gamma", c), ("beta", c), ("dgamma", c)];
        let pool = Pool::new(&ctx, &[&regions[..], &[("dbeta", c), ("rm", c), ("rv", c)]].concat());
        let x = typical_data(&shape, 71);
        let r = channel_data(&shape, 72, |_| (0.0, 1.0));
        let dz = channel_data(&shape, 73, |_| (0.0, 1.0));
        let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
        let running = RunningStats { mean: vector(c, 74, -5.0, 5.0), var: vector(c, 75, 0.25, 4.0), num_batches_tracked: 0 };
        for (name, data) in [("x", &x), ("z", &r), ("dz", &dz)] {
            pool.write(&ctx, name, data.as_slice().unwrap());
        }
        for (name, data) in [("gamma", &gamma), ("beta", &beta), ("rm", &running.mean), ("rv", &running.var)] {
            pool.write(&ctx, name, data);
        }
        let what = format!("{:?} {:?}", shape.dims(), shape.layout());
        let batch = Norm::Batch(shape.clone());
        let options = Options { epilogue, track_running_stats: false, ..Options::default() };
        let train = NormForwardBuffers {
            x: pool.slice("x"),
            y: pool.slice("z"),
            stats: NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") },
            gamma: Some(pool.slice("gamma")),
            beta: Some(pool.slice("beta")),
            running: None,
            residual: Some(pool.slice("z")),
            workspace: None,
        };
        let backward = NormBackwardBuffers {
            dy: pool.slice("dz"),
            x: pool.slice("x"),
            dx: pool.slice("dx"),
            stats: BackwardStats::Saved(NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") }),
            gamma: Some(pool.slice("gamma")),
            param_grads: Some(NormParamGradBuffers { dgamma: pool.slice("dgamma"), dbeta: Some(pool.slice("dbeta")) }),
            z: Some(pool.slice("z")),
            dresidual: Some(pool.slice("dr")),
            workspace: None,
        };
        let op = ctx.prepare_norm(&batch, &options).unwrap();
        submit(&ctx, |e| {
            op.record(e, &train).unwrap();
            ctx.encode_norm_backward(e, &batch, &options, &backward).unwrap();
        });
        let read = pool.read(&ctx);
        let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        let z = reference::epilogue(&f.y.view(), Some(&r.view()), epilogue.activation).unwrap();
        assert_rel(&format!("z {what}"), &read("z"), z.as_slice().unwrap(), 1e-5);
        let z_gpu = ArrayD::from_shape_vec(shape.dims(), read("z")).unwrap();
        let dy = reference::epilogue_grad(&dz.view(), &z_gpu.view(), epilogue.activation).unwrap();
        let x64 = x.mapv(f64::from);
        let g = reference::backward_train(&shape, &dy.view(), &x64.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
        assert_rel(&format!("dx {what}"), &read("dx"), g.dx.as_slice().unwrap(), 1e-5);
        assert_rel(&format!("dresidual {what}"), &read("dr"), dy.as_slice().unwrap(), 0.0);
        assert_rel(&format!("dgamma {what}"), &read("dgamma"), &g.dgamma, 1e-5);
        assert_rel(&format!("dbeta {what}"), &read("dbeta"), &g.dbeta, 1e-5);

        // Inference, in place over the residual too.
        pool.write(&ctx, "z", r.as_slice().unwrap());
        let inference = NormInferenceBuffers {
            x: pool.slice("x"),
            y: pool.slice("z"),
            gamma: Some(pool.slice("gamma")),
            beta: Some(pool.slice("beta")),
            running_mean: pool.slice("rm"),
            running_var: pool.slice("rv"),
            residual: Some(pool.slice("z")),
            workspace: None,
        };
        let options = Options { epilogue, ..Options::default() };
        submit(&ctx, |e| ctx.encode_norm_inference(e, &batch, &options, &inference).unwrap());
        let y =
            reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5).unwrap();
        let z = reference::epilogue(&y.view(), Some(&r.view()), epilogue.activation).unwrap();
        assert_rel(&format!("inference z {what}"), &pool.read(&ctx)("z"), z.as_slice().unwrap(), 1e-5);
    }
}

/// The residual, `z` and `dresidual` slots are checked as the tensors are:
/// alignment, size, overlap, and presence against the options.
#[test]
fn epilogue_slices_are_checked_like_tensors() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 6, 5, 8], Layout::ChannelsFirst).unwrap();
    let (n, c) = (shape.numel(), shape.channels());
    let pool = Pool::new(&ctx, &[("x", n), ("y", n), ("r", n), ("dx", n), ("mean", c), ("invstd", c)]);
    let (r, y) = (pool.range("r"), pool.range("y"));
    let options = Options {
        affine: false,
        track_running_stats: false,
        epilogue: Epilogue { activation: Activation::LeakyRelu(0.01), residual: true },
        ..Options::default()
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let op = Norm::Batch(shape.clone());
    let train = |residual| NormForwardBuffers {
        x: pool.slice("x"),
        y: pool.slice("y"),
        stats: NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") },
        gamma: None,
        beta: None,
        running: None,
        residual,
        workspace: None,
    };
    let bad = |e: wgpu_batchnorm::Result<()>, name: &str, says: &str| match e {
        Err(Error::BadBuffer { name: got, reason }) => assert!(got == name && reason.contains(says), "{got}: {reason}"),
        other => panic!("{name}: {other:?}"),
    };
    let misaligned = pool.buffer.slice(r.start + 4..r.end + 4);
    bad(ctx.encode_norm(&mut encoder, &op, &options, &train(Some(misaligned))), "residual", "alignment");
    bad(ctx.encode_norm(&mut encoder, &op, &options, &train(Some(pool.buffer.slice(r.start..r.end - 4)))), "residual", "needs");
    let align = ctx.slice_alignment();
    let shifted = pool.buffer.slice(y.start + align..y.start + align + n as u64 * 4);
    bad(ctx.encode_norm(&mut encoder, &op, &options, &train(Some(shifted))), "y", "overlap");
    let e = ctx.encode_norm(&mut encoder, &op, &options, &train(None));
    assert!(matches!(&e, Err(Error::OptionsMismatch { what: "residual", .. })), "{e:?}");
    let plain = Options { epilogue: Epilogue::default(), ..options };
    let e = ctx.encode_norm(&mut encoder, &op, &plain, &train(Some(pool.slice("r"))));
    assert!(matches!(&e, Err(Error::OptionsMismatch { what: "residual", .. })), "{e:?}");

    let backward = |z, dresidual| NormBackwardBuffers {
        dy: pool.slice("y"),
        x: pool.slice("x"),
        dx: pool.slice("dx"),
        stats: BackwardStats::Saved(NormStats { mean: Some(pool.slice("mean")), rstd: pool.slice("invstd") }),
        gamma: None,
        param_grads: None,
        z,
        dresidual,
        workspace: None,
    };
    let e = ctx.encode_norm_backward(&mut encoder, &op, &options, &backward(None, Some(pool.slice("r"))));
    assert!(matches!(&e, Err(Error::OptionsMismatch { what: "z", .. })), "{e:?}");
    let e = ctx.encode_norm_backward(&mut encoder, &op, &options, &backward(Some(pool.slice("y")), None));
    assert!(matches!(&e, Err(Error::OptionsMismatch { what: "dresidual", .. })), "{e:?}");
    bad(ctx.encode_norm_backward(&mut encoder, &op, &options, &backward(Some(pool.slice("y")), Some(pool.slice("dx")))), "dx", "overlap");
    bad(
        ctx.encode_norm_backward(&mut encoder, &op, &options, &backward(Some(pool.slice("r")), Some(pool.slice("r")))),
        "dresidual",
        "overlap",
    );
    ctx.queue().submit([encoder.finish()]);
    let read = pool.read(&ctx);
    assert!(read("y").iter().chain(&read("dx")).all(|&v| v == SENTINEL), "a refused call recorded nothing");
}

/// A framework plans its pool from `slot_bytes`: slices of exactly those
/// sizes bind, and one slice a word short is refused by its name.
#[test]
fn slot_bytes_plan_a_pool_and_a_short_slice_is_named() {
    let ctx = ctx();
    let short_by_name = |name: &str, bound: wgpu_batchnorm::Result<wgpu_batchnorm::Bound>| match bound {
        Err(Error::BadBuffer { name: got, reason }) => assert!(got == name && reason.contains("needs"), "{name}: {got}: {reason}"),
        other => panic!("{name} a word short: {other:?}"),
    };

    let shape = Shape::new(&[4, 5, 8, 6], Layout::ChannelsLast).unwrap();
    let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &Options { dtype: Dtype::Bf16, ..Options::default() }).unwrap();
    let slots = op.slot_bytes();
    let names: Vec<_> = slots.iter().map(|s| s.name).collect();
    assert_eq!(names, ["x", "y", "mean", "rstd", "gamma", "beta", "running_mean", "running_var", "residual", "workspace"]);
    let outputs: Vec<_> = slots.iter().filter(|s| s.output).map(|s| s.name).collect();
    assert_eq!(outputs, ["y", "mean", "rstd", "running_mean", "running_var", "workspace"]);
    // 960 bf16 values; 6 channels of f32; the reductions' scratch.
    let workspace = op.workspace_bytes();
    assert!(workspace > 0);
    assert_eq!(slots.iter().map(|s| s.bytes).collect::<Vec<_>>(), [1920, 1920, 24, 24, 24, 24, 24, 24, 1920, workspace]);
    let pool = Pool::new(&ctx, &slots.iter().map(|s| (s.name, s.bytes as usize / 4)).collect::<Vec<_>>());
    let slice = |name: &str, short: &str| {
        let r = pool.range(name);
        pool.buffer.slice(r.start..r.end - if name == short { 4 } else { 0 })
    };
    let train = |short: &str| NormForwardBuffers {
        x: slice("x", short),
        y: slice("y", short),
        stats: NormStats { mean: Some(slice("mean", short)), rstd: slice("rstd", short) },
        gamma: Some(slice("gamma", short)),
        beta: Some(slice("beta", short)),
        running: Some(RunningBuffers { mean: slice("running_mean", short), var: slice("running_var", short), num_batches_tracked: 0 }),
        residual: None,
        workspace: Some(slice("workspace", short)),
    };
    op.bind(&train("")).unwrap();
    for name in names[..8].iter().chain(&["workspace"]) {
        short_by_name(name, op.bind(&train(name)));
    }

    let layer_norm = Norm::Layer { dims: vec![6, 10], normalized_shape: vec![10] };
    let op = ctx.prepare_norm(&layer_norm, &layer_norm.default_options()).unwrap();
    let slots = op.slot_bytes();
    let sizes: Vec<_> = slots.iter().map(|s| (s.name, s.bytes)).collect();
    assert_eq!(&sizes[..6], [("x", 240), ("y", 240), ("mean", 24), ("rstd", 24), ("gamma", 40), ("beta", 40)]);
    let pool = Pool::new(&ctx, &slots[..6].iter().map(|s| (s.name, s.bytes as usize / 4)).collect::<Vec<_>>());
    let slice = |name: &str, short: &str| {
        let r = pool.range(name);
        pool.buffer.slice(r.start..r.end - if name == short { 4 } else { 0 })
    };
    let forward = |short: &str| NormForwardBuffers {
        x: slice("x", short),
        y: slice("y", short),
        stats: NormStats { mean: Some(slice("mean", short)), rstd: slice("rstd", short) },
        gamma: Some(slice("gamma", short)),
        beta: Some(slice("beta", short)),
        running: None,
        residual: None,
        workspace: None,
    };
    op.bind(&forward("")).unwrap();
    for (name, _) in &sizes[..6] {
        short_by_name(name, op.bind(&forward(name)));
    }
}
