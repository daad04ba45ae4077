//! Measuring the kernels against the adapter's own memory bandwidth
//! (docs/SPEC.md's performance model), for `examples/bench.rs` and `benches/`:
//! built with the `bench` feature, not part of the library's API.
//!
//! The roofline is a plain WGSL copy (`shaders/copy.wgsl`, vec4 items,
//! read + write counted) over the same number of bytes, measured in the same
//! process. GPU timestamp queries time the work where the device has them
//! (`TIMESTAMP_QUERY_INSIDE_ENCODERS`); otherwise wall clock around submit and
//! a completed poll.

use std::sync::Arc;
use std::time::Instant;

use crate::context::{Binding, GpuContext};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::norms::batch_norm::forward_train::RunningBuffers;
use crate::norms::{NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers};
use crate::op::{Norm, NormInferenceBuffers};
use crate::ops::{BackwardStats, NormStats};
use crate::options::{Dtype, Options};
use crate::plan::{check_workgroup_size, Geometry, Grid, MAX_LOOP_ITERATIONS, MAX_WORKGROUP_SIZE};
use crate::shaders::{Kernel, Storage, Variant, Width};
use crate::shape::Shape;

/// The shapes the benchmark and the criterion benches measure: a ResNet block
/// in both layouts, a BatchNorm1d layer, late ResNet (small spatial) in both
/// layouts, and a three-channel image in both layouts (the check's too).
pub const SHAPES: [(&[usize], Layout); 7] = crate::check::BATCH_SHAPES;

/// The ops the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Training forward with affine parameters and running statistics.
    ForwardTrain,
    /// Inference forward with running statistics.
    ForwardInference,
    /// Training-mode backward with parameter gradients.
    Backward,
}

impl Op {
    /// Every op.
    pub const ALL: [Op; 3] = [Op::ForwardTrain, Op::ForwardInference, Op::Backward];

    /// A short name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Op::ForwardTrain => "training forward",
            Op::ForwardInference => "inference forward",
            Op::Backward => "training backward",
        }
    }

    /// Reads and writes of `x`-sized tensors the kernel path `ctx` plans for
    /// `shape` makes (docs/SPEC.md, Memory traffic): training forward 2 + 1, or
    /// 1 + 1 where the one-pass kernel runs; inference 1 + 1; backward 4 + 1.
    pub fn passes(self, ctx: &GpuContext, shape: &Shape) -> Result<(u32, u32)> {
        Ok(match self {
            Op::ForwardTrain if one_pass(ctx, shape)? => (1, 1),
            Op::ForwardTrain => (2, 1),
            Op::ForwardInference => (1, 1),
            Op::Backward => (4, 1),
        })
    }
}

/// Whether `ctx` runs the training forward on `shape` in one pass.
pub fn one_pass(ctx: &GpuContext, shape: &Shape) -> Result<bool> {
    let plan = ctx.plan(shape, Dtype::F32)?;
    Ok(plan.full.fused_grid.is_some() && plan.windows.len() == 1)
}

/// Whether `ctx` runs batch norm's training forward and backward on `shape`
/// in one dispatch each ([`Tuning::one_dispatch`](crate::Tuning::one_dispatch)).
pub fn one_dispatch(ctx: &GpuContext, shape: &Shape) -> Result<bool> {
    let plan = ctx.plan(shape, Dtype::F32)?;
    Ok(plan.full.fused_grid.is_none() && plan.full.lanes_grid.is_some() && plan.windows.len() == 1)
}

/// How the benchmark timed the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// GPU timestamps written before and after the work in the encoder.
    Timestamp,
    /// Host clock around submit and a completed poll.
    Wall,
}

impl TimerKind {
    /// `"timestamp"` or `"wall"`.
    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Timestamp => "timestamp",
            TimerKind::Wall => "wall",
        }
    }
}

/// Timestamp queries and the buffers their results travel through.
#[derive(Debug)]
struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    period_ns: f64,
}

/// Times recorded GPU work; see the module docs for the two timers.
#[derive(Debug)]
pub struct Timer {
    queries: Option<Queries>,
}

