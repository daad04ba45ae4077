//! The kernels as a Burn backend extension: [`BatchNormBackend`], implemented
//! for Burn's `CubeBackend` on the wgpu runtime (on the buffers behind its
//! tensors), for `Fusion` over it with the feature `fusion` (Burn's default
//! backend: the op joins Burn's lazy stream, described by its outputs' shapes
//! and dtypes, and runs on the unfused backend when the stream executes), and
//! for `Autodiff` over either (with the kernels' backward as the op's backward).
//!
//! A call runs on the runner thread of Burn's device ([`on_runner`]): there it
//! resolves each tensor's buffer, offset and size through Burn's compute
//! client, flushes Burn's queued work to the shared queue, records the
//! kernels into one encoder of its own and submits it: queue order puts it
//! after everything Burn recorded before and before everything after.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend};
use burn::tensor::{DType, Shape as BurnShape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl_runtime::client::Client;
use cubecl_runtime::storage::ManagedResource;
use cubecl_wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use wgpu_batchnorm::{
    Activation, BackwardStats, Dtype, Epilogue, GpuContext, Layout, Momentum, Norm, NormBackwardBuffers, NormForwardBuffers,
    NormInferenceBuffers, NormParamGradBuffers, NormStats, Options, RunningBuffers, RunningVariance, Shape,
};

use crate::device::context;

/// Batch normalization as backend operations. `x` and `dy` are
/// `[batch, channels, ...]` (channels-first), f32, f16 or bf16, `y` and `dx`
/// the same; the others are `[channels]`, of any of those dtypes (the kernels
/// take them as f32, and return running statistics and `dgamma`, `dbeta` in
/// their inputs' dtypes; `save_mean` and `save_invstd` are f32).
#[backend_extension(Cube, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait BatchNormBackend: Backend {
    /// Training forward: `(y, running_mean', running_var', save_mean,
    /// save_invstd)`, with the running statistics updated by `momentum` (the
    /// new batch's weight) from the batch's unbiased variance, or its biased
    /// one where `biased_running_var`. The inputs' running statistics are not
    /// changed.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |x, _gamma, _beta, running_mean, running_var, _epsilon, _momentum, _biased| {
        (x.clone(), running_mean.clone(), running_var.clone(), per_channel_f32(x), per_channel_f32(x))
    })]
    fn batch_norm_train_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Inference forward with running statistics.
    #[fusion(dtype = x, shape = x)]
    fn batch_norm_inference_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `(dx, dgamma, dbeta)` from the upstream gradient `dy`: of the training
    /// forward (`batch`: `mean`, `invstd_or_var` are `save_mean`,
    /// `save_invstd`) or of the inference forward (the running mean and
    /// variance, constants).
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |_dy, x, gamma, _mean, _invstd_or_var, _epsilon, _batch| (x.clone(), gamma.clone(), gamma.clone()))]
    fn batch_norm_backward_wgpu(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`batch_norm_train_wgpu`](Self::batch_norm_train_wgpu) fused with
    /// ReLU: `z = relu(bn(x))` in the pass that writes batch norm's output.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |x, _gamma, _beta, running_mean, running_var, _epsilon, _momentum, _biased| {
        (x.clone(), running_mean.clone(), running_var.clone(), per_channel_f32(x), per_channel_f32(x))
    })]
    fn batch_norm_relu_train_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`batch_norm_train_wgpu`](Self::batch_norm_train_wgpu) fused with a
    /// residual and ReLU: `z = relu(bn(x) + residual)`, `residual` as `x`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |x, _residual, _gamma, _beta, running_mean, running_var, _epsilon, _momentum, _biased| {
        (x.clone(), running_mean.clone(), running_var.clone(), per_channel_f32(x), per_channel_f32(x))
    })]
    fn batch_norm_add_relu_train_wgpu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Inference forward fused with ReLU: `z = relu(bn(x))`.
    #[fusion(dtype = x, shape = x)]
    fn batch_norm_relu_inference_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Inference forward fused with a residual and ReLU: `z = relu(bn(x) + residual)`.
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = x, shape = x)]
    fn batch_norm_add_relu_inference_wgpu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `(dx, dgamma, dbeta)` of either ReLU-fused forward from `dz`, the
    /// gradient of its output `z` (masked where `z` is not positive); the
    /// statistics as for [`batch_norm_backward_wgpu`](Self::batch_norm_backward_wgpu).
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |_dz, x, _z, gamma, _mean, _invstd_or_var, _epsilon, _batch| (x.clone(), gamma.clone(), gamma.clone()))]
    fn batch_norm_relu_backward_wgpu(
        dz: FloatTensor<Self>,
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `(dx, dresidual, dgamma, dbeta)` of the residual-and-ReLU-fused
    /// forward from `dz`, as [`batch_norm_relu_backward_wgpu`](Self::batch_norm_relu_backward_wgpu).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[fusion(meta = |_dz, x, _z, gamma, _mean, _invstd_or_var, _epsilon, _batch| {
        (x.clone(), x.clone(), gamma.clone(), gamma.clone())
    })]
    fn batch_norm_add_relu_backward_wgpu(
        dz: FloatTensor<Self>,
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `save_mean`'s and `save_invstd`'s description for Burn's lazy stream: `[C]` f32 of `[batch, C, ...]` `x`.
#[cfg(feature = "fusion")]
fn per_channel_f32(x: &TensorSpec) -> TensorSpec {
    TensorSpec::new(BurnShape::new([x.shape[1]]), DType::F32)
}

/// A failure Burn's op signatures cannot return: they have no error type.
pub(crate) fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("wgpu-batchnorm-burn: {what}: {e}")
}

