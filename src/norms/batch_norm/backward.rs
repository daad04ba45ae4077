//! Backward: `dx`, `dgamma`, `dbeta` in training mode (batch statistics) or
//! inference mode (running statistics as constants).
//!
//! Four dispatches in one compute pass: `backward_prepare` (per channel),
//! `backward_reduce_inner`, `backward_reduce_lanes` or `backward_reduce_rows`
//! (one read of `x` and `dy`), `backward_finalize` (per channel), `backward_dx`
//! (`x` and `dy` again, `dx` written); or one, `backward_lanes`, where each
//! channel item fits one invocation's loop (`Tuning::one_dispatch`).

use std::sync::Arc;

use crate::context::{GpuContext, PreparedKey};
use crate::device::Unused;
use crate::error::{Error, Result};
use crate::ops::{
    all, channels, from_words, host_data, per_channel, per_window, BackwardStats, EpilogueBackwardInputs, Gradients, NormStats,
};
use crate::options::{Element, Options};
use crate::plan::Windowed;
use crate::prepared::{Arg, Bound, Prepared, Slot, SlotKind, Step};
use crate::shaders::{Fusion, Kernel, FLAG_AFFINE, FLAG_INFERENCE, FLAG_WRITE_GRADS};
use crate::shape::Shape;

/// Buffer slices of a backward pass. Tensors hold the options' `dtype`, the rest f32; all need `STORAGE` usage and
/// start at a multiple of [`GpuContext::slice_alignment`]; no output may
/// overlap another argument.
///
/// Through a fused epilogue (`options.epilogue`), `dy` is the gradient of the
/// fused output, `dL/dz`, masked on the fly by `z` where there is an activation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackwardBuffers<'a> {
    /// Upstream gradient, `numel` values of the options' `dtype`: `dL/dy`, or `dL/dz` through a fused epilogue.
    pub dy: wgpu::BufferSlice<'a>,
    /// The forward pass's input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Gradient out, `numel` values of the options' `dtype`.
    pub dx: wgpu::BufferSlice<'a>,
    /// The forward pass's statistics, `C` f32s each.
    pub stats: BackwardStats<wgpu::BufferSlice<'a>>,
    /// `gamma`, exactly when `options.affine`.
    pub gamma: Option<wgpu::BufferSlice<'a>>,
    /// `dgamma` and `dbeta` out (`C` f32s each), or `None` to skip them;
    /// only with `options.affine`.
    pub param_grads: Option<ParamGradBuffers<'a>>,
    /// The fused forward's output `z`, `numel` values of the options' `dtype`, exactly when
    /// `options.epilogue` has an activation ([`Epilogue::needs_z`](crate::Epilogue::needs_z)).
    pub z: Option<wgpu::BufferSlice<'a>>,
    /// The residual's gradient out, `numel` values of the options' `dtype`, exactly when `options.epilogue.residual`.
    pub dresidual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the dispatches, `workspace_bytes()` bytes; `None`: the op's own.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

/// Output slices for the parameter gradients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParamGradBuffers<'a> {
    /// `sum dy * xhat` per channel.
    pub dgamma: wgpu::BufferSlice<'a>,
    /// `sum dy` per channel.
    pub dbeta: wgpu::BufferSlice<'a>,
}

const DY: usize = 0;
const X: usize = 1;
const DX: usize = 2;
const MEAN: usize = 3;
const INVSTD_OR_VAR: usize = 4;
const GAMMA: usize = 5;
const DGAMMA: usize = 6;
const DBETA: usize = 7;
const Z: usize = 8;
const DRESIDUAL: usize = 9;

/// The slots of a backward whose statistics slots are named `mean` and `stat`.
const fn slots(mean: &'static str, stat: &'static str) -> [Slot; 10] {
    [
        Slot { name: "dy", kind: SlotKind::Tensor, output: false },
        Slot { name: "x", kind: SlotKind::Tensor, output: false },
        Slot { name: "dx", kind: SlotKind::Tensor, output: true },
        Slot { name: mean, kind: SlotKind::PerChannel(1), output: false },
        Slot { name: stat, kind: SlotKind::PerChannel(1), output: false },
        Slot { name: "gamma", kind: SlotKind::PerChannel(1), output: false },
        Slot { name: "dgamma", kind: SlotKind::PerChannel(1), output: true },
        Slot { name: "dbeta", kind: SlotKind::PerChannel(1), output: true },
        Slot { name: "z", kind: SlotKind::Tensor, output: false },
        Slot { name: "dresidual", kind: SlotKind::Tensor, output: true },
    ]
}

