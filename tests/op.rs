//! The op model: every op, batch norm included, runs through the same lines
//! (prepare, size the slots, bind, record, backward) with only its
//! descriptor ([`Norm`]) changed, and matches the f64 reference
//! ([`reference::norm`], [`reference::norm_backward`]).

mod common;

use common::{assert_rel, ctx, typical_data, vector};
use ndarray::ArrayD;
use wgpu_batchnorm::{
    reference, BackwardStats, Error, GpuContext, Layout, Norm, NormBackwardBuffers, NormBackwardInputs, NormForwardBuffers,
    NormParamGradBuffers, NormStats, Options, RunningBuffers, RunningStats, Shape,
};

const TOL: f64 = 1e-5;

/// Every op over a tensor of 4 samples, 12 channels and 6 x 5 positions, in
/// each layout where the op has one.
fn ops() -> Vec<Norm> {
    let dims = [4, 12, 6, 5];
    let mut ops = Vec::new();
    for (layout, dims) in [(Layout::ChannelsFirst, dims), (Layout::ChannelsLast, [4, 6, 5, 12])] {
        let shape = Shape::new(&dims, layout).unwrap();
        ops.push(Norm::Batch(shape.clone()));
        ops.push(Norm::Group { shape: shape.clone(), groups: 3 });
        ops.push(Norm::Instance(shape));
    }
    ops.push(Norm::Layer { dims: dims.to_vec(), normalized_shape: vec![6, 5] });
    ops.push(Norm::Rms { dims: dims.to_vec(), normalized_shape: vec![5] });
    ops
}

/// A slice of `buffer` for each slot, 256-byte aligned, sized by the op's own query.
fn slots<'a>(ctx: &GpuContext, buffer: &'a wgpu::Buffer, sizes: &[wgpu_batchnorm::SlotBytes], name: &str) -> wgpu::BufferSlice<'a> {
    let align = ctx.slice_alignment();
    let mut offset = 0;
    for s in sizes {
        let end = offset + s.bytes;
        if s.name == name {
            return buffer.slice(offset..end);
        }
        offset = end.div_ceil(align) * align;
    }
    panic!("no slot {name}")
}

fn pool_bytes(ctx: &GpuContext, sizes: &[wgpu_batchnorm::SlotBytes]) -> u64 {
    let align = ctx.slice_alignment();
    sizes.iter().map(|s| s.bytes.div_ceil(align) * align).sum()
}

/// Forward and backward of `op` through the prepared calls, every slice a
/// slot of one pooled buffer sized by the op's queries; the outputs read back.
struct Run {
    y: Vec<f32>,
    mean: Option<Vec<f32>>,
    rstd: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Option<Vec<f32>>,
}