/// The kernels' element type for a tensor Burn holds as `dtype`: f32, f16 or bf16.
pub(crate) fn kernel_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::Bf16,
        other => fail("unsupported dtype", format!("{other:?} (the kernels take f32, f16 and bf16)")),
    }
}

/// A tensor bound for one call: contiguous, its buffer resolved and pinned.
pub(crate) struct Bound {
    pub(crate) tensor: CubeTensor,
    resource: ManagedResource<WgpuResource>,
}

impl Bound {
    /// Makes `tensor` (f32, f16 or bf16) contiguous (Burn's strided views are
    /// copied here) and resolves its buffer; a view starting off the device's
    /// storage-offset alignment, or whose last word its buffer does not hold
    /// (an odd count of halves at a buffer's end), is copied to a fresh
    /// allocation, which is aligned.
    pub(crate) fn new(tensor: CubeTensor, ctx: &GpuContext) -> Self {
        let fits = |r: &WgpuResource, tensor: &CubeTensor| {
            r.offset.is_multiple_of(ctx.slice_alignment()) && r.offset + bytes_of(tensor) <= r.buffer.size()
        };
        let tensor = into_contiguous(tensor);
        let resource = resolve(&tensor);
        if fits(resource.resource(), &tensor) {
            return Self { tensor, resource };
        }
        drop(resource);
        let tensor = tensor.copy();
        let resource = resolve(&tensor);
        if !fits(resource.resource(), &tensor) {
            fail("binding a tensor", "Burn's fresh allocation does not hold the tensor's last 32-bit word");
        }
        Self { tensor, resource }
    }

    /// A per-channel tensor as f32 (the kernels keep parameters and
    /// statistics in f32): cast by Burn where it is f16 or bf16.
    pub(crate) fn per_channel(tensor: CubeTensor, ctx: &GpuContext) -> Self {
        match tensor.dtype {
            DType::F32 => Self::new(tensor, ctx),
            _ => Self::new(cast(tensor, DType::F32), ctx),
        }
    }

    /// A fresh contiguous tensor of `shape` and `dtype` on `like`'s device,
    /// padded to whole 32-bit words.
    pub(crate) fn empty(like: &CubeTensor, shape: BurnShape, dtype: DType) -> Self {
        let handle = like.client.empty(kernel_dtype(dtype).tensor_bytes(shape.num_elements()) as usize);
        let tensor = CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, dtype);
        let resource = resolve(&tensor);
        Self { tensor, resource }
    }

    pub(crate) fn slice(&self) -> wgpu::BufferSlice<'_> {
        let r = self.resource.resource();
        r.buffer.slice(r.offset..r.offset + bytes_of(&self.tensor))
    }

    /// The tensor as `dtype`, cast by Burn where it differs.
    pub(crate) fn into_dtype(self, dtype: DType) -> CubeTensor {
        let Self { tensor, resource } = self;
        drop(resource);
        if tensor.dtype == dtype {
            tensor
        } else {
            cast(tensor, dtype)
        }
    }
}