impl Timer {
    /// A timer for `ctx`: timestamps when the device has them, else wall clock.
    pub fn new(ctx: &GpuContext) -> Self {
        let needed = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let queries = ctx.device().features().contains(needed).then(|| {
            let device = ctx.device();
            let buffer = |usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-batchnorm timestamps"),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            Queries {
                set: device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count: 2 }),
                resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                period_ns: f64::from(ctx.queue().get_timestamp_period()),
            }
        });
        Self { queries }
    }

    /// Which clock this timer uses.
    pub fn kind(&self) -> TimerKind {
        if self.queries.is_some() {
            TimerKind::Timestamp
        } else {
            TimerKind::Wall
        }
    }

    /// Milliseconds of one submission of what `record` records.
    pub fn time_once(&self, ctx: &GpuContext, record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>) -> Result<f64> {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        if let Some(q) = &self.queries {
            encoder.write_timestamp(&q.set, 0);
        }
        record(&mut encoder)?;
        if let Some(q) = &self.queries {
            encoder.write_timestamp(&q.set, 1);
            encoder.resolve_query_set(&q.set, 0..2, &q.resolve, 0);
            encoder.copy_buffer_to_buffer(&q.resolve, 0, &q.read, 0, 16);
        }
        let start = Instant::now();
        ctx.queue().submit([encoder.finish()]);
        wait(ctx)?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let Some(q) = &self.queries else {
            return Ok(wall_ms);
        };
        q.read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        wait(ctx)?;
        let ticks: [u64; 2] = {
            let view = q.read.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::pod_read_unaligned(&view[..16])
        };
        q.read.unmap();
        Ok(ticks[1].saturating_sub(ticks[0]) as f64 * q.period_ns / 1e6)
    }

    /// Median milliseconds over `reps` submissions, after `warmup` untimed ones.
    pub fn median_ms(
        &self,
        ctx: &GpuContext,
        warmup: usize,
        reps: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        for _ in 0..warmup {
            self.time_once(ctx, &mut record)?;
        }
        let mut times = (0..reps.max(1)).map(|_| self.time_once(ctx, &mut record)).collect::<Result<Vec<f64>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

fn wait(ctx: &GpuContext) -> Result<()> {
    ctx.device().poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| Error::DeviceLost(e.to_string()))
}

/// How the copy kernel deals a window out to workgroups (`shaders/copy.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyGrid {
    /// One item per invocation, as far as the grid limit allows: the usual GPU copy.
    OnePerInvocation,
    /// This many workgroups, each copying one contiguous span (at least as many
    /// as the loop bound needs): what CPU adapters run fastest.
    Spans(u32),
}

/// A copy of `numel` f32s between two buffers: the plain WGSL kernel and `copy_buffer_to_buffer`.
///
/// The kernel copies tensors larger than one storage binding window by window.
#[derive(Debug)]
pub struct CopyBench {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    variant: Variant,
    /// The copy kernel's pipeline and its read-only twin's.
    copy: Arc<wgpu::ComputePipeline>,
    read_only: Arc<wgpu::ComputePipeline>,
    grid: CopyGrid,
    /// (uniform, byte offset, bytes, grid) of each window.
    windows: Vec<(wgpu::Buffer, u64, u64, Grid)>,
    numel: usize,
    dtype: Dtype,
}