/// With `workspace`, both ops take their scratch from that one slice (the
/// backward recorded after the forward), and make none of their own.
#[allow(clippy::too_many_arguments)]
fn run(
    ctx: &GpuContext,
    op: &Norm,
    options: &Options,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    gamma: &[f32],
    beta: &[f32],
    workspace: Option<wgpu::BufferSlice<'_>>,
) -> Run {
    let rms = matches!(op, Norm::Rms { .. });
    let forward = ctx.prepare_norm(op, options).unwrap();
    let backward = ctx.prepare_norm_backward(op, options, true).unwrap();
    let held = (forward.held_bytes(), backward.held_bytes());
    let (fs, bs) = (forward.slot_bytes(), backward.slot_bytes());
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let pool = |label, sizes: &[wgpu_batchnorm::SlotBytes]| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: pool_bytes(ctx, sizes),
            usage,
            mapped_at_creation: false,
        })
    };
    let (fp, bp) = (pool("forward pool", &fs), pool("backward pool", &bs));
    let write = |slice: wgpu::BufferSlice<'_>, values: &[f32]| {
        ctx.queue().write_buffer(slice.buffer(), slice.offset(), bytemuck::cast_slice(values))
    };
    let f = |name| slots(ctx, &fp, &fs, name);
    let b = |name| slots(ctx, &bp, &bs, name);
    write(f("x"), x.as_slice().unwrap());
    write(f("gamma"), gamma);
    write(b("gamma"), gamma);
    write(b("x"), x.as_slice().unwrap());
    write(b("dy"), dy.as_slice().unwrap());
    if !rms {
        write(f("beta"), beta);
    }
    let (mean_slot, rstd_slot) = ("mean", "rstd");
    let fb = NormForwardBuffers {
        x: f("x"),
        y: f("y"),
        stats: NormStats { mean: (!rms).then(|| f(mean_slot)), rstd: f(rstd_slot) },
        gamma: Some(f("gamma")),
        beta: (!rms).then(|| f("beta")),
        running: None,
        residual: None,
        workspace,
    };
    let bound = forward.bind(&fb).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    bound.record(&mut encoder).unwrap();
    // The backward reads the forward's statistics: copied between the pools
    // in the encoder, so that they are the GPU's own, not the reference's.
    let (bmean, brstd) = ("mean", "rstd");
    for (from, to) in [(mean_slot, bmean), (rstd_slot, brstd)].into_iter().filter(|(from, _)| !(rms && *from == "mean")) {
        let (from, to) = (f(from), b(to));
        encoder.copy_buffer_to_buffer(from.buffer(), from.offset(), to.buffer(), to.offset(), from.size());
    }
    let bb = NormBackwardBuffers {
        dy: b("dy"),
        x: b("x"),
        dx: b("dx"),
        stats: BackwardStats::Saved(NormStats { mean: (!rms).then(|| b(bmean)), rstd: b(brstd) }),
        gamma: Some(b("gamma")),
        param_grads: Some(NormParamGradBuffers { dgamma: b("dgamma"), dbeta: (!rms).then(|| b("dbeta")) }),
        z: None,
        dresidual: None,
        workspace,
    };
    backward.record(&mut encoder, &bb).unwrap();
    ctx.queue().submit([encoder.finish()]);
    let (numel, rows, params) = (x.len(), forward.rows(), forward.params());
    let read = |slice: wgpu::BufferSlice<'_>, n| ctx.download_tensor_blocking::<f32>(slice, n).unwrap();
    let now = (forward.held_bytes(), backward.held_bytes());
    if workspace.is_some() {
        assert_eq!(now, held, "{op:?} made a workspace beside the caller's");
    } else {
        assert!(now.0 >= held.0 + forward.workspace_bytes() && now.1 >= held.1 + backward.workspace_bytes(), "{op:?}: {held:?} -> {now:?}");
    }
    Run {
        y: read(f("y"), numel),
        mean: (!rms).then(|| read(f(mean_slot), rows)),
        rstd: read(f(rstd_slot), rows),
        dx: read(b("dx"), numel),
        dgamma: read(b("dgamma"), params),
        dbeta: (!rms).then(|| read(b("dbeta"), params)),
    }
}