/// A running statistic for the kernels to update. They update in place and
/// Burn's tensors are values, so the update goes to a fresh f32 tensor: a
/// cast where the statistic is f16 or bf16 (a fresh tensor already), else an
/// empty one that the op's own encoder fills from the statistic
/// ([`record_running_copies`]), with no trip through Burn's queue.
struct Running {
    updated: Bound,
    source: Option<Bound>,
}

impl Running {
    fn new(statistic: CubeTensor, ctx: &GpuContext) -> Self {
        if statistic.dtype != DType::F32 {
            return Self { updated: Bound::per_channel(statistic, ctx), source: None };
        }
        let source = Bound::new(statistic, ctx);
        let updated = Bound::empty(&source.tensor, source.tensor.meta.shape().clone(), DType::F32);
        Self { updated, source: Some(source) }
    }
}

/// Records the copies of `running`'s statistics into their fresh tensors,
/// through a staging buffer of this call's: Burn's pool puts small tensors
/// in one shared buffer, and one buffer copy may not read and write the
/// same buffer.
fn record_running_copies(ctx: &GpuContext, encoder: &mut wgpu::CommandEncoder, running: &[&Running]) {
    let copies: Vec<(&WgpuResource, &WgpuResource, u64)> = running
        .iter()
        .filter_map(|r| r.source.as_ref().map(|s| (s.resource.resource(), r.updated.resource.resource(), bytes_of(&s.tensor))))
        .collect();
    let total: u64 = copies.iter().map(|&(_, _, bytes)| bytes).sum();
    if total == 0 {
        return;
    }
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-batchnorm-burn running statistics"),
        size: total,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut at = 0;
    for &(from, _, bytes) in &copies {
        encoder.copy_buffer_to_buffer(&from.buffer, from.offset, &staging, at, bytes);
        at += bytes;
    }
    let mut at = 0;
    for &(_, to, bytes) in &copies {
        encoder.copy_buffer_to_buffer(&staging, at, &to.buffer, to.offset, bytes);
        at += bytes;
    }
}

/// Bytes the kernels bind for `tensor`: its values at its dtype's size, in whole words.
fn bytes_of(tensor: &CubeTensor) -> u64 {
    kernel_dtype(tensor.dtype).tensor_bytes(tensor.meta.shape().num_elements())
}

fn resolve(tensor: &CubeTensor) -> ManagedResource<WgpuResource> {
    tensor.client.get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone()).unwrap_or_else(|e| fail("resolving a tensor's buffer", e))
}

/// The kernels' context for `x`'s device and its shape.
fn setup(x: &CubeTensor) -> (Arc<GpuContext>, Shape) {
    let ctx = context(&x.device).unwrap_or_else(|e| fail("no context", e));
    let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
    if dims.len() < 2 {
        fail("input rank", format!("{dims:?}: batch norm needs [batch, channels, ...]"));
    }
    let shape = Shape::new(&dims, Layout::ChannelsFirst).unwrap_or_else(|e| fail("input shape", e));
    (ctx, shape)
}

fn options(epsilon: f64, momentum: f64, biased_running_var: bool) -> Options {
    Options {
        eps: epsilon as f32,
        momentum: Momentum::Exponential(momentum as f32),
        affine: true,
        track_running_stats: true,
        running_variance: if biased_running_var { RunningVariance::Biased } else { RunningVariance::Unbiased },
        ..Options::default()
    }
}

/// Runs `task` on the runner thread of Burn's device, where the compute
/// client answers in place: from any other thread each of a call's dozen
/// buffer resolves, and its flush, is a round trip to that thread, tens of
/// microseconds each: together several times what recording the kernels
/// takes. A panic in `task` is raised again on the caller's thread, as it was.
pub(crate) fn on_runner<R: Send + 'static>(client: Client, task: impl FnOnce() -> R + Send) -> R {
    // cubecl's runner catches a task's panic either way (and goes on serving
    // the device), keeping only its message: catching it here first keeps
    // the payload, for the caller to unwind with.
    match client.exclusive(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => fail("Burn's device thread", e),
    }
}

