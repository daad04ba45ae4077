//! Training forward: batch statistics, normalize-scale-shift, running statistics.
//!
//! Three dispatches in one compute pass: `stats_inner.wgsl`,
//! `stats_lanes.wgsl` or `stats_rows.wgsl` (partials), `finalize_train.wgsl`,
//! `apply.wgsl`; or one: `forward_fused.wgsl`, where every channel fits in one
//! workgroup's registers, or `forward_lanes.wgsl`, where each channel item
//! fits one invocation's loop (`Tuning::one_dispatch`).
//! Memory traffic: `x` twice (once in `forward_fused`), `y` once.

use std::sync::Arc;

use ndarray::ArrayD;

use crate::context::{GpuContext, PreparedKey};
use crate::device::Unused;
use crate::error::Result;
use crate::layout::Layout;
use crate::ops::{all, channels, from_words, host_data, per_channel, per_window, ChannelAffine, RunningStats};
use crate::options::{Element, Momentum, Options};
use crate::prepared::{Arg, Bound, Prepared, Slot, SlotKind, Step};
use crate::shaders::{Fusion, Kernel, FLAG_AFFINE, FLAG_RUNNING};
use crate::shape::Shape;

/// Running statistics on the GPU, updated in place.
#[derive(Debug, Clone, Copy)]
pub struct RunningBuffers<'a> {
    /// Running mean, `C` f32s.
    pub mean: wgpu::BufferSlice<'a>,
    /// Running variance, `C` f32s.
    pub var: wgpu::BufferSlice<'a>,
    /// Training batches seen before this one: the batch's weight is
    /// `options.momentum.factor(num_batches_tracked + 1)` ([`Momentum::factor`]).
    pub num_batches_tracked: u64,
}

/// Buffer slices of a training forward pass. Tensors hold the options' `dtype`, the rest f32; all need `STORAGE`
/// usage and start at a multiple of [`GpuContext::slice_alignment`]; they may
/// be slices of one buffer as long as no output overlaps another argument.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardTrainBuffers<'a> {
    /// Input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Output, `numel` values of the options' `dtype`; must not overlap `x` (backward reads `x`).
    pub y: wgpu::BufferSlice<'a>,
    /// Batch mean out, `C` f32s.
    pub save_mean: wgpu::BufferSlice<'a>,
    /// `1 / sqrt(var + eps)` out, `C` f32s.
    pub save_invstd: wgpu::BufferSlice<'a>,
    /// `gamma` and `beta`, exactly when `options.affine`.
    pub affine: Option<ChannelAffine<wgpu::BufferSlice<'a>>>,
    /// Running statistics to update, exactly when `options.track_running_stats`.
    pub running: Option<RunningBuffers<'a>>,
    /// The residual added before the activation, `numel` values of the options' `dtype`, exactly when
    /// `options.epilogue.residual`; `y` may be this very slice (in place).
    pub residual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the dispatches, `workspace_bytes()` bytes; `None`: the op's own.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

/// Outputs of batch norm's host forward: `y` as the input's element type,
/// the statistics f32.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TrainOutput<E = f32> {
    /// Normalized output, shaped like `x`.
    pub y: ArrayD<E>,
    /// Batch mean per channel.
    pub save_mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub save_invstd: Vec<f32>,
}

const X: usize = 0;
const Y: usize = 1;
const SAVE_MEAN: usize = 2;
const SAVE_INVSTD: usize = 3;
const GAMMA: usize = 4;
const BETA: usize = 5;
const RUNNING_MEAN: usize = 6;
const RUNNING_VAR: usize = 7;
const RESIDUAL: usize = 8;

