//! Every op against the adapter's own memory bandwidth (SPEC.md's performance model).
//!
//! `cargo run --release --example bench [-- --quick] [--json FILE]`
//!
//! For each op, layout and shape: the median kernel time, the bytes SPEC.md's
//! two-dispatch model counts, GB/s, the fraction of the roofline (the faster of
//! two plain WGSL vec4 copies over the same bytes, one item per invocation in
//! workgroups of 256 and contiguous spans with the context's tuning, measured
//! here) and the time as a multiple of
//! one copy of `x` to `y`; then the CPU reference's time on the same input, and
//! a sweep of training forward over sizes. The roofline row also gives the
//! time of the copy's loads alone (`read x alone`, in copies): a pass that
//! reads `x` once costs at least that much.

use std::fmt::Write as _;
use std::time::Instant;

use wgpu_batchnorm::bench::{CopyBench, Op, OpBuffers, Timer, SHAPES};
use wgpu_batchnorm::{reference, GpuContext, Layout, Shape};

struct Row {
    op: &'static str,
    layout: &'static str,
    shape: Vec<usize>,
    ms: f64,
    gbps: f64,
    roofline_gbps: f64,
    fraction: f64,
    copy_multiple: f64,
    cpu_ms: Option<f64>,
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::ChannelsFirst => "channels-first",
        Layout::ChannelsLast => "channels-last",
    }
}

fn cpu_reference_ms(op: Op, shape: &Shape, x: &ndarray::ArrayD<f32>) -> wgpu_batchnorm::Result<f64> {
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

fn main() -> wgpu_batchnorm::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let (warmup, reps) = if quick { (1, 5) } else { (3, 21) };

    let ctx = GpuContext::new_blocking()?;
    let info = ctx.adapter_info().clone();
    let timer = Timer::new(&ctx);
    let backend = format!("{:?}", info.backend);
    println!("adapter: {} | backend: {backend} | timer: {} | median of {reps} after {warmup} warm-up", info.name, timer.kind().name());

    let mut rows = Vec::new();
    println!(
        "\n{:<18} {:<15} {:<18} {:>9} {:>8} {:>9} {:>8} {:>7} {:>9}",
        "op", "layout", "shape", "ms", "GB/s", "roof GB/s", "fraction", "copies", "cpu ms"
    );
    for (dims, layout) in SHAPES {
        let shape = Shape::new(dims, layout)?;
        let buffers = OpBuffers::new(&ctx, &shape)?;
        let (copy, copy_ms) = CopyBench::fastest(&ctx, &timer, shape.numel(), warmup, reps)?;
        let buffer_copy_ms = timer.median_ms(&ctx, warmup, reps, |e| {
            copy.encode_buffer_copy(e);
            Ok(())
        })?;
        let read_ms = timer.median_ms(&ctx, warmup, reps, |e| {
            copy.encode_read_only(&ctx, e);
            Ok(())
        })?;
        let roofline = copy.bytes_moved() as f64 / copy_ms / 1e6;
        println!(
            "{:<18} {:<15} {:<18} {:>9.3} {:>8.1} {:>9} {:>8} {:>7} {:>9}",
            "copy (roofline)",
            layout_name(layout),
            format!("{dims:?}"),
            copy_ms,
            roofline,
            "",
            "",
            "",
            format!(
                "{}; read x alone {:.2} copies; b2b {:.1} GB/s",
                copy.describe(),
                read_ms / copy_ms,
                copy.bytes_moved() as f64 / buffer_copy_ms / 1e6
            )
        );
        for op in Op::ALL {
            let ms = timer.median_ms(&ctx, warmup, reps, |e| buffers.encode(&ctx, op, e))?;
            let gbps = op.bytes_moved(shape.numel()) as f64 / ms / 1e6;
            let cpu_ms = if quick && shape.numel() > 1 << 22 { None } else { Some(cpu_reference_ms(op, &shape, &buffers.host_x)?) };
            let row = Row {
                op: op.name(),
                layout: layout_name(layout),
                shape: dims.to_vec(),
                ms,
                gbps,
                roofline_gbps: roofline,
                fraction: gbps / roofline,
                copy_multiple: ms / copy_ms,
                cpu_ms,
            };
            println!(
                "{:<18} {:<15} {:<18} {:>9.3} {:>8.1} {:>9.1} {:>8.3} {:>7.2} {:>9}",
                row.op,
                row.layout,
                format!("{:?}", row.shape),
                row.ms,
                row.gbps,
                row.roofline_gbps,
                row.fraction,
                row.copy_multiple,
                row.cpu_ms.map_or("-".to_string(), |c| format!("{c:.1}"))
            );
            rows.push(row);
        }
    }

    println!("\ntraining forward, channels-first (N, 64, 32, 32), scaling:");
    println!("{:>10} {:>10} {:>12} {:>8} {:>8}", "elements", "ms", "ns/element", "GB/s", "fraction");
    for log2 in 16..=26u32 {
        let n = 1usize << (log2 - 16);
        let shape = Shape::new(&[n, 64, 32, 32], Layout::ChannelsFirst)?;
        let buffers = match OpBuffers::new(&ctx, &shape) {
            Ok(b) => b,
            Err(e) => {
                println!("{:>10} not run: {e}", format!("2^{log2}"));
                continue;
            }
        };
        let (copy, copy_ms) = CopyBench::fastest(&ctx, &timer, shape.numel(), warmup, reps)?;
        let ms = timer.median_ms(&ctx, warmup, reps, |e| buffers.encode(&ctx, Op::ForwardTrain, e))?;
        let gbps = Op::ForwardTrain.bytes_moved(shape.numel()) as f64 / ms / 1e6;
        let roofline = copy.bytes_moved() as f64 / copy_ms / 1e6;
        println!(
            "{:>10} {:>10.3} {:>12.4} {:>8.1} {:>8.3}",
            format!("2^{log2}"),
            ms,
            ms * 1e6 / shape.numel() as f64,
            gbps,
            gbps / roofline
        );
        rows.push(Row {
            op: "training forward (sweep)",
            layout: "channels-first",
            shape: shape.dims().to_vec(),
            ms,
            gbps,
            roofline_gbps: roofline,
            fraction: gbps / roofline,
            copy_multiple: ms / copy_ms,
            cpu_ms: None,
        });
    }

    if let Some(path) = json {
        let mut out = String::from("[\n");
        for (i, r) in rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {{\"op\": \"{}\", \"layout\": \"{}\", \"shape\": {:?}, \"ms\": {:.6}, \"gbps\": {:.3}, \"roofline_gbps\": {:.3}, \"fraction\": {:.4}, \"copy_multiple\": {:.4}, \"cpu_ms\": {}, \"timer\": \"{}\", \"adapter\": \"{}\", \"backend\": \"{}\"}}{}",
                r.op,
                r.layout,
                r.shape,
                r.ms,
                r.gbps,
                r.roofline_gbps,
                r.fraction,
                r.copy_multiple,
                r.cpu_ms.map_or("null".to_string(), |c| format!("{c:.3}")),
                timer.kind().name(),
                info.name.replace('"', "'"),
                backend,
                if i + 1 < rows.len() { "," } else { "" }
            );
        }
        out.push_str("]\n");
        std::fs::write(&path, out).map_err(|e| wgpu_batchnorm::Error::Readback(format!("writing {path}: {e}")))?;
        println!("\nwrote {} rows to {path}", rows.len());
    }
    Ok(())
}