/// Flushes Burn's queued work, then records `record` into an encoder of its
/// own and submits it to the shared queue. The caller's [`Bound`] tensors
/// stay pinned until they drop, after the submit.
pub(crate) fn run(ctx: &GpuContext, client_of: &CubeTensor, record: impl FnOnce(&mut wgpu::CommandEncoder)) {
    client_of.client.flush().unwrap_or_else(|e| fail("flushing Burn's queue", e));
    let mut encoder = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-batchnorm-burn") });
    record(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
}

fn channels(shape: &Shape) -> BurnShape {
    BurnShape::new([shape.channels()])
}

/// `z = relu(bn(x))`: the ReLU-fused ops' epilogue.
const RELU: Epilogue = Epilogue { activation: Activation::Relu, residual: false };

/// `z = relu(bn(x) + residual)`.
const ADD_RELU: Epilogue = Epilogue { activation: Activation::Relu, residual: true };

/// Fails where `what`'s dtype is not `x`'s: the kernels read both as one element type.
fn same_dtype(what: &str, t: &CubeTensor, x: &CubeTensor) {
    if t.dtype != x.dtype {
        fail(&format!("{what}'s dtype"), format!("{:?}, but x is {:?}", t.dtype, x.dtype));
    }
}

/// The training forward of every op above: `residual` exactly when `epilogue.residual`.
#[allow(clippy::too_many_arguments)]
fn train(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    gamma: CubeTensor,
    beta: CubeTensor,
    running_mean: CubeTensor,
    running_var: CubeTensor,
    epsilon: f64,
    momentum: f64,
    biased_running_var: bool,
    epilogue: Epilogue,
) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
    let (ctx, shape) = setup(&x);
    let op = Norm::Batch(shape.clone());
    let options = Options { dtype: kernel_dtype(x.dtype), epilogue, ..options(epsilon, momentum, biased_running_var) };
    let (mean_dtype, var_dtype) = (running_mean.dtype, running_var.dtype);
    if let Some(r) = &residual {
        same_dtype("residual", r, &x);
    }
    on_runner(x.client.clone(), move || {
        let (mean, var) = (Running::new(running_mean, &ctx), Running::new(running_var, &ctx));
        let residual = residual.map(|r| Bound::new(r, &ctx));
        let x = Bound::new(x, &ctx);
        let [gamma, beta] = [gamma, beta].map(|t| Bound::per_channel(t, &ctx));
        let y = Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype);
        let [save_mean, save_invstd] = std::array::from_fn(|_| Bound::empty(&x.tensor, channels(&shape), DType::F32));
        run(&ctx, &x.tensor, |encoder| {
            record_running_copies(&ctx, encoder, &[&mean, &var]);
            let buffers = NormForwardBuffers {
                x: x.slice(),
                y: y.slice(),
                stats: NormStats { mean: Some(save_mean.slice()), rstd: save_invstd.slice() },
                gamma: Some(gamma.slice()),
                beta: Some(beta.slice()),
                running: Some(RunningBuffers { mean: mean.updated.slice(), var: var.updated.slice(), num_batches_tracked: 0 }),
                residual: residual.as_ref().map(Bound::slice),
                workspace: None,
            };
            ctx.encode_norm(encoder, &op, &options, &buffers).unwrap_or_else(|e| fail("training forward", e));
        });
        (y.tensor, mean.updated.into_dtype(mean_dtype), var.updated.into_dtype(var_dtype), save_mean.tensor, save_invstd.tensor)
    })
}