#[test]
fn every_op_runs_through_the_same_calls_and_matches_the_reference() {
    let ctx = ctx();
    for (i, op) in ops().iter().enumerate() {
        let what = format!("{op:?}");
        let options = op.default_options();
        let options = Options { affine: true, track_running_stats: false, ..options };
        let params = op.params().unwrap();
        let (gamma, beta) = (vector(params, 1, 0.5, 1.5), vector(params, 2, -1.0, 1.0));
        let shape = Shape::new(op.dims(), Layout::ChannelsFirst).unwrap();
        let x = typical_data(&shape, 10 + i as u64);
        let dy = ArrayD::from_shape_vec(op.dims(), vector(x.len(), 20 + i as u64, -1.0, 1.0)).unwrap();
        let rms = matches!(op, Norm::Rms { .. });
        let want = reference::norm(op, &x.view(), Some(&gamma[..]), (!rms).then_some(&beta[..]), f64::from(options.eps)).unwrap();
        let got = run(&ctx, op, &options, &x, &dy, &gamma, &beta, None);
        assert_rel(&format!("y {what}"), &got.y, want.y.as_slice().unwrap(), TOL);
        assert_rel(&format!("rstd {what}"), &got.rstd, &want.rstd, TOL);
        if let Some(mean) = &got.mean {
            assert_rel(&format!("mean {what}"), mean, &want.mean, TOL);
        }
        // The backward at the GPU's own statistics, as the prepared backward took them.
        let mean = got.mean.clone().unwrap_or_else(|| vec![0.0; got.rstd.len()]);
        let grads = reference::norm_backward(op, &dy.view(), &x.view(), &mean, &got.rstd, Some(&gamma[..])).unwrap();
        assert_rel(&format!("dx {what}"), &got.dx, grads.dx.as_slice().unwrap(), TOL);
        assert_rel(&format!("dgamma {what}"), &got.dgamma, &grads.dgamma, TOL);
        if let Some(dbeta) = &got.dbeta {
            assert_rel(&format!("dbeta {what}"), dbeta, &grads.dbeta, TOL);
        }

        // The ndarray calls give the prepared calls' values bit for bit.
        let gamma_beta = (Some(&gamma[..]), (!rms).then_some(&beta[..]));
        let host = ctx.norm_blocking(op, x.view(), gamma_beta.0, gamma_beta.1, None, &options).unwrap();
        assert_eq!(host.y.as_slice().unwrap(), &got.y[..], "ndarray y {what}");
        assert_eq!(host.rstd, got.rstd, "ndarray rstd {what}");
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let host_grads = ctx.norm_backward_blocking(op, &inputs, host.stats(), Some(&gamma), &options).unwrap();
        assert_eq!(host_grads.dx.as_slice().unwrap(), &got.dx[..], "ndarray dx {what}");
        assert_eq!(host_grads.dgamma.as_deref(), Some(&got.dgamma[..]), "ndarray dgamma {what}");
        assert_eq!(host_grads.dbeta, got.dbeta, "ndarray dbeta {what}");
    }
}

#[test]
fn running_statistics_follow_the_same_calls_for_batch_and_instance_norm() {
    let ctx = ctx();
    let shape = Shape::new(&[4, 6, 7], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 31);
    for op in [Norm::Batch(shape.clone()), Norm::Instance(shape.clone())] {
        let options = Options { affine: false, ..Options::default() };
        let mut running = RunningStats::new(shape.channels());
        let out = ctx.norm_blocking(&op, x.view(), None, None, Some(&mut running), &options).unwrap();
        assert_eq!(running.num_batches_tracked, 1);
        let mut want = RunningStats::<f64>::new(shape.channels());
        match &op {
            Norm::Batch(_) => {
                let stats = reference::batch_stats(&shape, &x.view()).unwrap();
                reference::update_running(&mut want, &stats, shape.per_channel(), &options);
            }
            _ => {
                let forward = reference::norm::<f32, f32>(&op, &x.view(), None, None, 1e-5).unwrap();
                reference::instance_norm_update_running(&mut want, &forward, 7, options.momentum).unwrap();
            }
        }
        assert_rel(&format!("running_mean {op:?}"), &running.mean, &want.mean, TOL);
        assert_rel(&format!("running_var {op:?}"), &running.var, &want.var, TOL);

        // The prepared op over the caller's running buffers: the same values.
        let prepared = ctx.prepare_norm(&op, &options).unwrap();
        let xb = ctx.upload("x", x.as_slice().unwrap()).unwrap();
        let y = ctx.storage("y", x.len()).unwrap();
        let (mean, rstd) = (ctx.storage("mean", out.rstd.len()).unwrap(), ctx.storage("rstd", out.rstd.len()).unwrap());
        let init = RunningStats::<f32>::new(shape.channels());
        let (rm, rv) = (ctx.upload("running_mean", &init.mean).unwrap(), ctx.upload("running_var", &init.var).unwrap());
        let buffers = NormForwardBuffers {
            x: xb.slice(..),
            y: y.slice(..),
            stats: NormStats { mean: Some(mean.slice(..)), rstd: rstd.slice(..) },
            gamma: None,
            beta: None,
            running: Some(RunningBuffers { mean: rm.slice(..), var: rv.slice(..), num_batches_tracked: 0 }),
            residual: None,
            workspace: None,
        };
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        prepared.record(&mut encoder, &buffers).unwrap();
        ctx.queue().submit([encoder.finish()]);
        let c = shape.channels();
        let got = pollster::block_on(ctx.download(&[(&rm, c), (&rv, c)])).unwrap();
        assert_eq!((&got[0], &got[1]), (&running.mean, &running.var), "prepared running statistics {op:?}");
    }
}

