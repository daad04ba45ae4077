//! The batch-norm ops. Each has a low-level `encode_*` method on
//! [`GpuContext`](crate::GpuContext) that records into the caller's encoder over
//! caller-owned buffers, and a high-level method over `ndarray` arrays.

pub mod backward;
pub mod forward_inference;
pub mod forward_train;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::context::{Binding, Unused};
use crate::error::{Error, Result};
use crate::plan::{Geometry, Window, Windowed};
use crate::shaders::Kernel;
use crate::shape::{Layout, Shape};
use backward::BackwardStats;

/// A pair of per-channel parameters, `gamma` (scale) and `beta` (shift):
/// buffers on the low-level API, slices on the high-level one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine<T> {
    /// Scale, `C` values.
    pub gamma: T,
    /// Shift, `C` values.
    pub beta: T,
}

/// Running statistics on the host, with PyTorch's initial values: `f32` for
/// the GPU calls, `f64` for [`reference`](crate::reference).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningStats<T = f32> {
    /// Running mean, initially 0.
    pub mean: Vec<T>,
    /// Running variance (unbiased unless [`RunningVariance::Biased`](crate::RunningVariance)), initially 1.
    pub var: Vec<T>,
    /// Training batches seen.
    pub num_batches_tracked: u64,
}

impl<T: From<u8> + Clone> RunningStats<T> {
    /// Initial statistics for `channels` channels.
    ///
    /// ```
    /// let r = wgpu_batchnorm::RunningStats::<f32>::new(2);
    /// assert_eq!((r.mean, r.var, r.num_batches_tracked), (vec![0.0; 2], vec![1.0; 2], 0));
    /// ```
    pub fn new(channels: usize) -> Self {
        Self { mean: vec![T::from(0); channels], var: vec![T::from(1); channels], num_batches_tracked: 0 }
    }
}

impl<T> RunningStats<T> {
    /// The statistics a backward in inference mode differentiates at.
    pub fn backward_stats(&self) -> BackwardStats<&[T]> {
        BackwardStats::Running { mean: &self.mean, var: &self.var }
    }
}

/// The two tensors of a backward pass, named so that they cannot be swapped.
#[derive(Debug, Clone)]
pub struct BackwardInputs<'a> {
    /// The upstream gradient, `dL/dy`, shaped like `x`.
    pub dy: ArrayViewD<'a, f32>,
    /// The forward pass's input.
    pub x: ArrayViewD<'a, f32>,
    /// Where the channel axis of both sits.
    pub layout: Layout,
}

/// Gradients from the backward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    /// Gradient with respect to `x`.
    pub dx: ArrayD<f32>,
    /// Gradient with respect to `gamma`; `None` where `affine` is false.
    pub dgamma: Option<Vec<f32>>,
    /// Gradient with respect to `beta`; `None` where `affine` is false.
    pub dbeta: Option<Vec<f32>>,
}

/// Checks that a caller's buffer holds `bytes` and has `usage`.
pub(crate) fn check_buffer(name: &'static str, buffer: &wgpu::Buffer, bytes: u64, usage: wgpu::BufferUsages) -> Result<()> {
    if buffer.size() < bytes {
        return Err(Error::BadBuffer { name, reason: format!("holds {} bytes, needs at least {bytes}", buffer.size()) });
    }
    if !buffer.usage().contains(usage) {
        return Err(Error::BadBuffer { name, reason: format!("has usage {:?}, needs {usage:?}", buffer.usage()) });
    }
    Ok(())
}

/// Checks that an output buffer is not also an input of the same dispatch.
pub(crate) fn check_distinct(out: &'static str, a: &wgpu::Buffer, input: &'static str, b: &wgpu::Buffer) -> Result<()> {
    if a == b {
        return Err(Error::BadBuffer {
            name: out,
            reason: format!("is the same buffer as `{input}`; in-place operation is not supported"),
        });
    }
    Ok(())
}

