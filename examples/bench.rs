//! Every op against the adapter's own memory bandwidth (docs/SPEC.md's
//! performance model), and the host's cost of recording it.
//!
//! `cargo run --release --features bench --example bench [-- --quick] [--norms | --epilogue | --dtypes | --host] [--json FILE]`
//! (`--norms`: the normalization family's rows alone; `--host`: the host's costs alone)
//!
//! Kernel rows, for each op, layout and shape: the median kernel time, GB/s
//! under the bytes its pass structure moves, the roofline (the faster of two
//! plain WGSL vec4 copies over the same bytes, one item per invocation in
//! workgroups of 256 and contiguous spans with the context's tuning, measured
//! here), the time in copies of `x` to `y`, the op's floor in copies (its
//! reads at the measured price of the copy's loads alone, `r`, and its writes
//! at `1 - r`) and `of_floor` = floor / copies; then the CPU reference's time.
//! Then the host's cost per call of recording each op (bound once, recorded
//! over its slices, and one-shot) and of 100 training steps submitted back to back, the cost of the aliased
//! kernels (inputs `read_write`), the one-pass training forward against the
//! two-pass one, short channels in passes against one dispatch each way, and
//! a sweep of training forward over sizes. Then the fused
//! epilogues (`z = relu(bn(x) + residual)`) against batch norm alone, and
//! against batch norm followed by a separate elementwise pass (one copy's
//! time); `--epilogue` runs that table alone. Last, half precision: each op
//! and two of the family's shapes in f32, f16 and bf16, bytes and the roofline
//! copy at the dtype's size (`--dtypes` runs that table alone).

use std::fmt::Write as _;
use std::time::Instant;

use std::sync::Arc;
use wgpu_batchnorm::bench::{one_dispatch, one_pass, upload_as, CopyBench, Op, OpBuffers, Timer, SHAPES};

use ndarray::{ArrayD, Axis, Slice};
use wgpu_batchnorm::{
    in_process, reference, Activation, BatchNorm, ContextOptions, Dtype, Epilogue, GpuContext, Layout, NormBackwardBuffers,
    NormForwardBuffers, NormInferenceBuffers, Options, Result, Shape, SyncBatchNorm, Tuning,
};

struct Row {
    op: &'static str,
    layout: &'static str,
    shape: Vec<usize>,
    ms: f64,
    gbps: f64,
    roofline_gbps: f64,
    fraction: f64,
    copy_multiple: f64,
    floor_copies: f64,
    cpu_ms: Option<f64>,
}

impl Row {
    /// A kernel row: `ms` for an op whose pass structure moves `tensors`
    /// (reads, writes) tensors of `tensor_bytes` each, against `roof`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        op: &'static str,
        layout: &'static str,
        shape: &[usize],
        ms: f64,
        tensor_bytes: u64,
        tensors: (f64, f64),
        roof: &Roofline,
        cpu_ms: Option<f64>,
    ) -> Self {
        let gbps = tensor_bytes as f64 * (tensors.0 + tensors.1) / ms / 1e6;
        Row {
            op,
            layout,
            shape: shape.to_vec(),
            ms,
            gbps,
            roofline_gbps: roof.gbps,
            fraction: gbps / roof.gbps,
            copy_multiple: ms / roof.copy_ms,
            floor_copies: tensors.0 * roof.r + tensors.1 * (1.0 - roof.r),
            cpu_ms,
        }
    }
}

struct HostRow {
    op: &'static str,
    shape: Vec<usize>,
    path: &'static str,
    us_per_call: f64,
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::ChannelsFirst => "channels-first",
        Layout::ChannelsLast => "channels-last",
    }
}