/// The inference forward of every op above: `residual` exactly when `epilogue.residual`.
#[allow(clippy::too_many_arguments)]
fn inference(
    x: CubeTensor,
    residual: Option<CubeTensor>,
    gamma: CubeTensor,
    beta: CubeTensor,
    running_mean: CubeTensor,
    running_var: CubeTensor,
    epsilon: f64,
    epilogue: Epilogue,
) -> CubeTensor {
    let (ctx, shape) = setup(&x);
    let op = Norm::Batch(shape);
    let options = Options { dtype: kernel_dtype(x.dtype), epilogue, ..options(epsilon, 0.0, false) };
    if let Some(r) = &residual {
        same_dtype("residual", r, &x);
    }
    on_runner(x.client.clone(), move || {
        let residual = residual.map(|r| Bound::new(r, &ctx));
        let x = Bound::new(x, &ctx);
        let [gamma, beta, mean, var] = [gamma, beta, running_mean, running_var].map(|t| Bound::per_channel(t, &ctx));
        let y = Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype);
        run(&ctx, &x.tensor, |encoder| {
            let buffers = NormInferenceBuffers {
                x: x.slice(),
                y: y.slice(),
                gamma: Some(gamma.slice()),
                beta: Some(beta.slice()),
                running_mean: mean.slice(),
                running_var: var.slice(),
                residual: residual.as_ref().map(Bound::slice),
                workspace: None,
            };
            ctx.encode_norm_inference(encoder, &op, &options, &buffers).unwrap_or_else(|e| fail("inference forward", e));
        });
        y.tensor
    })
}

/// The backward of every op above: `z` exactly when `epilogue` has an
/// activation; `dresidual` comes back exactly when `epilogue.residual`.
#[allow(clippy::too_many_arguments)]
fn backward(
    dy: CubeTensor,
    x: CubeTensor,
    z: Option<CubeTensor>,
    gamma: CubeTensor,
    mean: CubeTensor,
    invstd_or_var: CubeTensor,
    epsilon: f64,
    batch: bool,
    epilogue: Epilogue,
) -> (CubeTensor, Option<CubeTensor>, CubeTensor, CubeTensor) {
    let (ctx, shape) = setup(&x);
    let op = Norm::Batch(shape.clone());
    same_dtype("dy", &dy, &x);
    if let Some(z) = &z {
        same_dtype("z", z, &x);
    }
    let options = Options { dtype: kernel_dtype(x.dtype), epilogue, ..options(epsilon, 0.0, false) };
    let gamma_dtype = gamma.dtype;
    on_runner(x.client.clone(), move || {
        let z = z.map(|z| Bound::new(z, &ctx));
        let [dy, x] = [dy, x].map(|t| Bound::new(t, &ctx));
        let [gamma, mean, invstd_or_var] = [gamma, mean, invstd_or_var].map(|t| Bound::per_channel(t, &ctx));
        let dx = Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype);
        let dresidual = epilogue.residual.then(|| Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype));
        let [dgamma, dbeta] = std::array::from_fn(|_| Bound::empty(&x.tensor, channels(&shape), DType::F32));
        run(&ctx, &x.tensor, |encoder| {
            let stats = if batch {
                BackwardStats::Saved(NormStats { mean: Some(mean.slice()), rstd: invstd_or_var.slice() })
            } else {
                BackwardStats::Running { mean: mean.slice(), var: invstd_or_var.slice() }
            };
            let buffers = NormBackwardBuffers {
                dy: dy.slice(),
                x: x.slice(),
                dx: dx.slice(),
                stats,
                gamma: Some(gamma.slice()),
                param_grads: Some(NormParamGradBuffers { dgamma: dgamma.slice(), dbeta: Some(dbeta.slice()) }),
                z: z.as_ref().map(Bound::slice),
                dresidual: dresidual.as_ref().map(Bound::slice),
                workspace: None,
            };
            ctx.encode_norm_backward(encoder, &op, &options, &buffers).unwrap_or_else(|e| fail("backward", e));
        });
        (dx.tensor, dresidual.map(|d| d.tensor), dgamma.into_dtype(gamma_dtype), dbeta.into_dtype(gamma_dtype))
    })
}

/// The residual's gradient of a backward whose epilogue adds one.
fn with_residual(grads: (CubeTensor, Option<CubeTensor>, CubeTensor, CubeTensor)) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
    let (dx, dresidual, dgamma, dbeta) = grads;
    (dx, dresidual.unwrap_or_else(|| fail("backward", "no residual gradient")), dgamma, dbeta)
}

impl BatchNormBackend for CubeBackend {
    fn batch_norm_train_wgpu(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        train(x, None, gamma, beta, running_mean, running_var, epsilon, momentum, biased_running_var, Epilogue::default())
    }