/// Checks a tensor-sized buffer.
pub(crate) fn check_tensor(name: &'static str, buffer: &wgpu::Buffer, shape: &Shape) -> Result<()> {
    check_buffer(name, buffer, shape.bytes(), wgpu::BufferUsages::STORAGE)
}

/// Checks a per-channel buffer.
pub(crate) fn check_channels(name: &'static str, buffer: &wgpu::Buffer, shape: &Shape) -> Result<()> {
    check_buffer(name, buffer, shape.channels() as u64 * 4, wgpu::BufferUsages::STORAGE)
}

/// A tensor as a contiguous f32 slice in standard order, with its shape checked against `layout`.
pub(crate) fn contiguous<'a>(x: &'a ArrayViewD<'_, f32>, layout: Layout) -> Result<(Shape, std::borrow::Cow<'a, [f32]>)> {
    let shape = Shape::new(x.shape(), layout)?;
    let data = match x.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(x.iter().copied().collect()),
    };
    Ok((shape, data))
}

impl GpuContext {
    /// Plans `shape` for this device, in windows where it is larger than one
    /// binding may be: an error names the limit a tensor passes.
    pub(crate) fn plan(&self, shape: &Shape) -> Result<Windowed> {
        let limits = self.device().limits();
        if shape.bytes() > limits.max_buffer_size {
            return Err(Error::TooLarge { what: "max_buffer_size", requested: shape.bytes(), limit: limits.max_buffer_size });
        }
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment);
        Windowed::new(shape, self.max_groups_per_dim(), self.tuning(), limits.max_storage_buffer_binding_size, alignment)
    }
}

/// The uniforms of one op: the whole tensor's (per-channel passes) and one per
/// window (tensor passes), each with the op's scalars set by `set`.
pub(crate) struct Uniforms {
    pub full: wgpu::Buffer,
    pub windows: Vec<wgpu::Buffer>,
}

impl Uniforms {
    pub fn new(ctx: &GpuContext, plan: &Windowed, set: impl Fn(&mut Geometry)) -> Self {
        let make = |geometry: &Geometry| {
            let mut g = *geometry;
            set(&mut g);
            ctx.uniform(&g)
        };
        Self { full: make(&plan.full.geometry), windows: plan.windows.iter().map(|w| make(&w.plan.geometry)).collect() }
    }
}

impl GpuContext {
    /// `gamma` and `beta` at finalize.wgsl's bindings 2 and 3, or stand-ins for `affine = false`.
    pub(crate) fn affine_bindings<'a>(&'a self, affine: Option<Affine<&'a wgpu::Buffer>>, shape: &Shape) -> [Binding<'a>; 2] {
        match affine {
            Some(a) => [channels_of(2, a.gamma, shape), channels_of(3, a.beta, shape)],
            None => [Binding::whole(2, self.unused(Unused::Read)), Binding::whole(3, self.unused(Unused::Read))],
        }
    }

    /// Records apply.wgsl over every window of `plan`.
    pub(crate) fn encode_apply(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        plan: &Windowed,
        uniforms: &Uniforms,
        x: &wgpu::Buffer,
        params: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) {
        for (window, uniform) in plan.windows.iter().zip(&uniforms.windows) {
            let bindings = [Binding::whole(0, uniform), window_of(1, x, window), Binding::whole(2, params), window_of(3, y, window)];
            self.dispatch(encoder, Kernel::Apply, window.plan.variant(), window.plan.stream_grid, &bindings);
        }
    }
}

/// A per-channel buffer's first `C` f32s.
pub(crate) fn channels_of<'a>(index: u32, buffer: &'a wgpu::Buffer, shape: &Shape) -> Binding<'a> {
    Binding::range(index, buffer, 0, shape.channels() as u64 * 4)
}

/// A tensor-sized buffer's part in `window`.
pub(crate) fn window_of<'a>(index: u32, buffer: &'a wgpu::Buffer, window: &Window) -> Binding<'a> {
    Binding::range(index, buffer, window.offset, window.bytes)
}