fn cpu_reference_ms(op: Op, shape: &Shape, x: &ndarray::ArrayD<f32>) -> Result<f64> {
    let c = shape.channels();
    let (ones, zeros) = (vec![1.0f32; c], vec![0.0f32; c]);
    let t = Instant::now();
    match op {
        Op::ForwardTrain => drop(reference::forward_train(shape, &x.view(), Some(&ones[..]), Some(&zeros[..]), 1e-5)?),
        Op::ForwardInference => {
            drop(reference::forward_inference(shape, &x.view(), Some(&ones[..]), Some(&zeros[..]), &zeros, &ones, 1e-5)?)
        }
        Op::Backward => drop(reference::backward_train(shape, &x.view(), &x.view(), &zeros, &ones, Some(&ones[..]))?),
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The plain copy over `numel` elements of a dtype: its time, a buffer-to-buffer copy's,
/// the price of its loads alone as a fraction `r` of it, and its GB/s.
struct Roofline {
    copy: CopyBench,
    copy_ms: f64,
    buffer_copy_ms: f64,
    r: f64,
    gbps: f64,
}

impl Roofline {
    fn measure(ctx: &GpuContext, timer: &Timer, numel: usize, dtype: Dtype, warmup: usize, reps: usize) -> Result<Self> {
        let (copy, copy_ms) = CopyBench::fastest(ctx, timer, numel, dtype, warmup, reps)?;
        let buffer_copy_ms = timer.median_ms(ctx, warmup, reps, |e| {
            copy.encode_buffer_copy(e);
            Ok(())
        })?;
        let read_ms = timer.median_ms(ctx, warmup, reps, |e| {
            copy.encode_read_only(ctx, e);
            Ok(())
        })?;
        let gbps = copy.bytes_moved() as f64 / copy_ms / 1e6;
        Ok(Self { copy, copy_ms, buffer_copy_ms, r: read_ms / copy_ms, gbps })
    }
}

/// The normalization family's shapes (issue 12): name, dims, layout or
/// normalized shape, and the op.
#[derive(Clone, Copy)]
enum Norm {
    Layer(&'static [usize]),
    Rms(&'static [usize]),
    Group(usize, Layout),
    Instance(Layout),
}

const NORM_SHAPES: [(&str, &[usize], Norm); 6] = [
    ("layer norm", &[4096, 768], Norm::Layer(&[768])),
    ("layer norm", &[2048, 4096], Norm::Layer(&[4096])),
    ("rms norm", &[4096, 4096], Norm::Rms(&[4096])),
    ("group norm G=32", &[2, 320, 64, 64], Norm::Group(32, Layout::ChannelsFirst)),
    ("group norm G=32", &[2, 64, 64, 320], Norm::Group(32, Layout::ChannelsLast)),
    ("instance norm", &[8, 64, 128, 128], Norm::Instance(Layout::ChannelsFirst)),
];

/// Forward and backward (with dgamma, dbeta) of each of `shapes` with
/// tensors of `dtype`, over prepared ops and buffers made once. The floor is
/// the issue's: forward reads x once and writes y (1 + 1), backward reads x
/// and dy once and writes dx (2 + 1), at the dtype's bytes.
fn norm_rows(
    ctx: &GpuContext,
    timer: &Timer,
    shapes: &[(&str, &'static [usize], Norm)],
    dtype: Dtype,
    warmup: usize,
    reps: usize,
) -> Result<Vec<Row>> {
    use wgpu_batchnorm::{NormParamGradBuffers, NormStats};
    let mut rows = Vec::new();
    for &(name, dims, norm) in shapes {
        let numel: usize = dims.iter().product();
        let roof = Roofline::measure(ctx, timer, numel, dtype, warmup, reps)?;
        let (op, layout) = match norm {
            Norm::Layer(ns) => (wgpu_batchnorm::Norm::Layer { dims: dims.to_vec(), normalized_shape: ns.to_vec() }, "rows"),
            Norm::Rms(ns) => (wgpu_batchnorm::Norm::Rms { dims: dims.to_vec(), normalized_shape: ns.to_vec() }, "rows"),
            Norm::Group(groups, layout) => (wgpu_batchnorm::Norm::Group { shape: Shape::new(dims, layout)?, groups }, layout_name(layout)),
            Norm::Instance(layout) => (wgpu_batchnorm::Norm::Instance(Shape::new(dims, layout)?), layout_name(layout)),
        };
        // PyTorch's module defaults for each op (RMS norm's eps is f32's epsilon), with affine parameters.
        let o = wgpu_batchnorm::Options { affine: true, dtype, ..op.default_options() };
        let (forward, backward) = (ctx.prepare_norm(&op, &o)?, ctx.prepare_norm_backward(&op, &o, true)?);
        let rms = matches!(norm, Norm::Rms(_));
        let data: Vec<f32> = (0..numel).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let tensor = |label| upload_as(ctx, label, dtype, &vec![0.0; numel]);
        let (x, y, dy, dx) = (upload_as(ctx, "x", dtype, &data)?, tensor("y")?, upload_as(ctx, "dy", dtype, &data)?, tensor("dx")?);
        let (rows_n, params) = (forward.rows(), forward.params());
        let (mean, rstd) = (ctx.storage("mean", rows_n)?, ctx.storage("rstd", rows_n)?);
        let (gamma, beta) = (ctx.upload("gamma", &vec![1.0; params])?, ctx.upload("beta", &vec![0.0; params])?);
        let (dgamma, dbeta) = (ctx.storage("dgamma", params)?, ctx.storage("dbeta", params)?);
        let stats = NormStats { mean: (!rms).then(|| mean.slice(..)), rstd: rstd.slice(..) };
        let fb = NormForwardBuffers {
            x: x.slice(..),
            y: y.slice(..),
            stats,
            gamma: Some(gamma.slice(..)),
            beta: (!rms).then(|| beta.slice(..)),
            running: None,
            residual: None,
            workspace: None,
        };
        let bb = NormBackwardBuffers {
            dy: dy.slice(..),
            x: x.slice(..),
            dx: dx.slice(..),
            stats: stats.into(),
            gamma: Some(gamma.slice(..)),
            param_grads: Some(NormParamGradBuffers { dgamma: dgamma.slice(..), dbeta: (!rms).then(|| dbeta.slice(..)) }),
            z: None,
            dresidual: None,
            workspace: None,
        };
        let bytes = dtype.tensor_bytes(numel);
        let suffix = if dtype == Dtype::F32 { String::new() } else { format!(" {}", dtype_name(ctx, dtype)) };
        for (op, floor, ms) in [
            ("forward", (1.0, 1.0), timer.median_ms(ctx, warmup, reps, |e| forward.record(e, &fb))?),
            ("backward", (2.0, 1.0), timer.median_ms(ctx, warmup, reps, |e| backward.record(e, &bb))?),
        ] {
            let op = if op == "forward" { leak(format!("{name} fwd{suffix}")) } else { leak(format!("{name} bwd{suffix}")) };
            let row = Row::new(op, layout, dims, ms, bytes, floor, &roof, None);
            print_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// A row's name for the table and JSON, made once per benchmark run.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn print_header() {
    println!(
        "\n{:<22} {:<15} {:<18} {:>9} {:>6} {:>6} {:>8} {:>7} {:>6} {:>8} {:>8}",
        "op", "layout", "shape", "ms", "GB/s", "roof", "fraction", "copies", "floor", "of_floor", "cpu ms"
    );
}

fn print_row(row: &Row) {
    println!("{}", format_row(row));
}

fn format_row(row: &Row) -> String {
    format!(
        "{:<22} {:<15} {:<18} {:>9.3} {:>6.1} {:>6.1} {:>8.3} {:>7.2} {:>6.2} {:>8.3} {:>8}",
        row.op,
        row.layout,
        format!("{:?}", row.shape),
        row.ms,
        row.gbps,
        row.roofline_gbps,
        row.fraction,
        row.copy_multiple,
        row.floor_copies,
        row.floor_copies / row.copy_multiple,
        row.cpu_ms.map_or("-".to_string(), |c| format!("{c:.1}"))
    )
}

fn wait(ctx: &GpuContext) -> Result<()> {
    ctx.device().poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| wgpu_batchnorm::Error::DeviceLost(e.to_string()))
}

/// Median microseconds per call of `record` into a fresh encoder, over
/// `rounds` rounds of `calls` calls each. wgpu encodes (validates, tracks
/// resources, writes the backend's commands) when the encoder finishes, so
/// `finish` is timed too; the command buffers are dropped, not submitted.
fn record_us(
    ctx: &GpuContext,
    rounds: usize,
    calls: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        for _ in 0..calls {
            record(&mut encoder)?;
        }
        drop(encoder.finish());
        times.push(t.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The host's cost of each op on `shape`: bound once and recorded
/// (`bound`), recorded over the slices (`prepared`, which binds them for the
/// record), one-shot through the context's cache, and `steps` training steps
/// (forward and backward) submitted back to back.
fn host_rows(ctx: &GpuContext, dims: &'static [usize], steps: usize, rounds: usize) -> Result<Vec<HostRow>> {
    let shape = Shape::new(dims, Layout::ChannelsFirst)?;
    let buffers = OpBuffers::new(ctx, &shape, Dtype::F32)?;
    let options = Options::default();
    let op = buffers.op();
    let train = ctx.prepare_norm(&op, &options)?;
    let inference = ctx.prepare_norm_inference(&op, &options)?;
    let backward = ctx.prepare_norm_backward(&op, &options, true)?;
    let mut rows = Vec::new();
    let mut row = |op: &'static str, path, us_per_call| rows.push(HostRow { op, shape: dims.to_vec(), path, us_per_call });
    // The one-shot calls' first record of each prepares it (and compiles its pipelines).
    for op in Op::ALL {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        buffers.encode(ctx, op, &mut encoder)?;
        ctx.queue().submit([encoder.finish()]);
    }
    wait(ctx)?;
    let calls = 50;
    let (train_bound, inference_bound, backward_bound) =
        (train.bind(&buffers.forward_train())?, inference.bind(&buffers.forward_inference())?, backward.bind(&buffers.backward())?);
    row(Op::ForwardTrain.name(), "bound", record_us(ctx, rounds, calls, |e| train_bound.record(e))?);
    row(Op::ForwardTrain.name(), "prepared", record_us(ctx, rounds, calls, |e| train.record(e, &buffers.forward_train()))?);
    row(Op::ForwardTrain.name(), "oneshot", record_us(ctx, rounds, calls, |e| buffers.encode(ctx, Op::ForwardTrain, e))?);
    row(Op::ForwardInference.name(), "bound", record_us(ctx, rounds, calls, |e| inference_bound.record(e))?);
    row(Op::ForwardInference.name(), "prepared", record_us(ctx, rounds, calls, |e| inference.record(e, &buffers.forward_inference()))?);
    row(Op::ForwardInference.name(), "oneshot", record_us(ctx, rounds, calls, |e| buffers.encode(ctx, Op::ForwardInference, e))?);
    row(Op::Backward.name(), "bound", record_us(ctx, rounds, calls, |e| backward_bound.record(e))?);
    row(Op::Backward.name(), "prepared", record_us(ctx, rounds, calls, |e| backward.record(e, &buffers.backward()))?);
    row(Op::Backward.name(), "oneshot", record_us(ctx, rounds, calls, |e| buffers.encode(ctx, Op::Backward, e))?);
    let t = Instant::now();
    for step in 0..steps {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        train_bound.record_step(&mut encoder, step as u64)?;
        backward_bound.record(&mut encoder)?;
        ctx.queue().submit([encoder.finish()]);
    }
    wait(ctx)?;
    row("training step (forward + backward)", "steps", t.elapsed().as_secs_f64() * 1e6 / steps as f64);
    Ok(rows)
}

/// The host's costs ([`host_rows`]) on two shapes, printed.
fn host_table(ctx: &GpuContext, quick: bool) -> Result<Vec<HostRow>> {
    println!("\nhost cost per call, recorded into an encoder and finished (not submitted), median; training steps submitted back to back, one wait:");
    let mut host = Vec::new();
    for (dims, steps) in [(&[8usize, 64, 8, 8][..], 100), (&[32, 64, 56, 56][..], 100)] {
        host.extend(host_rows(ctx, dims, steps, if quick { 5 } else { 21 })?);
    }
    let mut empty: Vec<f64> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            drop(ctx.device().create_command_encoder(&Default::default()).finish());
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    empty.sort_by(f64::total_cmp);
    println!("an empty encoder, created and finished: {:.1} us", empty[empty.len() / 2]);
    println!("{:<36} {:<18} {:<9} {:>12}", "op", "shape", "path", "us per call");
    for h in &host {
        println!("{:<36} {:<18} {:<9} {:>12.1}", h.op, format!("{:?}", h.shape), h.path, h.us_per_call);
    }
    Ok(host)
}

/// Inference forward with `x` and `y` in separate buffers (read-only `x`)
/// against both as slices of one buffer (the aliased kernels, `x` read_write).
fn aliased_ms(ctx: &GpuContext, timer: &Timer, shape: &Shape, warmup: usize, reps: usize) -> Result<(f64, f64)> {
    let (n, c, align) = (shape.numel(), shape.channels(), ctx.slice_alignment());
    let options = Options { affine: false, ..Options::default() };
    let op = ctx.prepare_norm_inference(&wgpu_batchnorm::Norm::Batch(shape.clone()), &options)?;
    let (x, y) = (ctx.upload("x", &vec![1.0; n])?, ctx.storage("y", n)?);
    let (mean, var) = (ctx.upload("mean", &vec![0.0; c])?, ctx.upload("var", &vec![1.0; c])?);
    let bytes = (n as u64 * 4).next_multiple_of(align);
    let pool = ctx.upload("pool", &vec![1.0; 2 * bytes as usize / 4])?;
    let stats = |x, y| NormInferenceBuffers {
        x,
        y,
        gamma: None,
        beta: None,
        running_mean: mean.slice(..),
        running_var: var.slice(..),
        residual: None,
        workspace: None,
    };
    let separate = timer.median_ms(ctx, warmup, reps, |e| op.record(e, &stats(x.slice(..), y.slice(..))))?;
    let shared = timer.median_ms(ctx, warmup, reps, |e| op.record(e, &stats(pool.slice(..bytes), pool.slice(bytes..))))?;
    Ok((separate, shared))
}

/// Median milliseconds of a training step (forward and backward on host
/// arrays) of the single-device layer on `dims`, of `SyncBatchNorm` on one
/// rank, and of `SyncBatchNorm` on two ranks of one process (a thread and a
/// context each, half the batch each; both contexts on this adapter).
fn sync_step_ms(dims: &[usize], steps: usize) -> Result<(f64, f64, f64)> {
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let x = ArrayD::from_shape_fn(dims, |i| (i[1] as f32) + (i[0] * 7 + i[2] * 3) as f32 % 5.0);
    let c = dims[1];
    let ctx = Arc::new(GpuContext::new_blocking()?);
    let mut bn = BatchNorm::new(ctx.clone(), c, Options::default())?;
    let mut single = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let y = bn.forward_blocking(&x.view(), Layout::ChannelsFirst)?;
        bn.backward_blocking(&y.view())?;
        single.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let run = |ranks: usize| -> Result<f64> {
        let threads: Vec<_> = in_process(ranks)
            .into_iter()
            .enumerate()
            .map(|(r, rank)| {
                let n = dims[0] / ranks;
                let part = x.slice_axis(Axis(0), Slice::from(r * n..(r + 1) * n)).to_owned();
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let ctx = Arc::new(GpuContext::new_blocking()?);
                    let mut bn = SyncBatchNorm::new(ctx, rank, part.shape()[1], Options::default())?;
                    let mut times = Vec::new();
                    for _ in 0..steps {
                        let t = Instant::now();
                        let y = bn.forward_blocking(&part.view(), Layout::ChannelsFirst)?;
                        bn.backward_blocking(&y.view())?;
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(times)
                })
            })
            .collect();
        let mut slowest = vec![0.0f64; steps];
        for t in threads {
            let times = t.join().map_err(|_| wgpu_batchnorm::Error::Collective("a rank panicked".into()))??;
            for (s, t) in slowest.iter_mut().zip(times) {
                *s = s.max(t);
            }
        }
        Ok(median(slowest))
    };
    Ok((median(single), run(1)?, run(2)?))
}

/// The fused epilogues against batch norm alone, per op: the time, GB/s and
/// `of_floor` under docs/SPEC.md's traffic model with the epilogue's tensors
/// counted (a residual read; `z` read by both backward passes and `dresidual`
/// written), the ratio to batch norm alone, and batch norm with a separate
/// elementwise pass instead (forward: `act(y + residual)`; backward: the
/// masked `dz` from `z` and `dz`), estimated as batch norm alone plus one copy
/// and `r` copies per extra tensor read.
fn epilogue_table(ctx: &GpuContext, timer: &Timer, warmup: usize, reps: usize) -> Result<()> {
    println!(
        "\nfused epilogues: z = act(bn(x) + residual?) against batch norm alone (ratio) and against bn with a separate pass (+ one copy, + r per extra read):"
    );
    println!(
        "{:<18} {:<15} {:<18} {:<16} {:>9} {:>6} {:>8} {:>7} {:>8} {:>12}",
        "op", "layout", "shape", "epilogue", "ms", "GB/s", "of_floor", "ratio", "bn+pass", "fused/bn+pass"
    );
    let relu = Activation::Relu;
    let variants = [
        ("none", Epilogue::default()),
        ("relu", Epilogue::activation(relu)),
        ("relu + residual", Epilogue { activation: relu, residual: true }),
    ];
    for (dims, layout) in [
        (&[32usize, 64, 56, 56][..], Layout::ChannelsFirst),
        (&[32, 56, 56, 64], Layout::ChannelsLast),
        (&[8, 512, 7, 7], Layout::ChannelsFirst),
    ] {
        let shape = Shape::new(dims, layout)?;
        let buffers = OpBuffers::new(ctx, &shape, Dtype::F32)?;
        let norm = buffers.op();
        let (residual, dresidual) = (ctx.upload("residual", &vec![0.5; shape.numel()])?, ctx.storage("dresidual", shape.numel())?);
        let (copy, copy_ms) = CopyBench::fastest(ctx, timer, shape.numel(), Dtype::F32, warmup, reps)?;
        let read_ms = timer.median_ms(ctx, warmup, reps, |e| {
            copy.encode_read_only(ctx, e);
            Ok(())
        })?;
        let r = read_ms / copy_ms;
        println!(
            "{:<18} {:<15} {:<18} {:<16} {copy_ms:>9.3}   read x alone r = {r:.2} copies",
            "copy (roofline)",
            layout_name(layout),
            format!("{dims:?}"),
            ""
        );
        for op in Op::ALL {
            let mut alone = None;
            for (name, epilogue) in variants {
                let options = Options { epilogue, ..Options::default() };
                let res = epilogue.residual.then(|| residual.slice(..));
                let ms = timer.median_ms(ctx, warmup, reps, |e| match op {
                    Op::ForwardTrain => {
                        ctx.encode_norm(e, &norm, &options, &NormForwardBuffers { residual: res, ..buffers.forward_train() })
                    }
                    Op::ForwardInference => ctx.encode_norm_inference(
                        e,
                        &norm,
                        &options,
                        &NormInferenceBuffers { residual: res, ..buffers.forward_inference() },
                    ),
                    Op::Backward => {
                        let z = epilogue.needs_z().then(|| buffers.forward_train().y);
                        let dr = epilogue.residual.then(|| dresidual.slice(..));
                        ctx.encode_norm_backward(e, &norm, &options, &NormBackwardBuffers { z, dresidual: dr, ..buffers.backward() })
                    }
                })?;
                let (mut reads, mut writes) = op.passes(ctx, &shape)?;
                match op {
                    Op::Backward => {
                        reads += 2 * u32::from(epilogue.needs_z());
                        writes += u32::from(epilogue.residual);
                    }
                    _ => reads += u32::from(epilogue.residual),
                }
                let gbps = (u64::from(reads + writes) * shape.bytes(Dtype::F32)) as f64 / ms / 1e6;
                let floor = f64::from(reads) * r + f64::from(writes) * (1.0 - r);
                let base = *alone.get_or_insert(ms);
                // The separate pass reads x-sized tensors and writes one: y and the
                // residual (forward), or dz and z (backward, which needs it only to mask).
                let extra_reads = match op {
                    Op::Backward => u32::from(epilogue.needs_z()),
                    _ => u32::from(epilogue.residual),
                };
                // Plain batch norm has no separate pass to compare with.
                let separate = (epilogue != Epilogue::default()).then(|| base + copy_ms * (1.0 + r * f64::from(extra_reads)));
                println!(
                    "{:<18} {:<15} {:<18} {:<16} {:>9.3} {:>6.1} {:>8.3} {:>7.3} {:>8} {:>12}",
                    op.name(),
                    layout_name(layout),
                    format!("{dims:?}"),
                    name,
                    ms,
                    gbps,
                    floor / (ms / copy_ms),
                    ms / base,
                    separate.map_or("-".to_string(), |s| format!("{s:.3}")),
                    separate.map_or("-".to_string(), |s| format!("{:.3}", ms / s))
                );
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let (warmup, reps) = if quick { (1, 5) } else { (3, 21) };

    let ctx = GpuContext::new_blocking()?;
    let info = ctx.adapter_info().clone();
    let timer = Timer::new(&ctx);
    let backend = format!("{:?}", info.backend);
    println!("adapter: {} | backend: {backend} | timer: {} | median of {reps} after {warmup} warm-up", info.name, timer.kind().name());
    if args.iter().any(|a| a == "--epilogue") {
        return epilogue_table(&ctx, &timer, warmup, reps);
    }
    if args.iter().any(|a| a == "--dtypes") {
        let rows = dtype_table(&ctx, warmup, reps)?;
        return write_json(json.as_deref(), &info, &timer, &backend, &rows, &[]);
    }

    if args.iter().any(|a| a == "--host") {
        let host = host_table(&ctx, quick)?;
        return write_json(json.as_deref(), &info, &timer, &backend, &[], &host);
    }

    let mut rows = Vec::new();
    print_header();
    let norms_only = args.iter().any(|a| a == "--norms");
    for (dims, layout) in SHAPES.into_iter().filter(|_| !norms_only) {
        let shape = Shape::new(dims, layout)?;
        let buffers = OpBuffers::new(&ctx, &shape, Dtype::F32)?;
        let roof = Roofline::measure(&ctx, &timer, shape.numel(), Dtype::F32, warmup, reps)?;
        let Roofline { copy, copy_ms, buffer_copy_ms, r, gbps: roofline } = &roof;
        println!(
            "{:<22} {:<15} {:<18} {:>9.3} {:>6.1} {:>6} {:>8} {:>7} {:>6} {:>8} {:>8}",
            "copy (roofline)",
            layout_name(layout),
            format!("{dims:?}"),
            copy_ms,
            roofline,
            "",
            "",
            "",
            "",
            "",
            format!(
                "{}; read x alone r = {r:.2} copies; b2b {:.1} GB/s",
                copy.describe(),
                copy.bytes_moved() as f64 / buffer_copy_ms / 1e6
            )
        );
        for op in Op::ALL {
            let ms = timer.median_ms(&ctx, warmup, reps, |e| buffers.encode(&ctx, op, e))?;
            let (reads, writes) = op.passes(&ctx, &shape)?;
            let cpu_ms = if quick && shape.numel() > 1 << 22 { None } else { Some(cpu_reference_ms(op, &shape, &buffers.host_x)?) };
            let tensors = (f64::from(reads), f64::from(writes));
            let row = Row::new(op.name(), layout_name(layout), dims, ms, shape.bytes(Dtype::F32), tensors, &roof, cpu_ms);
            print_row(&row);
            rows.push(row);
        }
    }

    rows.extend(norm_rows(&ctx, &timer, &NORM_SHAPES, Dtype::F32, warmup, reps)?);
    if norms_only {
        return write_json(json.as_deref(), &info, &timer, &backend, &rows, &[]);
    }

    let host = host_table(&ctx, quick)?;

    let main_shape = Shape::new(&[32, 64, 56, 56], Layout::ChannelsFirst)?;
    let (separate, shared) = aliased_ms(&ctx, &timer, &main_shape, warmup, reps)?;
    println!(
        "\ninference forward {:?}: x and y in separate buffers {separate:.3} ms; slices of one buffer (x read_write) {shared:.3} ms ({:+.1} %)",
        main_shape.dims(),
        (shared / separate - 1.0) * 100.0
    );

    println!("\nsynchronized batch norm: a training step (forward and backward on host arrays, uploads and readbacks included), ms:");
    println!("{:>18} {:>14} {:>14} {:>8} {:>16} {:>8}", "shape", "single device", "sync, 1 rank", "ratio", "sync, 2 ranks", "ratio");
    for dims in [&[8usize, 64, 8, 8][..], &[16, 64, 28, 28]] {
        let (single, one, two) = sync_step_ms(dims, if quick { 3 } else { 9 })?;
        println!("{:>18} {single:>14.2} {one:>14.2} {:>8.2} {two:>16.2} {:>8.2}", format!("{dims:?}"), one / single, two / single);
    }

    println!("\ntraining forward, one pass against two passes (workgroups of the tuning, channels of m values), ms:");
    println!("{:>18} {:>8} {:>10} {:>10} {:>8}", "shape", "m", "two-pass", "one-pass", "ratio");
    let fused = GpuContext::new_blocking()?.with_tuning(Tuning { fuse_small_channels: true, ..ctx.tuning() });
    let unfused = GpuContext::new_blocking()?.with_tuning(Tuning { fuse_small_channels: false, one_dispatch: false, ..ctx.tuning() });
    for dims in [&[8usize, 512, 7, 7][..], &[8, 256, 14, 14], &[256, 1024], &[16, 64, 16, 16], &[4, 64, 32, 32]] {
        let shape = Shape::new(dims, Layout::ChannelsFirst)?;
        if !one_pass(&fused, &shape)? {
            println!("{:>18} {:>8} one-pass not possible (channels do not fit one workgroup)", format!("{dims:?}"), shape.per_channel());
            continue;
        }
        let time = |c: &GpuContext| -> Result<f64> {
            let b = OpBuffers::new(c, &shape, Dtype::F32)?;
            Timer::new(c).median_ms(c, warmup, reps, |e| b.encode(c, Op::ForwardTrain, e))
        };
        let (two, one) = (time(&unfused)?, time(&fused)?);
        println!("{:>18} {:>8} {two:>10.3} {one:>10.3} {:>8.2}", format!("{dims:?}"), shape.per_channel(), one / two);
    }

    println!("\nshort channels: training forward and backward in passes against one dispatch each (Tuning::one_dispatch), ms:");
    println!("{:>18} {:>14} {:>18} {:>10} {:>13} {:>8}", "shape", "layout", "op", "passes", "one dispatch", "ratio");
    let lanes = GpuContext::new_blocking()?.with_tuning(Tuning { fuse_small_channels: false, one_dispatch: true, ..ctx.tuning() });
    for &(dims, layout) in &[SHAPES[2], SHAPES[3], SHAPES[4]] {
        let shape = Shape::new(dims, layout)?;
        if !one_dispatch(&lanes, &shape)? {
            println!("{:>18} {:>14} not in one dispatch under this tuning", format!("{dims:?}"), format!("{layout:?}"));
            continue;
        }
        let (passes, one) = (OpBuffers::new(&unfused, &shape, Dtype::F32)?, OpBuffers::new(&lanes, &shape, Dtype::F32)?);
        for op in [Op::ForwardTrain, Op::Backward] {
            let two = Timer::new(&unfused).median_ms(&unfused, warmup, reps, |e| passes.encode(&unfused, op, e))?;
            let single = Timer::new(&lanes).median_ms(&lanes, warmup, reps, |e| one.encode(&lanes, op, e))?;
            println!(
                "{:>18} {:>14} {:>18} {two:>10.3} {single:>13.3} {:>8.2}",
                format!("{dims:?}"),
                format!("{layout:?}"),
                op.name(),
                single / two
            );
        }
    }

    println!("\ntraining forward, channels-first (N, 64, 32, 32), scaling:");
    println!("{:>10} {:>10} {:>12} {:>8} {:>8}", "elements", "ms", "ns/element", "GB/s", "fraction");
    for log2 in 16..=26u32 {
        let n = 1usize << (log2 - 16);
        let shape = Shape::new(&[n, 64, 32, 32], Layout::ChannelsFirst)?;
        let buffers = match OpBuffers::new(&ctx, &shape, Dtype::F32) {
            Ok(b) => b,
            Err(e) => {
                println!("{:>10} not run: {e}", format!("2^{log2}"));
                continue;
            }
        };
        let (copy, copy_ms) = CopyBench::fastest(&ctx, &timer, shape.numel(), Dtype::F32, warmup, reps)?;
        let ms = timer.median_ms(&ctx, warmup, reps, |e| buffers.encode(&ctx, Op::ForwardTrain, e))?;
        let (reads, writes) = Op::ForwardTrain.passes(&ctx, &shape)?;
        let gbps = (u64::from(reads + writes) * shape.bytes(Dtype::F32)) as f64 / ms / 1e6;
        let roofline = copy.bytes_moved() as f64 / copy_ms / 1e6;
        println!(
            "{:>10} {:>10.3} {:>12.4} {:>8.1} {:>8.3}",
            format!("2^{log2}"),
            ms,
            ms * 1e6 / shape.numel() as f64,
            gbps,
            gbps / roofline
        );
    }

    epilogue_table(&ctx, &timer, warmup, reps)?;
    rows.extend(dtype_table(&ctx, warmup, reps)?);

    write_json(json.as_deref(), &info, &timer, &backend, &rows, &host)
}

/// How `ctx` stores `dtype`, for tables.
fn dtype_name(ctx: &GpuContext, dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "f32",
        Dtype::F16 if ctx.shader_f16() => "f16 (shader-f16)",
        Dtype::F16 => "f16 (words)",
        Dtype::Bf16 => "bf16 (words)",
    }
}

/// Each op in f32, f16 (through `SHADER_F16` where the adapter has it, and
/// through 32-bit words) and bf16, with bytes and the roofline copy at the
/// dtype's size: `of_floor` per dtype, and the time against f32's.
fn dtype_table(ctx: &GpuContext, warmup: usize, reps: usize) -> Result<Vec<Row>> {
    println!(
        "
half precision: bytes and the roofline copy at the dtype's size; `x f32` = time / f32 time of the same op"
    );
    let words = ctx
        .shader_f16()
        .then(|| pollster::block_on(GpuContext::with_options(&ContextOptions { shader_f16: false, ..ContextOptions::from_env() })))
        .transpose()?;
    let mut runs: Vec<(&GpuContext, Dtype)> = vec![(ctx, Dtype::F32), (ctx, Dtype::F16)];
    runs.extend(words.as_ref().map(|w| (w, Dtype::F16)));
    runs.push((ctx, Dtype::Bf16));
    let mut rows = Vec::new();
    let mut f32_ms = std::collections::HashMap::new();
    print_header();
    for &(dims, layout) in &[SHAPES[0], SHAPES[1], SHAPES[3]] {
        let shape = Shape::new(dims, layout)?;
        for &(c, dtype) in &runs {
            let buffers = OpBuffers::new(c, &shape, dtype)?;
            let timer = Timer::new(c);
            let roof = Roofline::measure(c, &timer, shape.numel(), dtype, warmup, reps)?;
            for op in Op::ALL {
                let ms = timer.median_ms(c, warmup, reps, |e| buffers.encode(c, op, e))?;
                let (reads, writes) = op.passes(c, &shape)?;
                let base = *f32_ms.entry((op.name(), dims)).or_insert(ms);
                let op = leak(format!("{} {}", op.name(), dtype_name(c, dtype)));
                let tensors = (f64::from(reads), f64::from(writes));
                let row = Row::new(op, layout_name(layout), dims, ms, dtype.tensor_bytes(shape.numel()), tensors, &roof, None);
                println!("{}   x f32 {:.2}", format_row(&row), ms / base);
                rows.push(row);
            }
        }
    }
    let norm_shapes = [NORM_SHAPES[0], NORM_SHAPES[4]];
    for &(c, dtype) in &runs {
        rows.extend(norm_rows(c, &Timer::new(c), &norm_shapes, dtype, warmup, reps)?);
    }
    Ok(rows)
}

/// Writes the kernel and host rows as JSON to `path`, where one is given.
fn write_json(path: Option<&str>, info: &wgpu::AdapterInfo, timer: &Timer, backend: &str, rows: &[Row], host: &[HostRow]) -> Result<()> {
    if let Some(path) = path {
        let adapter = info.name.replace('"', "'");
        let mut lines = Vec::new();
        for r in rows {
            let mut line = String::new();
            let _ = write!(
                line,
                "  {{\"kind\": \"kernel\", \"op\": \"{}\", \"layout\": \"{}\", \"shape\": {:?}, \"ms\": {:.6}, \"gbps\": {:.3}, \"roofline_gbps\": {:.3}, \"fraction\": {:.4}, \"copy_multiple\": {:.4}, \"floor_copies\": {:.4}, \"of_floor\": {:.4}, \"cpu_ms\": {}, \"timer\": \"{}\", \"adapter\": \"{adapter}\", \"backend\": \"{backend}\"}}",
                r.op,
                r.layout,
                r.shape,
                r.ms,
                r.gbps,
                r.roofline_gbps,
                r.fraction,
                r.copy_multiple,
                r.floor_copies,
                r.floor_copies / r.copy_multiple,
                r.cpu_ms.map_or("null".to_string(), |c| format!("{c:.3}")),
                timer.kind().name(),
            );
            lines.push(line);
        }
        for h in host {
            lines.push(format!(
                "  {{\"kind\": \"host\", \"op\": \"{}\", \"shape\": {:?}, \"path\": \"{}\", \"us_per_call\": {:.3}, \"adapter\": \"{adapter}\", \"backend\": \"{backend}\"}}",
                h.op, h.shape, h.path, h.us_per_call
            ));
        }
        let out = format!("[\n{}\n]\n", lines.join(",\n"));
        std::fs::write(path, out).map_err(|e| wgpu_batchnorm::Error::Readback(format!("writing {path}: {e}")))?;
        println!("\nwrote {} rows to {path}", lines.len());
    }
    Ok(())
}