/// At the forward's saved statistics, and at the running ones.
const SAVED_SLOTS: [Slot; 10] = slots("mean", "rstd");
const RUNNING_SLOTS: [Slot; 10] = slots("running_mean", "running_var");

/// A backward planned for one shape, [`Options`], mode (batch or running
/// statistics) and whether it writes `dgamma` and `dbeta`; see
/// `PreparedForwardTrain`.
#[derive(Debug, Clone)]
pub(crate) struct PreparedBackward {
    prepared: Arc<Prepared>,
    options: Options,
    batch: bool,
    param_grads: bool,
}

impl PreparedBackward {
    /// The program it records: its slot sizes, workspace and steps.
    pub(crate) fn program(&self) -> &Prepared {
        &self.prepared
    }

    /// The shape it was prepared for.
    pub fn shape(&self) -> &Shape {
        self.prepared.shape()
    }

    /// Records the op over `b` into `encoder`: every argument is checked
    /// first, and nothing is recorded when one is wrong. The slices are bound
    /// for this record alone: the op keeps none of them.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &BackwardBuffers<'_>) -> Result<()> {
        self.prepared.record(encoder, &self.slices(b)?, b.workspace, None)
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]).
    pub fn bind(&self, b: &BackwardBuffers<'_>) -> Result<Bound> {
        Ok(Bound::new(self.prepared.clone(), self.prepared.bind(&self.slices(b)?, b.workspace)?, None))
    }

    /// `b` in slot order, checked against the options and the prepared mode.
    fn slices<'a>(&self, b: &BackwardBuffers<'a>) -> Result<[Option<wgpu::BufferSlice<'a>>; 10]> {
        self.options.check_affine(b.gamma.is_some())?;
        self.options.epilogue.check_z(b.z.is_some())?;
        self.options.epilogue.check_residual("dresidual", b.dresidual.is_some())?;
        if b.stats.is_saved() != self.batch || b.param_grads.is_some() != self.param_grads {
            return Err(Error::OptionsMismatch {
                what: "backward statistics or parameter gradients",
                reason: format!("prepared for batch statistics {}, parameter gradients {}", self.batch, self.param_grads),
            });
        }
        let (mean, invstd_or_var) = match b.stats {
            BackwardStats::Saved(s) => (batch_mean(s.mean)?, s.rstd),
            BackwardStats::Running { mean, var } => (mean, var),
        };
        Ok([
            Some(b.dy),
            Some(b.x),
            Some(b.dx),
            Some(mean),
            Some(invstd_or_var),
            b.gamma,
            b.param_grads.map(|g| g.dgamma),
            b.param_grads.map(|g| g.dbeta),
            b.z,
            b.dresidual,
        ])
    }
}

/// Batch norm's saved mean, which it always has.
pub(crate) fn batch_mean<T>(mean: Option<T>) -> Result<T> {
    mean.ok_or_else(|| Error::OptionsMismatch { what: "mean", reason: "batch norm centers, but no mean was given".into() })
}

/// The backward at the running statistics differentiates the inference
/// forward, which needs them tracked.
fn check_mode(options: &Options, batch: bool) -> Result<()> {
    if batch {
        return Ok(());
    }
    options.check_running(true)
}

impl GpuContext {
    /// Plans a backward for `shape` and `options`, in training mode (`batch`:
    /// from `save_mean` and `save_invstd`) or inference mode, writing `dgamma`
    /// and `dbeta` where `param_grads` (which needs `options.affine`).
    pub(crate) fn prepare_backward(&self, shape: &Shape, options: &Options, batch: bool, param_grads: bool) -> Result<PreparedBackward> {
        check_mode(options, batch)?;
        let prepared = Arc::new(self.plan_backward(shape, options, batch, param_grads)?);
        Ok(PreparedBackward { prepared, options: *options, batch, param_grads })
    }

    pub(crate) fn cached_backward(&self, shape: &Shape, options: &Options, batch: bool, param_grads: bool) -> Result<PreparedBackward> {
        check_mode(options, batch)?;
        let flags = u32::from(options.affine) | u32::from(batch) << 1 | u32::from(param_grads) << 2;
        let key = PreparedKey::new("backward", shape, [options.eps.to_bits(), 0], flags).fused(&options.epilogue).typed(options.dtype);
        let prepared = self.cached(key, || self.plan_backward(shape, options, batch, param_grads))?;
        Ok(PreparedBackward { prepared, options: *options, batch, param_grads })
    }

