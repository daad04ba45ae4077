//! The benchmark's roofline kernels do what they are timed as doing: the copy
//! writes every element, in each way of dealing the work out, and the
//! read-only pass writes none.

mod common;

use common::ctx;
use wgpu_batchnorm::bench::{CopyBench, CopyGrid};
use wgpu_batchnorm::GpuContext;

fn submit(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
}

fn output(ctx: &GpuContext, copy: &CopyBench, numel: usize) -> Vec<f32> {
    let (_, y) = copy.buffers();
    pollster::block_on(ctx.download(&[(y, numel)])).unwrap().pop().unwrap()
}

#[test]
fn the_roofline_copy_writes_every_element_and_the_read_only_pass_none() {
    let ctx = ctx();
    // Odd sizes take the scalar kernel, multiples of four the vec4 one; three
    // spans of two lanes leave uneven parts.
    for numel in [100_003, 1 << 18] {
        for (workgroup_size, grid) in [(256, CopyGrid::OnePerInvocation), (8, CopyGrid::Spans(64)), (2, CopyGrid::Spans(3))] {
            let copy = CopyBench::new(&ctx, numel, workgroup_size, grid).unwrap();
            submit(&ctx, |e| copy.encode_read_only(&ctx, e));
            let untouched = output(&ctx, &copy, numel);
            assert!(untouched.iter().all(|&v| v == 0.0), "{numel} {grid:?}: the read-only pass wrote to y");
            submit(&ctx, |e| copy.encode_kernel(&ctx, e));
            let copied = output(&ctx, &copy, numel);
            let missed = copied.iter().filter(|&&v| v != 1.0).count();
            assert_eq!(missed, 0, "{numel} elements, workgroups of {workgroup_size}, {grid:?}: {missed} not copied");
        }
    }
}