impl CopyBench {
    /// Buffers for copying `numel` values of `dtype` (stored as the ops store
    /// them) with workgroups of `workgroup_size` invocations (a power of two
    /// from 1 to 256) dealt out as `grid` says.
    pub fn new(ctx: &GpuContext, numel: usize, dtype: Dtype, workgroup_size: u32, grid: CopyGrid) -> Result<Self> {
        check_workgroup_size(workgroup_size)?;
        let width = if numel.is_multiple_of(4) { Width::Vec4 } else { Width::Scalar };
        let item_bytes = u64::from(width.lanes()) * dtype.size();
        let limits = ctx.device().limits();
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment).max(item_bytes);
        let window_bytes = limits.max_storage_buffer_binding_size / alignment * alignment;
        let total = dtype.tensor_bytes(numel);
        let max_dim = u64::from(ctx.max_groups_per_dim());
        let mut windows = Vec::new();
        let mut offset = 0;
        while offset < total {
            let bytes = window_bytes.min(total - offset);
            let numel_v = bytes / item_bytes;
            let geometry = Geometry { numel_v: u32::try_from(numel_v).map_err(|_| too_large(numel))?, ..Geometry::default() };
            let wg = u64::from(workgroup_size);
            let one_per_invocation = numel_v.div_ceil(wg);
            let fewest = numel_v.div_ceil(wg * MAX_LOOP_ITERATIONS);
            if fewest > max_dim {
                return Err(too_large(numel));
            }
            let wanted = match grid {
                CopyGrid::OnePerInvocation => one_per_invocation,
                CopyGrid::Spans(n) => u64::from(n).min(one_per_invocation),
            };
            let groups = wanted.max(fewest).clamp(1, max_dim) as u32;
            windows.push((ctx.uniform(&geometry), offset, bytes, Grid { x: groups, y: 1 }));
            offset += bytes;
        }
        let variant = Variant { storage: Storage::of(dtype, ctx.shader_f16()), ..Variant::plain(width, workgroup_size) };
        Ok(Self {
            x: upload_as(ctx, "copy x", dtype, &vec![1.0; numel])?,
            y: ctx.tensor_storage("copy y", dtype, numel)?,
            variant,
            copy: ctx.pipeline(Kernel::Copy, variant)?,
            read_only: ctx.pipeline(Kernel::ReadOnly, variant)?,
            grid,
            windows,
            numel,
            dtype,
        })
    }

    /// The roofline for `numel` values of `dtype`, and its median time in ms: the fastest of
    /// the one-item-per-invocation copy in workgroups of 256 and the span copy
    /// with the context's tuning (its workgroup size and streaming workgroups).
    pub fn fastest(ctx: &GpuContext, timer: &Timer, numel: usize, dtype: Dtype, warmup: usize, reps: usize) -> Result<(Self, f64)> {
        let tuning = ctx.tuning();
        let mut best: Option<(Self, f64)> = None;
        for (workgroup_size, grid) in
            [(MAX_WORKGROUP_SIZE, CopyGrid::OnePerInvocation), (tuning.workgroup_size, CopyGrid::Spans(tuning.stream_groups))]
        {
            let copy = Self::new(ctx, numel, dtype, workgroup_size, grid)?;
            let ms = timer.median_ms(ctx, warmup, reps, |e| {
                copy.encode_kernel(ctx, e);
                Ok(())
            })?;
            if best.as_ref().is_none_or(|(_, fastest)| ms < *fastest) {
                best = Some((copy, ms));
            }
        }
        best.ok_or_else(|| too_large(numel))
    }

    /// How this copy runs, for reports: `wg 256, 1/inv` or `wg 8, 64 spans`
    /// (the workgroups of its first window).
    pub fn describe(&self) -> String {
        let wg = self.variant.workgroup_size;
        match (self.grid, self.windows.first()) {
            (CopyGrid::Spans(_), Some((.., grid))) => format!("wg {wg}, {} spans", grid.x),
            _ => format!("wg {wg}, 1/inv"),
        }
    }

    /// Records the WGSL copy kernel.
    pub fn encode_kernel(&self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) {
        self.encode(ctx, encoder, &self.copy);
    }

    /// Records `read_only` in `copy.wgsl`: the same loads of `x` with no store,
    /// what one read of `x` costs on its own (a pass that reads `x` once, like
    /// the statistics, can take no less).
    pub fn encode_read_only(&self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder) {
        self.encode(ctx, encoder, &self.read_only);
    }

    fn encode(&self, ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder, pipeline: &wgpu::ComputePipeline) {
        for (uniform, offset, bytes, grid) in &self.windows {
            let bindings =
                [Binding::whole(0, uniform), Binding::range(1, &self.x, *offset, *bytes), Binding::range(2, &self.y, *offset, *bytes)];
            ctx.dispatch(encoder, pipeline, *grid, &bindings);
        }
    }

    /// The source (every element 1.0) and destination buffers, `numel` values each,
    /// for checking what a kernel wrote.
    pub fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.x, &self.y)
    }

    /// Records `copy_buffer_to_buffer`.
    pub fn encode_buffer_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.x, 0, &self.y, 0, self.dtype.tensor_bytes(self.numel));
    }

    /// Bytes one copy moves, read plus write.
    pub fn bytes_moved(&self) -> u64 {
        self.dtype.tensor_bytes(self.numel) * 2
    }
}

/// A storage buffer holding `data` as `dtype` (rounded to nearest, ties to
/// even), padded to whole words as the ops' slices are ([`GpuContext::upload_tensor`]).
pub fn upload_as(ctx: &GpuContext, label: &str, dtype: Dtype, data: &[f32]) -> Result<wgpu::Buffer> {
    match dtype {
        Dtype::F32 => ctx.upload_tensor(label, data),
        Dtype::F16 => ctx.upload_tensor(label, &data.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>()),
        Dtype::Bf16 => ctx.upload_tensor(label, &data.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>()),
    }
}

fn too_large(numel: usize) -> Error {
    Error::TooLarge { what: "elements (32-bit indexing)", requested: numel as u64, limit: u64::from(u32::MAX) }
}

/// Every buffer the three ops need for one shape, filled with data that has
/// the spread of docs/SPEC.md's test data; the tensors as `dtype`.
#[derive(Debug)]
pub struct OpBuffers {
    shape: Shape,
    dtype: Dtype,
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    dy: wgpu::Buffer,
    dx: wgpu::Buffer,
    save_mean: wgpu::Buffer,
    save_invstd: wgpu::Buffer,
    gamma: wgpu::Buffer,
    beta: wgpu::Buffer,
    running_mean: wgpu::Buffer,
    running_var: wgpu::Buffer,
    dgamma: wgpu::Buffer,
    dbeta: wgpu::Buffer,
    /// The host copy of `x`, for timing the CPU reference on the same input.
    pub host_x: ndarray::ArrayD<f32>,
}

