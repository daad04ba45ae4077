//! Criterion benches of every op on the shapes of `examples/bench.rs`, so that
//! regressions show in criterion's reports (`cargo bench`). Each iteration is one
//! submit of the op over buffers already on the GPU and a completed poll, so it
//! measures wall time; `examples/bench.rs` reports GPU time and the roofline.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_batchnorm::bench::{CopyBench, CopyGrid, Op, OpBuffers, SHAPES};
use wgpu_batchnorm::{Dtype, GpuContext, Shape};

fn submit_and_wait(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
    ctx.device().poll(wgpu::PollType::wait_indefinitely()).expect("the device was lost");
}

fn ops(c: &mut Criterion) {
    let ctx = GpuContext::new_blocking().expect("the benches need an adapter");
    eprintln!("benches on {}", ctx.describe());
    for (dims, layout) in SHAPES {
        let shape = Shape::new(dims, layout).expect("a valid shape");
        let buffers = OpBuffers::new(&ctx, &shape, Dtype::F32).expect("the shape fits the device");
        let tuning = ctx.tuning();
        let copy = CopyBench::new(&ctx, shape.numel(), Dtype::F32, tuning.workgroup_size, CopyGrid::Spans(tuning.stream_groups))
            .expect("the copy fits the device");
        let mut group = c.benchmark_group(format!("{dims:?} {layout:?}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(copy.bytes_moved()));
        group.bench_function("copy (roofline)", |b| b.iter(|| submit_and_wait(&ctx, |e| copy.encode_kernel(&ctx, e))));
        for op in Op::ALL {
            let (reads, writes) = op.passes(&ctx, &shape).expect("the shape fits the device");
            group.throughput(Throughput::Bytes(u64::from(reads + writes) * shape.bytes(Dtype::F32)));
            group.bench_with_input(BenchmarkId::from_parameter(op.name()), &op, |b, &op| {
                b.iter(|| submit_and_wait(&ctx, |e| buffers.encode(&ctx, op, e).expect("valid buffers")))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