    fn batch_norm_inference_wgpu(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        inference(x, None, gamma, beta, running_mean, running_var, epsilon, Epilogue::default())
    }

    fn batch_norm_backward_wgpu(
        dy: CubeTensor,
        x: CubeTensor,
        gamma: CubeTensor,
        mean: CubeTensor,
        invstd_or_var: CubeTensor,
        epsilon: f64,
        batch: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (dx, _, dgamma, dbeta) = backward(dy, x, None, gamma, mean, invstd_or_var, epsilon, batch, Epilogue::default());
        (dx, dgamma, dbeta)
    }

    fn batch_norm_relu_train_wgpu(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        train(x, None, gamma, beta, running_mean, running_var, epsilon, momentum, biased_running_var, RELU)
    }

    fn batch_norm_add_relu_train_wgpu(
        x: CubeTensor,
        residual: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        train(x, Some(residual), gamma, beta, running_mean, running_var, epsilon, momentum, biased_running_var, ADD_RELU)
    }

    fn batch_norm_relu_inference_wgpu(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        inference(x, None, gamma, beta, running_mean, running_var, epsilon, RELU)
    }

    fn batch_norm_add_relu_inference_wgpu(
        x: CubeTensor,
        residual: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        running_mean: CubeTensor,
        running_var: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        inference(x, Some(residual), gamma, beta, running_mean, running_var, epsilon, ADD_RELU)
    }

    fn batch_norm_relu_backward_wgpu(
        dz: CubeTensor,
        x: CubeTensor,
        z: CubeTensor,
        gamma: CubeTensor,
        mean: CubeTensor,
        invstd_or_var: CubeTensor,
        epsilon: f64,
        batch: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (dx, _, dgamma, dbeta) = backward(dz, x, Some(z), gamma, mean, invstd_or_var, epsilon, batch, RELU);
        (dx, dgamma, dbeta)
    }

    fn batch_norm_add_relu_backward_wgpu(
        dz: CubeTensor,
        x: CubeTensor,
        z: CubeTensor,
        gamma: CubeTensor,
        mean: CubeTensor,
        invstd_or_var: CubeTensor,
        epsilon: f64,
        batch: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        with_residual(backward(dz, x, Some(z), gamma, mean, invstd_or_var, epsilon, batch, ADD_RELU))
    }
}

/// The state a forward keeps for its backward: `x` and `gamma` as
/// checkpointed nodes, the two per-channel statistics and `eps`.
pub(crate) type SavedState<B> = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

/// The backward of both forwards; `batch` says which statistics it saved.
#[derive(Debug)]
struct BatchNormOps {
    batch: bool,
}

impl<B: BatchNormBackend> Backward<B, 3> for BatchNormOps {
    type State = SavedState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, mean, invstd_or_var, epsilon) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let (dx, dgamma, dbeta) = B::batch_norm_backward_wgpu(dy, x, gamma, mean, invstd_or_var, epsilon, self.batch);
        for (node, grad) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// What the ReLU-fused forwards keep: [`SavedState`] and their output `z`,
/// whose sign masks the gradient.
type ReluState<B> = (SavedState<B>, FloatTensor<B>);

/// The backward of both `relu(bn(x))` forwards.
#[derive(Debug)]
struct BatchNormReluOps {
    batch: bool,
}