    fn plan_backward(&self, shape: &Shape, options: &Options, batch: bool, param_grads: bool) -> Result<Prepared> {
        options.validate()?;
        if param_grads && !options.affine {
            return Err(Error::OptionsMismatch { what: "dgamma and dbeta", reason: "affine is false but they were asked for".into() });
        }
        if batch {
            shape.check_trainable()?;
        }
        self.check_alive()?;
        let plan = self.plan(shape, options.dtype)?;
        let fusion = Fusion::of(&options.epilogue);
        let z = options.epilogue.needs_z().then_some((5, Arg::Tensor(Z)));
        let dresidual = options.epilogue.residual.then_some((6, Arg::Tensor(DRESIDUAL)));
        let steps = match (plan.full.lanes_grid, &plan.windows[..]) {
            // It binds 8 storage buffers, and z and dresidual where the epilogue has them.
            (Some(grid), [_]) if self.binds_storage(8 + u32::from(z.is_some()) + u32::from(dresidual.is_some())) => {
                let mut args = vec![
                    (0, Arg::Uniform),
                    (1, Arg::Tensor(X)),
                    (2, Arg::Tensor(DY)),
                    (3, Arg::Tensor(DX)),
                    (4, channels(MEAN, Unused::Read)),
                    (7, channels(INVSTD_OR_VAR, Unused::Read)),
                    (8, channels(GAMMA, Unused::Read)),
                    (9, channels(DGAMMA, Unused::WriteA)),
                    (10, channels(DBETA, Unused::WriteB)),
                ];
                args.extend(z.into_iter().chain(dresidual));
                vec![Step { kernel: Kernel::BackwardLanes, variant: plan.full.variant().fused(fusion), grid, window: None, args }]
            }
            _ => self.backward_passes(&plan, fusion, z, dresidual),
        };
        let slots: &'static [Slot] = if batch { &SAVED_SLOTS } else { &RUNNING_SLOTS };
        Prepared::new(&self.parts(), shape, &plan, self.slice_alignment(), slots, &[], steps, |g| {
            g.eps = options.eps;
            g.slope = options.epilogue.activation.slope();
            g.flags = if batch { 0 } else { FLAG_INFERENCE };
            if options.affine {
                g.flags |= FLAG_AFFINE;
            }
            if param_grads {
                g.flags |= FLAG_WRITE_GRADS;
            }
        })
    }

    /// The backward as four dispatches: the mean into the parameter buffer,
    /// the partial sums, their merge into the dx parameters, and dx.
    fn backward_passes(&self, plan: &Windowed, fusion: Fusion, z: Option<(u32, Arg)>, dresidual: Option<(u32, Arg)>) -> Vec<Step> {
        let mut steps =
            vec![per_channel(plan, Kernel::BackwardPrepare, &[(0, Arg::Uniform), (6, Arg::Params), (7, channels(MEAN, Unused::Read))])];
        let mut reduce = vec![(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Tensor(DY)), (3, Arg::Params), (4, Arg::Partials)];
        reduce.extend(z);
        let reduction = |p: &crate::plan::Plan| self.reduction_variant(p).fused(fusion.without_residual());
        steps.extend(per_window(plan, |p| p.reduce_kernel(), reduction, |p| p.reduce_grid, &reduce));
        let finalize = [
            (0, Arg::Uniform),
            (1, Arg::Partials),
            (2, channels(GAMMA, Unused::Read)),
            (3, channels(INVSTD_OR_VAR, Unused::Read)),
            (4, channels(DGAMMA, Unused::WriteA)),
            (5, channels(DBETA, Unused::WriteB)),
            (6, Arg::Params),
        ];
        steps.push(per_channel(plan, Kernel::BackwardFinalize, &finalize));
        let mut dx = vec![(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Tensor(DY)), (3, Arg::Params), (4, Arg::Tensor(DX))];
        dx.extend(z.into_iter().chain(dresidual));
        steps.extend(per_window(plan, |_| Kernel::BackwardDx, |p| p.variant().fused(fusion), |p| p.stream_grid, &dx));
        steps
    }