impl OpBuffers {
    /// Allocates and fills the buffers; checks the shape against the device.
    pub fn new(ctx: &GpuContext, shape: &Shape, dtype: Dtype) -> Result<Self> {
        ctx.plan(shape, dtype)?;
        let c = shape.channels();
        let (s, numel) = (shape.inner(), shape.numel());
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut unit = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let x: Vec<f32> = (0..numel).map(|i| ((i / s) % c) as f32 * 0.25 + 4.0 * unit()).collect();
        let dy: Vec<f32> = (0..numel).map(|_| unit()).collect();
        let ones = vec![1.0f32; c];
        Ok(Self {
            shape: shape.clone(),
            dtype,
            x: upload_as(ctx, "x", dtype, &x)?,
            y: ctx.tensor_storage("y", dtype, numel)?,
            dy: upload_as(ctx, "dy", dtype, &dy)?,
            dx: ctx.tensor_storage("dx", dtype, numel)?,
            save_mean: ctx.upload("save_mean", &vec![0.0; c])?,
            save_invstd: ctx.upload("save_invstd", &ones)?,
            gamma: ctx.upload("gamma", &ones)?,
            beta: ctx.upload("beta", &vec![0.0; c])?,
            running_mean: ctx.upload("running_mean", &vec![0.0; c])?,
            running_var: ctx.upload("running_var", &ones)?,
            dgamma: ctx.storage("dgamma", c)?,
            dbeta: ctx.storage("dbeta", c)?,
            host_x: ndarray::ArrayD::from_shape_vec(shape.dims(), x).map_err(|e| Error::Readback(e.to_string()))?,
        })
    }

    /// The shape the buffers hold.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The op this benchmark row runs: batch norm over the buffers' shape.
    pub fn op(&self) -> Norm {
        Norm::Batch(self.shape.clone())
    }

    /// The training forward's slices: affine parameters and running statistics.
    pub fn forward_train(&self) -> NormForwardBuffers<'_> {
        NormForwardBuffers {
            x: self.x.slice(..),
            y: self.y.slice(..),
            stats: NormStats { mean: Some(self.save_mean.slice(..)), rstd: self.save_invstd.slice(..) },
            gamma: Some(self.gamma.slice(..)),
            beta: Some(self.beta.slice(..)),
            running: Some(RunningBuffers { mean: self.running_mean.slice(..), var: self.running_var.slice(..), num_batches_tracked: 0 }),
            residual: None,
            workspace: None,
        }
    }

    /// The inference forward's slices.
    pub fn forward_inference(&self) -> NormInferenceBuffers<'_> {
        NormInferenceBuffers {
            x: self.x.slice(..),
            y: self.y.slice(..),
            gamma: Some(self.gamma.slice(..)),
            beta: Some(self.beta.slice(..)),
            running_mean: self.running_mean.slice(..),
            running_var: self.running_var.slice(..),
            residual: None,
            workspace: None,
        }
    }

    /// The training-mode backward's slices, with parameter gradients.
    pub fn backward(&self) -> NormBackwardBuffers<'_> {
        NormBackwardBuffers {
            dy: self.dy.slice(..),
            x: self.x.slice(..),
            dx: self.dx.slice(..),
            stats: BackwardStats::Saved(NormStats { mean: Some(self.save_mean.slice(..)), rstd: self.save_invstd.slice(..) }),
            gamma: Some(self.gamma.slice(..)),
            param_grads: Some(NormParamGradBuffers { dgamma: self.dgamma.slice(..), dbeta: Some(self.dbeta.slice(..)) }),
            z: None,
            dresidual: None,
            workspace: None,
        }
    }

    /// Records `op` on these buffers through the one-shot call.
    pub fn encode(&self, ctx: &GpuContext, op: Op, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let options = Options { dtype: self.dtype, ..Options::default() };
        match op {
            Op::ForwardTrain => ctx.encode_norm(encoder, &self.op(), &options, &self.forward_train()),
            Op::ForwardInference => ctx.encode_norm_inference(encoder, &self.op(), &options, &self.forward_inference()),
            Op::Backward => ctx.encode_norm_backward(encoder, &self.op(), &options, &self.backward()),
        }
    }
}

/// The roofline kernels do what they are timed as doing: the copy writes every
/// element, in each way of dealing the work out, and the read-only pass writes none.
#[cfg(test)]
mod tests {
    use super::*;

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
        let ctx = GpuContext::new_blocking().unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"));
        // Odd sizes take the scalar kernel, multiples of four the vec4 one; three
        // spans of two lanes leave uneven parts.
        for numel in [100_003, 1 << 18] {
            for (workgroup_size, grid) in [(256, CopyGrid::OnePerInvocation), (8, CopyGrid::Spans(64)), (2, CopyGrid::Spans(3))] {
                let copy = CopyBench::new(&ctx, numel, Dtype::F32, workgroup_size, grid).unwrap();
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
}