#[test]
fn what_an_op_does_not_have_is_a_typed_error() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 4, 3], Layout::ChannelsFirst).unwrap();
    let layer = Norm::Layer { dims: vec![2, 4, 3], normalized_shape: vec![3] };
    // Options::default() tracks running statistics: batch norm's default, which layer norm has none of.
    let e = ctx.prepare_norm(&layer, &Options::default()).unwrap_err();
    assert!(matches!(e, Error::OptionsMismatch { what: "track_running_stats", .. }), "{e}");
    let relu = Options { epilogue: wgpu_batchnorm::Epilogue::activation(wgpu_batchnorm::Activation::Relu), ..layer.default_options() };
    let e = ctx.prepare_norm(&layer, &relu).unwrap_err();
    assert!(matches!(e, Error::OptionsMismatch { what: "epilogue", .. }), "{e}");
    let e = ctx
        .prepare_norm(&Norm::Group { shape: shape.clone(), groups: 3 }, &Options { track_running_stats: false, ..Options::default() })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidGroups { channels: 4, groups: 3 }), "{e}");
    let x = typical_data(&shape, 1);
    let other = Norm::Batch(Shape::new(&[2, 4, 4], Layout::ChannelsFirst).unwrap());
    let e =
        ctx.norm_blocking(&other, x.view(), None, None, None, &Options { affine: false, track_running_stats: false, ..Options::default() });
    assert!(matches!(e, Err(Error::ShapeMismatch { what: "x", .. })), "{e:?}");
    let rms = Norm::Rms { dims: vec![2, 4, 3], normalized_shape: vec![3] };
    let g = [1.0f32; 3];
    let e = ctx.norm_blocking(&rms, x.view(), Some(&g), Some(&g), None, &rms.default_options());
    assert!(matches!(e, Err(Error::OptionsMismatch { what: "beta", .. })), "{e:?}");
    assert_eq!(rms.default_options().eps, f32::EPSILON);
}

/// A framework's pooled workspace: one buffer, from an aligned offset, full
/// of NaNs, that the forward and the backward recorded after it share. The
/// values are those of the ops' own workspaces bit for bit, and they make
/// none; on the small shapes and on ones whose passes keep partial sums
/// (long rows, many positions per channel).
#[test]
fn ops_share_a_callers_workspace_and_make_none() {
    let ctx = ctx();
    let mut ops = ops();
    let big = Shape::new(&[2, 8, 96, 96], Layout::ChannelsFirst).unwrap();
    ops.extend([
        Norm::Batch(big.clone()),
        Norm::Group { shape: big.clone(), groups: 2 },
        Norm::Layer { dims: vec![3, 20000], normalized_shape: vec![20000] },
    ]);
    let align = ctx.slice_alignment();
    for (i, op) in ops.iter().enumerate() {
        let options = Options { affine: true, track_running_stats: false, ..op.default_options() };
        let (forward, backward) = (ctx.prepare_norm(op, &options).unwrap(), ctx.prepare_norm_backward(op, &options, true).unwrap());
        let bytes = forward.workspace_bytes().max(backward.workspace_bytes());
        for sizes in [forward.slot_bytes(), backward.slot_bytes()] {
            assert_eq!(sizes.last().map(|s| (s.name, s.output)), Some(("workspace", true)), "{op:?}");
        }
        if bytes == 0 {
            continue;
        }
        // The workspace between two guards of NaNs, which the ops must not touch.
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let size = 2 * align + bytes.next_multiple_of(align);
        let buffer =
            ctx.device().create_buffer(&wgpu::BufferDescriptor { label: Some("workspace"), size, usage, mapped_at_creation: false });
        ctx.queue().write_buffer(&buffer, 0, &vec![0xff; size as usize]);
        let params = op.params().unwrap();
        let (gamma, beta) = (vector(params, 1, 0.5, 1.5), vector(params, 2, -1.0, 1.0));
        let x = typical_data(&Shape::new(op.dims(), Layout::ChannelsFirst).unwrap(), 40 + i as u64);
        let dy = ArrayD::from_shape_vec(op.dims(), vector(x.len(), 50 + i as u64, -1.0, 1.0)).unwrap();
        let own = run(&ctx, op, &options, &x, &dy, &gamma, &beta, None);
        let shared = run(&ctx, op, &options, &x, &dy, &gamma, &beta, Some(buffer.slice(align..align + bytes)));
        for guard in [buffer.slice(..align), buffer.slice(size - align..)] {
            let words = ctx.download_tensor_blocking::<f32>(guard, (align / 4) as usize).unwrap();
            assert!(words.iter().all(|w| w.to_bits() == u32::MAX), "{op:?} wrote outside its workspace");
        }
        let what = format!("{op:?}");
        let rms = matches!(op, Norm::Rms { .. });
        let want = reference::norm(op, &x.view(), Some(&gamma[..]), (!rms).then_some(&beta[..]), f64::from(options.eps)).unwrap();
        assert_rel(&format!("y {what}"), &shared.y, want.y.as_slice().unwrap(), TOL);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (name, a, b) in [
            ("y", &own.y, &shared.y),
            ("rstd", &own.rstd, &shared.rstd),
            ("dx", &own.dx, &shared.dx),
            ("dgamma", &own.dgamma, &shared.dgamma),
        ] {
            assert_eq!(bits(a), bits(b), "{name} {what}");
        }
        assert_eq!(own.mean.as_deref().map(bits), shared.mean.as_deref().map(bits), "mean {what}");
        assert_eq!(own.dbeta.as_deref().map(bits), shared.dbeta.as_deref().map(bits), "dbeta {what}");
    }
}