    /// Records a backward pass into `encoder`, through a prepared op the
    /// context keeps. `options.eps` is the forward pass's: the training
    /// backward needs it where two values per channel make the textbook
    /// formula cancel (docs/SPEC.md, Backward).
    pub(crate) fn encode_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &Options,
        b: &BackwardBuffers<'_>,
    ) -> Result<()> {
        self.cached_backward(shape, options, b.stats.is_saved(), b.param_grads.is_some())?.record(encoder, b)
    }

    /// Batch norm's backward on host arrays, through its epilogue where
    /// `options` has one: `dy` is then `dL/dz`, masked by `z` (given exactly
    /// when the epilogue has an activation), and `dresidual` comes back
    /// exactly when it has a residual.
    pub(crate) async fn backward_epilogue<E: Element>(
        &self,
        inputs: &EpilogueBackwardInputs<'_, E>,
        stats: BackwardStats<&[f32]>,
        gamma: Option<&[f32]>,
        options: &Options,
    ) -> Result<Gradients<E>> {
        options.validate()?;
        options.check_affine(gamma.is_some())?;
        options.epilogue.check_z(inputs.z.is_some())?;
        crate::options::check_element::<E>(options.dtype)?;
        let _serial = self.serialize().await;
        let shape = Shape::new(inputs.x.shape(), inputs.layout)?;
        shape.check_same_dims("dy", inputs.dz.shape())?;
        if let Some(z) = &inputs.z {
            shape.check_same_dims("z", z.shape())?;
        }
        let (a, b) = match stats {
            BackwardStats::Saved(s) => (("mean", batch_mean(s.mean)?), ("rstd", s.rstd)),
            BackwardStats::Running { mean, var } => (("running_mean", mean), ("running_var", var)),
        };
        shape.check_channel_len(a.0, a.1.len())?;
        shape.check_channel_len(b.0, b.1.len())?;
        if let Some(g) = gamma {
            shape.check_channel_len("gamma", g.len())?;
        }
        // Planned (sizes checked) before the arrays are copied.
        let batch = stats.is_saved();
        let op = self.cached_backward(&shape, options, batch, gamma.is_some())?;
        self.check_alive()?;
        let c = shape.channels();
        let dx = self.tensor_storage("dx", options.dtype, shape.numel())?;
        let (dyb, xb) = (self.upload_tensor("dy", &host_data(&inputs.dz))?, self.upload_tensor("x", &host_data(&inputs.x))?);
        let zb = inputs.z.as_ref().map(|z| self.upload_tensor("z", &host_data(z))).transpose()?;
        let dresidual = options.epilogue.residual.then(|| self.tensor_storage("dresidual", options.dtype, shape.numel())).transpose()?;
        let (sa, sb) = (self.upload(a.0, a.1)?, self.upload(b.0, b.1)?);
        let gamma = gamma.map(|g| self.upload("gamma", g)).transpose()?;
        let grads = match &gamma {
            Some(_) => Some((self.storage("dgamma", c)?, self.storage("dbeta", c)?)),
            None => None,
        };
        let stats = match stats {
            BackwardStats::Saved(_) => BackwardStats::Saved(NormStats { mean: Some(all(&sa)), rstd: all(&sb) }),
            BackwardStats::Running { .. } => BackwardStats::Running { mean: all(&sa), var: all(&sb) },
        };
        let buffers = BackwardBuffers {
            dy: all(&dyb),
            x: all(&xb),
            dx: all(&dx),
            stats,
            gamma: gamma.as_ref().map(all),
            param_grads: grads.as_ref().map(|(dgamma, dbeta)| ParamGradBuffers { dgamma: all(dgamma), dbeta: all(dbeta) }),
            z: zb.as_ref().map(all),
            dresidual: dresidual.as_ref().map(all),
            workspace: None,
        };
        self.run(|encoder| op.record(encoder, &buffers)).await?;
        self.download_gradients(&shape, &dx, dresidual.as_ref(), grads.as_ref()).await
    }

    /// Reads back what a backward wrote: `dx`, `dresidual` and `dgamma` and
    /// `dbeta` where they were written (the caller holds the serial lock).
    pub(crate) async fn download_gradients<E: Element>(
        &self,
        shape: &Shape,
        dx: &wgpu::Buffer,
        dresidual: Option<&wgpu::Buffer>,
        grads: Option<&(wgpu::Buffer, wgpu::Buffer)>,
    ) -> Result<Gradients<E>> {
        let c = shape.channels();
        let mut reads = vec![(dx, E::DTYPE.tensor_words(shape.numel()))];
        reads.extend(dresidual.map(|dr| (dr, E::DTYPE.tensor_words(shape.numel()))));
        if let Some((dgamma, dbeta)) = grads {
            reads.extend([(dgamma, c), (dbeta, c)]);
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
        let dx = from_words(out.next().unwrap_or_default(), shape.dims())?;
        let dresidual = match dresidual {
            Some(_) => Some(from_words(out.next().unwrap_or_default(), shape.dims())?),
            None => None,
        };
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next(), dresidual })
    }
}