const SLOTS: [Slot; 9] = [
    Slot { name: "x", kind: SlotKind::Tensor, output: false },
    Slot { name: "y", kind: SlotKind::Tensor, output: true },
    Slot { name: "mean", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "rstd", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "gamma", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "beta", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_mean", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "running_var", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "residual", kind: SlotKind::Tensor, output: false },
];

/// Batch norm's training forward planned for one shape and [`Options`]
/// (the op model's [`PreparedNorm`](crate::PreparedNorm) for
/// [`Norm::Batch`](crate::Norm::Batch)).
#[derive(Debug, Clone)]
pub(crate) struct PreparedForwardTrain {
    prepared: Arc<Prepared>,
    options: Options,
}

impl PreparedForwardTrain {
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
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &ForwardTrainBuffers<'_>) -> Result<()> {
        let factor = b.running.and_then(|r| self.options.momentum.per_record(r.num_batches_tracked));
        self.prepared.record(encoder, &self.slices(b)?, b.workspace, factor)
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]);
    /// [`Bound::record_step`] records later steps with their own batch counts.
    pub fn bind(&self, b: &ForwardTrainBuffers<'_>) -> Result<Bound> {
        let bindings = self.prepared.bind(&self.slices(b)?, b.workspace)?;
        Ok(Bound::new(self.prepared.clone(), bindings, b.running.map(|r| (self.options.momentum, r.num_batches_tracked))))
    }

    /// `b` in slot order, checked against the options.
    fn slices<'a>(&self, b: &ForwardTrainBuffers<'a>) -> Result<[Option<wgpu::BufferSlice<'a>>; 9]> {
        self.options.check_affine(b.affine.is_some())?;
        self.options.check_running(b.running.is_some())?;
        self.options.epilogue.check_residual("residual", b.residual.is_some())?;
        Ok([
            Some(b.x),
            Some(b.y),
            Some(b.save_mean),
            Some(b.save_invstd),
            b.affine.map(|a| a.gamma),
            b.affine.map(|a| a.beta),
            b.running.map(|r| r.mean),
            b.running.map(|r| r.var),
            b.residual,
        ])
    }
}

impl GpuContext {
    /// Plans a training forward for `shape` and `options`.
    pub(crate) fn prepare_forward_train(&self, shape: &Shape, options: &Options) -> Result<PreparedForwardTrain> {
        Ok(PreparedForwardTrain { prepared: Arc::new(self.plan_forward_train(shape, options)?), options: *options })
    }

    /// The context's cached prepared op for `shape` and `options`.
    pub(crate) fn cached_forward_train(&self, shape: &Shape, options: &Options) -> Result<PreparedForwardTrain> {
        let flags = u32::from(options.affine) | u32::from(options.track_running_stats) << 1 | (options.running_variance as u32) << 2;
        let momentum = match options.momentum {
            Momentum::Exponential(m) => m.to_bits(),
            Momentum::CumulativeAverage => u32::MAX,
        };
        let key = PreparedKey::new("forward_train", shape, [options.eps.to_bits(), momentum], flags)
            .fused(&options.epilogue)
            .typed(options.dtype);
        let prepared = self.cached(key, || self.plan_forward_train(shape, options))?;
        Ok(PreparedForwardTrain { prepared, options: *options })
    }

    fn plan_forward_train(&self, shape: &Shape, options: &Options) -> Result<Prepared> {
        options.validate()?;
        shape.check_trainable()?;
        self.check_alive()?;
        let plan = self.plan(shape, options.dtype)?;
        let gamma_beta = [(2, channels(GAMMA, Unused::Read)), (3, channels(BETA, Unused::Read))];
        let saved = [(4, Arg::Channels(SAVE_MEAN, Unused::WriteA)), (5, Arg::Channels(SAVE_INVSTD, Unused::WriteB))];
        let running = [(7, channels(RUNNING_MEAN, Unused::WriteA)), (8, channels(RUNNING_VAR, Unused::WriteB))];
        let fusion = Fusion::of(&options.epilogue);
        let residual = options.epilogue.residual.then_some((9, Arg::Tensor(RESIDUAL)));
        // The one-dispatch kernels bind 8 storage buffers, 9 with a residual.
        let bindable = self.binds_storage(8 + u32::from(options.epilogue.residual));
        // Every channel fits in one workgroup's registers (x read once), or
        // each channel item in one invocation (x read twice, the second time
        // from the host's caches): one dispatch, with the same bindings.
        let one_dispatch = match (plan.full.fused_grid, plan.full.lanes_grid) {
            (Some(grid), _) => Some((Kernel::ForwardFused, plan.full.fused_variant(), grid)),
            (None, Some(grid)) => Some((Kernel::ForwardLanes, plan.full.variant(), grid)),
            (None, None) => None,
        };
        let steps = match (one_dispatch, &plan.windows[..]) {
            (Some((kernel, variant, grid)), [_]) if bindable => {
                let mut args = vec![(0, Arg::Uniform), (1, Arg::Tensor(X)), (6, Arg::Tensor(Y))];
                args.extend(gamma_beta.into_iter().chain(saved).chain(running).chain(residual));
                vec![Step { kernel, variant: variant.fused(fusion), grid, window: None, args }]
            }
            _ => {
                let mut steps = per_window(
                    &plan,
                    |p| p.stats_kernel(),
                    |p| self.reduction_variant(p),
                    |p| p.reduce_grid,
                    &[(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Partials)],
                );
                let mut args = vec![(0, Arg::Uniform), (1, Arg::Partials), (6, Arg::Params)];
                args.extend(gamma_beta.into_iter().chain(saved).chain(running));
                steps.push(per_channel(&plan, Kernel::FinalizeTrain, &args));
                let mut apply = vec![(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Params), (3, Arg::Tensor(Y))];
                apply.extend(residual);
                steps.extend(per_window(&plan, |_| Kernel::Apply, |p| p.variant().fused(fusion), |p| p.stream_grid, &apply));
                steps
            }
        };
        let m = shape.per_channel();
        Prepared::new(&self.parts(), shape, &plan, self.slice_alignment(), &SLOTS, &[(Y, RESIDUAL)], steps, |g| {
            g.eps = options.eps;
            g.slope = options.epilogue.activation.slope();
            if options.affine {
                g.flags |= FLAG_AFFINE;
            }
            if options.track_running_stats {
                g.flags |= FLAG_RUNNING;
                g.set_factor(options.momentum.factor(1));
                g.unbias = options.running_variance.factor(m) as f32;
            }
        })
    }