/// A workspace is checked as every slice is: size, alignment, usage, and
/// no overlap with another argument, each refused by its name.
#[test]
fn a_workspace_too_short_misaligned_or_overlapping_is_refused_by_name() {
    let ctx = ctx();
    let op = Norm::Layer { dims: vec![3, 20000], normalized_shape: vec![20000] };
    let options = Options { affine: false, ..op.default_options() };
    let forward = ctx.prepare_norm(&op, &options).unwrap();
    let (bytes, align, numel) = (forward.workspace_bytes(), ctx.slice_alignment(), 3 * 20000);
    assert!(bytes > 0);
    let tensor_bytes = (numel as u64 * 4).next_multiple_of(align);
    let pool = ctx.storage("pool", ((3 * tensor_bytes + bytes + align) / 4) as usize).unwrap();
    let stats = ctx.storage("stats", 2 * 64).unwrap();
    let buffers = |workspace| NormForwardBuffers {
        x: pool.slice(..tensor_bytes),
        y: pool.slice(tensor_bytes..2 * tensor_bytes),
        stats: NormStats { mean: Some(stats.slice(..256)), rstd: stats.slice(256..) },
        gamma: None,
        beta: None,
        running: None,
        residual: None,
        workspace: Some(workspace),
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let at = 2 * tensor_bytes;
    let cases = [
        (pool.slice(at..at + bytes - 4), "needs"),
        (pool.slice(at + 4..at + 4 + bytes), "alignment"),
        (pool.slice(tensor_bytes..tensor_bytes + bytes), "overlap"),
    ];
    for (workspace, why) in cases {
        let e = forward.record(&mut encoder, &buffers(workspace)).unwrap_err();
        let Error::BadBuffer { name, reason } = &e else { panic!("{e}") };
        assert!(*name == "workspace" || reason.contains("`workspace`"), "{e}");
        assert!(reason.contains(why), "{e}");
    }
    let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let e = forward.record(&mut encoder, &buffers(uniform.slice(..))).unwrap_err();
    assert!(matches!(e, Error::BadBuffer { name: "workspace", .. }), "{e}");
    // The pool's own slices bind: x, y and the workspace side by side in one buffer.
    forward.record(&mut encoder, &buffers(pool.slice(at..at + bytes))).unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(forward.held_bytes(), ctx.prepare_norm(&op, &options).unwrap().held_bytes());
}