impl<B: BatchNormBackend> Backward<B, 3> for BatchNormReluOps {
    type State = ReluState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dz = grads.consume::<B>(&ops.node);
        let ((x_state, gamma_state, mean, invstd_or_var, epsilon), z) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let (dx, dgamma, dbeta) = B::batch_norm_relu_backward_wgpu(dz, x, z, gamma, mean, invstd_or_var, epsilon, self.batch);
        for (node, grad) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The backward of both `relu(bn(x) + residual)` forwards.
#[derive(Debug)]
struct BatchNormAddReluOps {
    batch: bool,
}

impl<B: BatchNormBackend> Backward<B, 4> for BatchNormAddReluOps {
    type State = ReluState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_residual, node_gamma, node_beta] = ops.parents;
        let dz = grads.consume::<B>(&ops.node);
        let ((x_state, gamma_state, mean, invstd_or_var, epsilon), z) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let (dx, dresidual, dgamma, dbeta) =
            B::batch_norm_add_relu_backward_wgpu(dz, x, z, gamma, mean, invstd_or_var, epsilon, self.batch);
        for (node, grad) in [(node_x, dx), (node_residual, dresidual), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// A training forward's results beside its output: the updated running
/// mean and variance, `save_mean` and `save_invstd`.
type TrainStats<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// A training forward's results: its output, then [`TrainStats`].
type TrainResults<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// A training forward's results as its output and the rest.
fn split<B: Backend>((y, mean, var, save_mean, save_invstd): TrainResults<B>) -> (FloatTensor<B>, TrainStats<B>) {
    (y, (mean, var, save_mean, save_invstd))
}

/// Runs a forward of a backend extension on the inner backend as one op of
/// Burn's autodiff (`kind`, prepared over its parents): where a parent needs
/// gradients, `x` and `gamma` are checkpointed and the op keeps the state
/// `keep` makes of them and of the forward's output and other results.
pub(crate) fn tracked<B, C, BO, S, T, const N: usize>(
    kind: OpsKind<BO, B, S, C, N>,
    x: &FloatTensor<Autodiff<B, C>>,
    gamma: &FloatTensor<Autodiff<B, C>>,
    forward: impl FnOnce() -> (FloatTensor<B>, T),
    keep: impl FnOnce(NodeId, NodeId, &FloatTensor<B>, &T) -> S,
) -> (FloatTensor<Autodiff<B, C>>, T)
where
    B: Backend,
    C: CheckpointStrategy,
    S: Clone + Send + std::fmt::Debug + 'static,
    BO: Backward<B, N, State = S>,
{
    match kind {
        OpsKind::Tracked(mut prep) => {
            let (x_state, gamma_state) = (prep.checkpoint(x), prep.checkpoint(gamma));
            let (y, rest) = forward();
            let state = keep(x_state, gamma_state, &y, &rest);
            (prep.finish(state, y), rest)
        }
        OpsKind::UnTracked(prep) => {
            let (y, rest) = forward();
            (prep.finish(y), rest)
        }
    }
}

/// A training forward's results on the autodiff backend: the statistics untracked.
fn train_results<B: BatchNormBackend, C: CheckpointStrategy>(
    (y, (mean, var, save_mean, save_invstd)): (FloatTensor<Autodiff<B, C>>, TrainStats<B>),
) -> TrainResults<Autodiff<B, C>> {
    let inner = <Autodiff<B, C> as AutodiffBackend>::from_inner;
    (y, inner(mean), inner(var), inner(save_mean), inner(save_invstd))
}

impl<B: BatchNormBackend, C: CheckpointStrategy> BatchNormBackend for Autodiff<B, C> {
    fn batch_norm_train_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let kind = BatchNormOps { batch: true }.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        let forward = || {
            split::<B>(B::batch_norm_train_wgpu(
                x.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                running_mean.primitive().clone(),
                running_var.primitive().clone(),
                epsilon,
                momentum,
                biased_running_var,
            ))
        };
        train_results::<B, C>(tracked(kind, &x, &gamma, forward, |x, gamma, _, (_, _, mean, invstd): &TrainStats<B>| {
            (x, gamma, mean.clone(), invstd.clone(), epsilon)
        }))
    }

    fn batch_norm_inference_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let kind = BatchNormOps { batch: false }.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        let (mean, var) = (running_mean.into_primitive(), running_var.into_primitive());
        let forward = || {
            let y = B::batch_norm_inference_wgpu(
                x.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                mean.clone(),
                var.clone(),
                epsilon,
            );
            (y, ())
        };
        tracked(kind, &x, &gamma, forward, |x, gamma, _, _| (x, gamma, mean.clone(), var.clone(), epsilon)).0
    }

    /// Not differentiable itself: computed on the inner backend, untracked.
    fn batch_norm_backward_wgpu(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::batch_norm_backward_wgpu(
            dy.into_primitive(),
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            invstd_or_var.into_primitive(),
            epsilon,
            batch,
        );
        (Self::from_inner(dx), Self::from_inner(dgamma), Self::from_inner(dbeta))
    }

