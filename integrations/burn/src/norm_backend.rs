//! The family's kernels (layer, RMS, group and instance norm) as a Burn
//! backend extension, [`NormBackend`]: implemented, as
//! [`BatchNormBackend`](crate::BatchNormBackend) is, for `CubeBackend` on the
//! wgpu runtime over the buffers behind its tensors, for `Fusion` over it with
//! the feature `fusion`, and for `Autodiff` over either with the kernels'
//! backward as the op's backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend};
use burn::tensor::{DType, Shape as BurnShape};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use wgpu_batchnorm::{Layout, Norm, NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers, NormStats, Options, Shape};

use crate::backend::{fail, kernel_dtype, on_runner, run, tracked, Bound, SavedState};
use crate::device::context;

/// Which op of the family a [`NormBackend`] call computes, over which axes of `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowNorm {
    /// Layer norm over the last axis (`LayerNorm`).
    Layer,
    /// RMS norm over the last axis (`RmsNorm`): no mean, no `beta`.
    Rms,
    /// Group norm of `[batch, channels, ...]` in this many groups of channels (`GroupNorm`).
    Group(usize),
    /// Instance norm of `[batch, channels, ...]`: each sample's channel alone (`InstanceNorm`).
    Instance,
}

impl RowNorm {
    /// The kernels' descriptor of the op over `dims`.
    pub fn op(self, dims: &[usize]) -> wgpu_batchnorm::Result<Norm> {
        let last = dims.last().copied().unwrap_or(0);
        let channels_first = || Shape::new(dims, Layout::ChannelsFirst);
        Ok(match self {
            RowNorm::Layer => Norm::Layer { dims: dims.to_vec(), normalized_shape: vec![last] },
            RowNorm::Rms => Norm::Rms { dims: dims.to_vec(), normalized_shape: vec![last] },
            RowNorm::Group(groups) => Norm::Group { shape: channels_first()?, groups },
            RowNorm::Instance => Norm::Instance(channels_first()?),
        })
    }

    /// Rows of statistics over `dims`: the length of `mean` and `rstd`.
    fn rows(self, dims: &[usize]) -> usize {
        let numel: usize = dims.iter().product();
        match self {
            RowNorm::Layer | RowNorm::Rms => numel / dims.last().copied().unwrap_or(1).max(1),
            RowNorm::Group(groups) => dims[0] * groups,
            RowNorm::Instance => dims[0] * dims.get(1).copied().unwrap_or(1),
        }
    }

    fn centers(self) -> bool {
        self != RowNorm::Rms
    }
}