    /// Records batch norm's training forward into `encoder`, through a prepared op the context keeps.
    pub(crate) fn encode_forward_train(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &Options,
        b: &ForwardTrainBuffers<'_>,
    ) -> Result<()> {
        self.cached_forward_train(shape, options)?.record(encoder, b)
    }

    /// Batch norm's training forward on host arrays, through its epilogue
    /// where `options` has one (`residual` exactly when it has a residual):
    /// uploads, runs, downloads; `running` is updated with `options.momentum`
    /// and `options.running_variance`.
    pub(crate) async fn forward_train_epilogue<E: Element>(
        &self,
        x: &ndarray::ArrayViewD<'_, E>,
        residual: Option<&ndarray::ArrayViewD<'_, E>>,
        layout: Layout,
        affine: Option<ChannelAffine<&[f32]>>,
        running: Option<&mut RunningStats>,
        options: &Options,
    ) -> Result<TrainOutput<E>> {
        options.validate()?;
        options.check_affine(affine.is_some())?;
        options.check_running(running.is_some())?;
        options.epilogue.check_residual("residual", residual.is_some())?;
        crate::options::check_element::<E>(options.dtype)?;
        let _serial = self.serialize().await;
        let shape = Shape::new(x.shape(), layout)?;
        if let Some(r) = residual {
            shape.check_same_dims("residual", r.shape())?;
        }
        let c = shape.channels();
        if let Some(a) = &affine {
            shape.check_channel_len("gamma", a.gamma.len())?;
            shape.check_channel_len("beta", a.beta.len())?;
        }
        if let Some(r) = &running {
            shape.check_channel_len("running_mean", r.mean.len())?;
            shape.check_channel_len("running_var", r.var.len())?;
        }
        // Planned (sizes checked) before the arrays are copied.
        let op = self.cached_forward_train(&shape, options)?;
        self.check_alive()?;
        let xb = self.upload_tensor("x", &host_data(x))?;
        let rb = residual.map(|r| self.upload_tensor("residual", &host_data(r))).transpose()?;
        let y = self.tensor_storage("y", options.dtype, shape.numel())?;
        let (save_mean, save_invstd) = (self.storage("save_mean", c)?, self.storage("save_invstd", c)?);
        let affine_buffers = self.upload_affine(affine)?;
        let running_buffers = match &running {
            Some(r) => Some((self.upload("running_mean", &r.mean)?, self.upload("running_var", &r.var)?)),
            None => None,
        };
        let tracked = running.as_ref().map_or(0, |r| r.num_batches_tracked);
        let buffers = ForwardTrainBuffers {
            x: all(&xb),
            y: all(&y),
            save_mean: all(&save_mean),
            save_invstd: all(&save_invstd),
            affine: affine_buffers.as_ref().map(|a| ChannelAffine { gamma: all(&a.gamma), beta: all(&a.beta) }),
            running: running_buffers.as_ref().map(|(mean, var)| RunningBuffers {
                mean: all(mean),
                var: all(var),
                num_batches_tracked: tracked,
            }),
            residual: rb.as_ref().map(all),
            workspace: None,
        };
        self.run(|encoder| op.record(encoder, &buffers)).await?;
        let mut reads = vec![(&y, E::DTYPE.tensor_words(shape.numel())), (&save_mean, c), (&save_invstd, c)];
        if let Some((mean, var)) = &running_buffers {
            reads.extend([(mean, c), (var, c)]);
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
        let mut next = || out.next().unwrap_or_default();
        let (y, save_mean, save_invstd) = (next(), next(), next());
        if let Some(r) = running {
            r.mean = next();
            r.var = next();
            r.num_batches_tracked = r.num_batches_tracked.saturating_add(1);
        }
        Ok(TrainOutput { y: from_words(y, shape.dims())?, save_mean, save_invstd })
    }
}