    fn batch_norm_relu_train_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let kind = BatchNormReluOps { batch: true }.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        let forward = || {
            split::<B>(B::batch_norm_relu_train_wgpu(
                x.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                running_mean.primitive().clone(),
                running_var.primitive().clone(),
                epsilon,
                momentum,
                biased_running_var,
            ))
        };
        train_results::<B, C>(tracked(kind, &x, &gamma, forward, |x, gamma, z, (_, _, mean, invstd): &TrainStats<B>| {
            ((x, gamma, mean.clone(), invstd.clone(), epsilon), z.clone())
        }))
    }

    fn batch_norm_add_relu_train_wgpu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
        momentum: f64,
        biased_running_var: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let parents = [x.node(), residual.node(), gamma.node(), beta.node()];
        let kind = BatchNormAddReluOps { batch: true }.prepare::<C>(parents).compute_bound().stateful();
        let forward = || {
            split::<B>(B::batch_norm_add_relu_train_wgpu(
                x.primitive().clone(),
                residual.primitive().clone(),
                gamma.primitive().clone(),
                beta.primitive().clone(),
                running_mean.primitive().clone(),
                running_var.primitive().clone(),
                epsilon,
                momentum,
                biased_running_var,
            ))
        };
        train_results::<B, C>(tracked(kind, &x, &gamma, forward, |x, gamma, z, (_, _, mean, invstd): &TrainStats<B>| {
            ((x, gamma, mean.clone(), invstd.clone(), epsilon), z.clone())
        }))
    }

    fn batch_norm_relu_inference_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let kind = BatchNormReluOps { batch: false }.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        let (mean, var) = (running_mean.into_primitive(), running_var.into_primitive());
        let forward = || {
            let (x, gamma, beta) = (x.primitive().clone(), gamma.primitive().clone(), beta.primitive().clone());
            (B::batch_norm_relu_inference_wgpu(x, gamma, beta, mean.clone(), var.clone(), epsilon), ())
        };
        tracked(kind, &x, &gamma, forward, |x, gamma, z, _| ((x, gamma, mean.clone(), var.clone(), epsilon), z.clone())).0
    }

    fn batch_norm_add_relu_inference_wgpu(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let parents = [x.node(), residual.node(), gamma.node(), beta.node()];
        let kind = BatchNormAddReluOps { batch: false }.prepare::<C>(parents).compute_bound().stateful();
        let (mean, var) = (running_mean.into_primitive(), running_var.into_primitive());
        let forward = || {
            let (x, residual) = (x.primitive().clone(), residual.primitive().clone());
            let (gamma, beta) = (gamma.primitive().clone(), beta.primitive().clone());
            (B::batch_norm_add_relu_inference_wgpu(x, residual, gamma, beta, mean.clone(), var.clone(), epsilon), ())
        };
        tracked(kind, &x, &gamma, forward, |x, gamma, z, _| ((x, gamma, mean.clone(), var.clone(), epsilon), z.clone())).0
    }

    /// Not differentiable itself: computed on the inner backend, untracked.
    fn batch_norm_relu_backward_wgpu(
        dz: FloatTensor<Self>,
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [dz, x, z, gamma, mean, invstd_or_var] = [dz, x, z, gamma, mean, invstd_or_var].map(|t| t.into_primitive());
        let (dx, dgamma, dbeta) = B::batch_norm_relu_backward_wgpu(dz, x, z, gamma, mean, invstd_or_var, epsilon, batch);
        (Self::from_inner(dx), Self::from_inner(dgamma), Self::from_inner(dbeta))
    }

    /// Not differentiable itself: computed on the inner backend, untracked.
    fn batch_norm_add_relu_backward_wgpu(
        dz: FloatTensor<Self>,
        x: FloatTensor<Self>,
        z: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        invstd_or_var: FloatTensor<Self>,
        epsilon: f64,
        batch: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [dz, x, z, gamma, mean, invstd_or_var] = [dz, x, z, gamma, mean, invstd_or_var].map(|t| t.into_primitive());
        let (dx, dresidual, dgamma, dbeta) = B::batch_norm_add_relu_backward_wgpu(dz, x, z, gamma, mean, invstd_or_var, epsilon, batch);
        (Self::from_inner(dx), Self::from_inner(dresidual), Self::from_inner(dgamma), Self::from_inner(dbeta))
    }
}