/// The family as backend operations. `x` and `dy` are f32, f16 or bf16
/// (layer and RMS norm normalize the last axis; group and instance norm take
/// `[batch, channels, ...]`), `y` and `dx` the same; `gamma` and `beta` have
/// one value per normalized feature (per channel for group and instance norm),
/// in any of those dtypes. Without `affine` they are not read (pass any
/// tensor), and RMS norm never reads `beta`.
#[backend_extension(Cube, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait NormBackend: Backend {
    /// Forward at the input's own statistics: `(y, mean, rstd)`, the
    /// statistics f32, one per row ([`RowNorm`]); RMS norm's `mean` is not
    /// written.
    #[allow(clippy::type_complexity)]
    #[fusion(meta = |x, _gamma, _beta, kind, _affine, _epsilon| (x.clone(), rows_f32(x, kind), rows_f32(x, kind)))]
    fn norm_forward_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `(dx, dgamma, dbeta)` at the forward's saved `mean` and `rstd`;
    /// without `affine` (and `dbeta` for RMS norm) the gradients returned in
    /// their place are not gradients.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |_dy, x, gamma, _mean, _rstd, _kind, _affine, _epsilon| (x.clone(), gamma.clone(), gamma.clone()))]
    fn norm_backward_wgpu(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `mean`'s and `rstd`'s description for Burn's lazy stream: one f32 per row.
#[cfg(feature = "fusion")]
fn rows_f32(x: &TensorSpec, kind: &RowNorm) -> TensorSpec {
    let dims: Vec<usize> = x.shape.iter().copied().collect();
    TensorSpec::new(BurnShape::new([kind.rows(&dims)]), DType::F32)
}

fn dims_of(x: &CubeTensor) -> Vec<usize> {
    x.meta.shape().iter().copied().collect()
}

fn options(op: &Norm, x: &CubeTensor, affine: bool, epsilon: f64) -> Options {
    Options { eps: epsilon as f32, affine, track_running_stats: false, dtype: kernel_dtype(x.dtype), ..op.default_options() }
}

impl NormBackend for CubeBackend {
    fn norm_forward_wgpu(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let ctx = context(&x.device).unwrap_or_else(|e| fail("no context", e));
        let dims = dims_of(&x);
        let op = kind.op(&dims).unwrap_or_else(|e| fail("input shape", e));
        let options = options(&op, &x, affine, epsilon);
        on_runner(x.client.clone(), move || {
            let x = Bound::new(x, &ctx);
            let gamma = affine.then(|| Bound::per_channel(gamma, &ctx));
            let beta = (affine && kind.centers()).then(|| Bound::per_channel(beta, &ctx));
            let y = Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype);
            let [mean, rstd] = std::array::from_fn(|_| Bound::empty(&x.tensor, BurnShape::new([kind.rows(&dims)]), DType::F32));
            run(&ctx, &x.tensor, |encoder| {
                let buffers = NormForwardBuffers {
                    x: x.slice(),
                    y: y.slice(),
                    stats: NormStats { mean: kind.centers().then(|| mean.slice()), rstd: rstd.slice() },
                    gamma: gamma.as_ref().map(Bound::slice),
                    beta: beta.as_ref().map(Bound::slice),
                    running: None,
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm(encoder, &op, &options, &buffers).unwrap_or_else(|e| fail("forward", e));
            });
            (y.tensor, mean.tensor, rstd.tensor)
        })
    }

    fn norm_backward_wgpu(
        dy: CubeTensor,
        x: CubeTensor,
        gamma: CubeTensor,
        mean: CubeTensor,
        rstd: CubeTensor,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let ctx = context(&x.device).unwrap_or_else(|e| fail("no context", e));
        if dy.dtype != x.dtype {
            fail("dy's dtype", format!("{:?}, but x is {:?}", dy.dtype, x.dtype));
        }
        let dims = dims_of(&x);
        let op = kind.op(&dims).unwrap_or_else(|e| fail("input shape", e));
        let options = options(&op, &x, affine, epsilon);
        let params = op.params().unwrap_or_else(|e| fail("input shape", e));
        let placeholder = gamma.clone();
        let gamma_dtype = gamma.dtype;
        on_runner(x.client.clone(), move || {
            let [dy, x] = [dy, x].map(|t| Bound::new(t, &ctx));
            let gamma = affine.then(|| Bound::per_channel(gamma, &ctx));
            let mean = kind.centers().then(|| Bound::per_channel(mean, &ctx));
            let rstd = Bound::per_channel(rstd, &ctx);
            let dx = Bound::empty(&x.tensor, x.tensor.meta.shape().clone(), x.tensor.dtype);
            let grad = || Bound::empty(&x.tensor, BurnShape::new([params]), DType::F32);
            let dgamma = affine.then(grad);
            let dbeta = (affine && kind.centers()).then(grad);
            run(&ctx, &x.tensor, |encoder| {
                let buffers = NormBackwardBuffers {
                    dy: dy.slice(),
                    x: x.slice(),
                    dx: dx.slice(),
                    stats: NormStats { mean: mean.as_ref().map(Bound::slice), rstd: rstd.slice() }.into(),
                    gamma: gamma.as_ref().map(Bound::slice),
                    param_grads: dgamma
                        .as_ref()
                        .map(|g| NormParamGradBuffers { dgamma: g.slice(), dbeta: dbeta.as_ref().map(Bound::slice) }),
                    z: None,
                    dresidual: None,
                    workspace: None,
                };
                ctx.encode_norm_backward(encoder, &op, &options, &buffers).unwrap_or_else(|e| fail("backward", e));
            });
            let into = |g: Option<Bound>| g.map_or_else(|| placeholder.clone(), |g| g.into_dtype(gamma_dtype));
            (dx.tensor, into(dgamma), into(dbeta))
        })
    }
}

/// The family's backward, for one op and whether it has affine parameters.
#[derive(Debug)]
struct NormOps {
    kind: RowNorm,
    affine: bool,
}

impl<B: NormBackend> Backward<B, 3> for NormOps {
    type State = SavedState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, mean, rstd, epsilon) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let (dx, dgamma, dbeta) = B::norm_backward_wgpu(dy, x, gamma, mean, rstd, self.kind, self.affine, epsilon);
        let with_beta = self.affine && self.kind.centers();
        for (node, grad, real) in [(node_x, dx, true), (node_gamma, dgamma, self.affine), (node_beta, dbeta, with_beta)] {
            if let Some(node) = node.filter(|_| real) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: NormBackend, C: CheckpointStrategy> NormBackend for Autodiff<B, C> {
    fn norm_forward_wgpu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let ops = NormOps { kind, affine }.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        let forward = || {
            let (y, mean, rstd) =
                B::norm_forward_wgpu(x.primitive().clone(), gamma.primitive().clone(), beta.primitive().clone(), kind, affine, epsilon);
            (y, (mean, rstd))
        };
        let (y, (mean, rstd)) = tracked(ops, &x, &gamma, forward, |x, gamma, _, (mean, rstd): &(FloatTensor<B>, FloatTensor<B>)| {
            (x, gamma, mean.clone(), rstd.clone(), epsilon)
        });
        (y, Self::from_inner(mean), Self::from_inner(rstd))
    }

    /// Not differentiable itself: computed on the inner backend, untracked.
    fn norm_backward_wgpu(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        kind: RowNorm,
        affine: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::norm_backward_wgpu(
            dy.into_primitive(),
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            rstd.into_primitive(),
            kind,
            affine,
            epsilon,
        );
        (Self::from_inner(dx), Self::from_inner(dgamma), Self::from_inner(dbeta))
    }
}
