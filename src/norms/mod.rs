//! The ops, one module each: batch norm ([`batch_norm`], on the per-channel
//! engine), and group, layer, instance and RMS norm ([`group_norm`],
//! [`layer_norm`], [`instance_norm`], [`rms_norm`]), each a view over the
//! generic row op of this module. The op model (`crate::op`) reaches them all.
//!
//! Every row op is "statistics per row, over a set of elements": the tensor is
//! viewed as `[B, O, K, L]` row-major with statistics per row `(b, k)` over
//! its `O * L` values `(o, l)`, element `((b * O + o) * K + k) * L + l`, and
//! the affine parameter of an element is `k * ka + l / ld` ([`RowView`]).
//! The kernels (`shaders/norm*.wgsl`) give one workgroup a chunk of a row: a
//! row in one chunk is normalized by the workgroup that reduced it, which
//! reads it once from memory (forward: one read of `x`, one write of `y`);
//! longer rows, where the tuning wants more workgroups than rows, take three
//! passes as batch norm does. Channels-last group and instance norm, whose
//! rows' values lie `C` apart, run with lanes across channels instead
//! (`shaders/norm_group.wgsl`, `GpuContext::plan_channel_rows`). `dgamma`
//! and `dbeta` are reductions per affine parameter in a fixed order:
//! deterministic, no atomics. A tensor past one
//! binding is processed in windows of whole samples (rows for layer and RMS
//! norm). The host side is batch norm's prepared-op engine (`src/prepared.rs`).

pub(crate) mod batch_norm;
pub mod group_norm;
pub mod instance_norm;
mod layer;
pub mod layer_norm;
pub(crate) mod reference;
pub mod rms_norm;

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::{GpuContext, PreparedKey};
use crate::device::Unused;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::norms::batch_norm::backward::{batch_mean, BackwardBuffers, ParamGradBuffers, PreparedBackward};
use crate::norms::batch_norm::forward_train::{ForwardTrainBuffers, PreparedForwardTrain, RunningBuffers};
use crate::ops::{all, from_words, host_data, BackwardStats, ChannelAffine, Gradients, NormStats, RunningStats};
use crate::options::{check_element, check_eps, Dtype, Element, Epilogue, Momentum, Options, RunningVariance};
use crate::plan::{check_workgroup_size, chunking, Grid, Plan, Strategy, Window, Windowed, MAX_LOOP_ITERATIONS, MAX_TILE_X};
use crate::prepared::{Arg, Bound, Prepared, Slot, SlotBytes, SlotKind, Step};
use crate::shaders::{
    Kernel, Variant, Width, EPILOGUE_WG, FLAG_AFFINE, FLAG_CHANNEL_RUNS, FLAG_GRADS_IN_ROWS, FLAG_RMS, FLAG_ROW_BLOCK, FLAG_ROW_LANES,
    FLAG_RUNNING, NORM_MAX_ROW_BLOCK, NORM_ROW_BLOCK, NORM_ROW_FLOATS, PARTIAL_FLOATS, SUMS_BLOCK,
};
use crate::shape::Shape;

/// How an op of the family views its tensor: `[B, O, K, L]` row-major,
/// statistics per row `(b, k)` over `(o, l)`, affine parameter `k * ka + l / ld`
/// (`ka = 0`: the parameter is `l`, as in layer norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RowView {
    pub b: usize,
    pub o: usize,
    pub k: usize,
    pub l: usize,
    pub ka: usize,
    pub ld: usize,
    /// Affine parameters (`C`, or the product of `normalized_shape`).
    pub params: usize,
    /// Normalize by the root mean square, without centering.
    pub rms: bool,
    /// The element type of `x`, `y`, `dy` and `dx`.
    pub dtype: Dtype,
}

impl RowView {
    /// Group norm over `groups` groups of a channels-first or channels-last `shape`.
    pub fn groups(shape: &Shape, groups: usize) -> Self {
        let (c, per) = (shape.channels(), shape.channels() / groups);
        match shape.layout() {
            Layout::ChannelsFirst => {
                let s = shape.inner();
                Self { b: shape.outer(), o: 1, k: groups, l: per * s, ka: per, ld: s, params: c, rms: false, dtype: Dtype::F32 }
            }
            Layout::ChannelsLast => {
                let n = shape.dims()[0];
                Self { b: n, o: shape.outer() / n, k: groups, l: per, ka: per, ld: 1, params: c, rms: false, dtype: Dtype::F32 }
            }
        }
    }

    /// Statistics over trailing dims of `d` values, `rows` rows, parameter per position.
    pub fn trailing(rows: usize, d: usize, rms: bool) -> Self {
        Self { b: 1, o: 1, k: rows, l: d, ka: 0, ld: 1, params: d, rms, dtype: Dtype::F32 }
    }

    /// This view over tensors of `dtype`.
    pub fn typed(self, dtype: Dtype) -> Self {
        Self { dtype, ..self }
    }

    pub fn rows(&self) -> usize {
        self.b * self.k
    }

    pub fn row_len(&self) -> usize {
        self.o * self.l
    }

    pub fn numel(&self) -> usize {
        self.b * self.o * self.k * self.l
    }

    /// Values each affine parameter's gradients sum over.
    fn param_items(&self) -> usize {
        if self.ka == 0 {
            self.b * self.o * self.k
        } else {
            self.b * self.o * self.ld
        }
    }

    /// The engine's pseudo-shape `[B * O, K, L]`: `numel` elements, `K` "channels" (instance norm's).
    fn shape(&self) -> Result<Shape> {
        Shape::new(&[self.b * self.o, self.k, self.l], Layout::ChannelsFirst)
    }

    fn key(&self, op: &'static str, eps: f32, scalar: u32, flags: u32) -> Result<PreparedKey> {
        let mut key = PreparedKey::new(op, &self.shape()?, [eps.to_bits(), scalar], flags).typed(self.dtype);
        key.dims.extend([self.b, self.o, self.ka, self.ld, self.params, usize::from(self.rms)]);
        Ok(key)
    }
}

/// Outputs of a forward pass of the family on the host: `y` as the input's
/// element type, the statistics f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NormOutput<E = f32> {
    /// Normalized output, shaped like `x`.
    pub y: ArrayD<E>,
    /// Mean per row (per (sample, group), (sample, channel), or row of layer
    /// norm, in that order); `None` for RMS norm, which does not center.
    pub mean: Option<Vec<f32>>,
    /// `1 / sqrt(var + eps)` per row (`1 / sqrt(mean(x^2) + eps)` for RMS norm).
    pub rstd: Vec<f32>,
}

impl<E> NormOutput<E> {
    /// The statistics the backward of this forward pass differentiates at.
    pub fn stats(&self) -> NormStats<&[f32]> {
        NormStats { mean: self.mean.as_deref(), rstd: &self.rstd }
    }
}

/// Buffer slices of a forward pass of any op ([`Norm`](crate::Norm)).
/// Tensors hold the options' `dtype`, the rest f32; all need `STORAGE` usage
/// and start at a multiple of [`GpuContext::slice_alignment`]; no output may
/// overlap another argument. [`PreparedNorm::slot_bytes`] gives each one's size.
#[derive(Debug, Clone, Copy)]
pub struct NormForwardBuffers<'a> {
    /// Input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Output, `numel` values of the options' `dtype`.
    pub y: wgpu::BufferSlice<'a>,
    /// Statistics out, one f32 per row ([`PreparedNorm::rows`]); `mean`
    /// exactly when the op centers (not RMS norm).
    pub stats: NormStats<wgpu::BufferSlice<'a>>,
    /// `gamma`, one f32 per affine parameter, exactly when the options ask for it.
    pub gamma: Option<wgpu::BufferSlice<'a>>,
    /// `beta`, as `gamma` (never for RMS norm).
    pub beta: Option<wgpu::BufferSlice<'a>>,
    /// Running statistics (`C` f32s each), updated in place, exactly when
    /// `track_running_stats` (batch and instance norm).
    pub running: Option<RunningBuffers<'a>>,
    /// Batch norm's fused residual, `numel` values of the options' `dtype`,
    /// exactly when `options.epilogue.residual`; `y` may be this very slice.
    pub residual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the op's dispatches, [`PreparedNorm::workspace_bytes`] bytes
    /// (written; no other argument may overlap it), to share one pooled
    /// buffer among ops; `None`: the op's own, made at its first bind.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

/// Output slices for the parameter gradients: one f32 per affine parameter each.
#[derive(Debug, Clone, Copy)]
pub struct NormParamGradBuffers<'a> {
    /// `sum dy * xhat` per parameter.
    pub dgamma: wgpu::BufferSlice<'a>,
    /// `sum dy` per parameter; `None` exactly for RMS norm.
    pub dbeta: Option<wgpu::BufferSlice<'a>>,
}

/// Buffer slices of a backward pass of any op; see [`NormForwardBuffers`].
///
/// Through batch norm's fused epilogue (`options.epilogue`), `dy` is the
/// gradient of the fused output, `dL/dz`, masked on the fly by `z` where
/// there is an activation.
#[derive(Debug, Clone, Copy)]
pub struct NormBackwardBuffers<'a> {
    /// Upstream gradient, `numel` values of the options' `dtype`.
    pub dy: wgpu::BufferSlice<'a>,
    /// The forward pass's input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Gradient out, `numel` values of the options' `dtype`.
    pub dx: wgpu::BufferSlice<'a>,
    /// The statistics it differentiates at: the forward's saved ones
    /// ([`GpuContext::prepare_norm_backward`]), or batch and instance norm's
    /// running statistics ([`GpuContext::prepare_norm_inference_backward`]).
    pub stats: BackwardStats<wgpu::BufferSlice<'a>>,
    /// `gamma`, exactly when the options ask for affine parameters.
    pub gamma: Option<wgpu::BufferSlice<'a>>,
    /// `dgamma` and `dbeta` out, or `None` to skip them; only with affine parameters.
    pub param_grads: Option<NormParamGradBuffers<'a>>,
    /// The fused forward's output `z`, exactly when the epilogue has an
    /// activation ([`Epilogue::needs_z`](crate::Epilogue::needs_z)).
    pub z: Option<wgpu::BufferSlice<'a>>,
    /// The residual's gradient out, exactly when `options.epilogue.residual`.
    pub dresidual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the op's dispatches, [`PreparedNormBackward::workspace_bytes`] bytes
    /// (written; no other argument may overlap it), to share one pooled
    /// buffer among ops; `None`: the op's own, made at its first bind.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

const F_X: usize = 0;
const F_Y: usize = 1;
const F_MEAN: usize = 2;
const F_RSTD: usize = 3;
const F_GAMMA: usize = 4;
const F_BETA: usize = 5;
const F_RUNNING_MEAN: usize = 6;
const F_RUNNING_VAR: usize = 7;

const FORWARD_SLOTS: [Slot; 8] = [
    Slot { name: "x", kind: SlotKind::Tensor, output: false },
    Slot { name: "y", kind: SlotKind::Tensor, output: true },
    Slot { name: "mean", kind: SlotKind::Rows, output: true },
    Slot { name: "rstd", kind: SlotKind::Rows, output: true },
    Slot { name: "gamma", kind: SlotKind::AffineParams, output: false },
    Slot { name: "beta", kind: SlotKind::AffineParams, output: false },
    Slot { name: "running_mean", kind: SlotKind::PerChannel(1), output: true },
    Slot { name: "running_var", kind: SlotKind::PerChannel(1), output: true },
];

const B_DY: usize = 0;
const B_X: usize = 1;
const B_DX: usize = 2;
const B_MEAN: usize = 3;
const B_RSTD: usize = 4;
const B_GAMMA: usize = 5;
const B_DGAMMA: usize = 6;
const B_DBETA: usize = 7;

const BACKWARD_SLOTS: [Slot; 8] = [
    Slot { name: "dy", kind: SlotKind::Tensor, output: false },
    Slot { name: "x", kind: SlotKind::Tensor, output: false },
    Slot { name: "dx", kind: SlotKind::Tensor, output: true },
    Slot { name: "mean", kind: SlotKind::Rows, output: false },
    Slot { name: "rstd", kind: SlotKind::Rows, output: false },
    Slot { name: "gamma", kind: SlotKind::AffineParams, output: false },
    Slot { name: "dgamma", kind: SlotKind::AffineParams, output: true },
    Slot { name: "dbeta", kind: SlotKind::AffineParams, output: true },
];

/// What a prepared op of the family was prepared with, and checks its arguments against.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    view: RowView,
    affine: bool,
    /// Instance norm's running statistics: momentum.
    running: Option<Momentum>,
}

impl Config {
    fn check_affine(&self, gamma: bool, beta: bool) -> Result<()> {
        let flag = if self.view.rms { "affine (gamma only, RMS norm)" } else { "affine" };
        let beta_wanted = self.affine && !self.view.rms;
        if gamma != self.affine || beta != beta_wanted {
            let reason = format!("{flag} is {}, but gamma {} and beta {} were given", self.affine, given(gamma), given(beta));
            return Err(Error::OptionsMismatch { what: "gamma and beta", reason });
        }
        Ok(())
    }

    fn check_mean(&self, mean: bool) -> Result<()> {
        if mean == self.view.rms {
            let reason = if self.view.rms { "RMS norm has no mean, but one was given" } else { "the op centers, but no mean was given" };
            return Err(Error::OptionsMismatch { what: "mean", reason: reason.into() });
        }
        Ok(())
    }
}

fn given(b: bool) -> &'static str {
    if b {
        "given"
    } else {
        "absent"
    }
}

/// A forward pass planned for one op ([`Norm`](crate::Norm)) and options:
/// pipelines compiled and uniforms written once
/// ([`GpuContext::prepare_norm`]); each [`record`](Self::record) binds the
/// slices it is given and records one compute pass.
#[derive(Debug, Clone)]
pub struct PreparedNorm {
    op: ForwardOp,
}

#[derive(Debug, Clone)]
enum ForwardOp {
    Rows { prepared: Arc<Prepared>, config: Config },
    Batch(PreparedForwardTrain),
}

impl PreparedNorm {
    pub(crate) fn batch(op: PreparedForwardTrain) -> Self {
        Self { op: ForwardOp::Batch(op) }
    }

    /// The bytes each slice of [`NormForwardBuffers`] must hold (a framework's allocation
    /// plan); optional ones are listed whatever the options, and the
    /// `workspace` last ([`Self::workspace_bytes`]).
    pub fn slot_bytes(&self) -> Vec<SlotBytes> {
        self.program().slot_bytes()
    }

    /// Bytes of the scratch its dispatches share: the least a caller's
    /// `workspace` slice holds (0: the op needs none). A framework that pools
    /// memory sizes one workspace for the largest of its ops and passes it to
    /// each; ops recorded one after another may share it.
    pub fn workspace_bytes(&self) -> u64 {
        self.program().workspace_bytes()
    }

    /// Bytes of device memory the op holds of its own: its uniforms, and its
    /// workspace once a bind without the caller's made it.
    pub fn held_bytes(&self) -> u64 {
        self.program().held_bytes()
    }

    /// Rows of statistics: the length of the `mean` and `rstd` slices.
    pub fn rows(&self) -> usize {
        match &self.op {
            ForwardOp::Rows { config, .. } => config.view.rows(),
            ForwardOp::Batch(op) => op.shape().channels(),
        }
    }

    /// Affine parameters: the length of `gamma`, `beta`, `dgamma` and `dbeta`.
    pub fn params(&self) -> usize {
        match &self.op {
            ForwardOp::Rows { config, .. } => config.view.params,
            ForwardOp::Batch(op) => op.shape().channels(),
        }
    }

    /// Records the op over `b` into `encoder`: every argument is checked
    /// first, and nothing is recorded when one is wrong. The slices are bound
    /// for this record alone: the op keeps none of them.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &NormForwardBuffers<'_>) -> Result<()> {
        match &self.op {
            ForwardOp::Rows { prepared, config } => {
                let factor = b.running.zip(config.running).and_then(|(r, m)| m.per_record(r.num_batches_tracked));
                prepared.record(encoder, &config.forward_slices(b)?, b.workspace, factor)
            }
            ForwardOp::Batch(op) => op.record(encoder, &train_buffers(b)?),
        }
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]).
    pub fn bind(&self, b: &NormForwardBuffers<'_>) -> Result<Bound> {
        match &self.op {
            ForwardOp::Rows { prepared, config } => {
                let running = b.running.zip(config.running).map(|(r, m)| (m, r.num_batches_tracked));
                Ok(Bound::new(prepared.clone(), prepared.bind(&config.forward_slices(b)?, b.workspace)?, running))
            }
            ForwardOp::Batch(op) => op.bind(&train_buffers(b)?),
        }
    }
}

impl Config {
    /// A forward's `b` in slot order, checked against the op.
    fn forward_slices<'a>(&self, b: &NormForwardBuffers<'a>) -> Result<[Option<wgpu::BufferSlice<'a>>; 8]> {
        self.check_affine(b.gamma.is_some(), b.beta.is_some())?;
        self.check_mean(b.stats.mean.is_some())?;
        no_epilogue("residual", b.residual.is_some())?;
        if b.running.is_some() != self.running.is_some() {
            let reason =
                format!("track_running_stats is {}, but running statistics are {}", self.running.is_some(), given(b.running.is_some()));
            return Err(Error::OptionsMismatch { what: "running statistics", reason });
        }
        Ok([Some(b.x), Some(b.y), b.stats.mean, Some(b.stats.rstd), b.gamma, b.beta, b.running.map(|r| r.mean), b.running.map(|r| r.var)])
    }

    /// A backward's `b` in slot order, checked against the op.
    fn backward_slices<'a>(&self, b: &NormBackwardBuffers<'a>, param_grads: bool) -> Result<[Option<wgpu::BufferSlice<'a>>; 8]> {
        let BackwardStats::Saved(stats) = b.stats else {
            let reason = "prepared for the forward's saved statistics (running statistics: prepare_norm_inference_backward)".into();
            return Err(Error::OptionsMismatch { what: "running statistics", reason });
        };
        self.check_affine(b.gamma.is_some(), b.gamma.is_some() && !self.view.rms)?;
        self.check_mean(stats.mean.is_some())?;
        no_epilogue("z", b.z.is_some())?;
        no_epilogue("dresidual", b.dresidual.is_some())?;
        let dbeta_ok = b.param_grads.is_none_or(|p| p.dbeta.is_some() != self.view.rms);
        if b.param_grads.is_some() != param_grads || !dbeta_ok {
            return Err(Error::OptionsMismatch {
                what: "dgamma and dbeta",
                reason: format!("prepared for parameter gradients {} (dbeta {})", param_grads, !self.view.rms),
            });
        }
        Ok([
            Some(b.dy),
            Some(b.x),
            Some(b.dx),
            stats.mean,
            Some(stats.rstd),
            b.gamma,
            b.param_grads.map(|p| p.dgamma),
            b.param_grads.and_then(|p| p.dbeta),
        ])
    }
}

/// The epilogue's slices are batch norm's alone.
fn no_epilogue(what: &'static str, given: bool) -> Result<()> {
    if given {
        return Err(Error::OptionsMismatch { what, reason: "only batch norm fuses an epilogue".into() });
    }
    Ok(())
}

/// A backward pass planned for one op and options, and for writing `dgamma`
/// and `dbeta` or not ([`GpuContext::prepare_norm_backward`]); see [`PreparedNorm`].
#[derive(Debug, Clone)]
pub struct PreparedNormBackward {
    op: BackwardOp,
}

#[derive(Debug, Clone)]
enum BackwardOp {
    Rows { prepared: Arc<Prepared>, config: Config, param_grads: bool },
    Batch(PreparedBackward),
}

impl PreparedNormBackward {
    pub(crate) fn batch(op: PreparedBackward) -> Self {
        Self { op: BackwardOp::Batch(op) }
    }

    /// The bytes each slice of [`NormBackwardBuffers`] must hold (a framework's allocation
    /// plan); optional ones are listed whatever the options, and the
    /// `workspace` last ([`Self::workspace_bytes`]).
    pub fn slot_bytes(&self) -> Vec<SlotBytes> {
        self.program().slot_bytes()
    }

    /// Bytes of the scratch its dispatches share: the least a caller's
    /// `workspace` slice holds (0: the op needs none). A framework that pools
    /// memory sizes one workspace for the largest of its ops and passes it to
    /// each; ops recorded one after another may share it.
    pub fn workspace_bytes(&self) -> u64 {
        self.program().workspace_bytes()
    }

    /// Bytes of device memory the op holds of its own: its uniforms, and its
    /// workspace once a bind without the caller's made it.
    pub fn held_bytes(&self) -> u64 {
        self.program().held_bytes()
    }

    /// Rows of statistics: the length of the `mean` and `rstd` slices.
    pub fn rows(&self) -> usize {
        match &self.op {
            BackwardOp::Rows { config, .. } => config.view.rows(),
            BackwardOp::Batch(op) => op.shape().channels(),
        }
    }

    /// Affine parameters: the length of `gamma`, `dgamma` and `dbeta`.
    pub fn params(&self) -> usize {
        match &self.op {
            BackwardOp::Rows { config, .. } => config.view.params,
            BackwardOp::Batch(op) => op.shape().channels(),
        }
    }

    /// Records the op over `b` into `encoder`: every argument is checked
    /// first, and nothing is recorded when one is wrong. The slices are bound
    /// for this record alone: the op keeps none of them.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &NormBackwardBuffers<'_>) -> Result<()> {
        match &self.op {
            BackwardOp::Rows { prepared, config, param_grads } => {
                prepared.record(encoder, &config.backward_slices(b, *param_grads)?, b.workspace, None)
            }
            BackwardOp::Batch(op) => op.record(encoder, &backward_buffers(b)?),
        }
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]).
    pub fn bind(&self, b: &NormBackwardBuffers<'_>) -> Result<Bound> {
        match &self.op {
            BackwardOp::Rows { prepared, config, param_grads } => {
                Ok(Bound::new(prepared.clone(), prepared.bind(&config.backward_slices(b, *param_grads)?, b.workspace)?, None))
            }
            BackwardOp::Batch(op) => op.bind(&backward_buffers(b)?),
        }
    }
}

/// Batch norm's forward slices from the op model's.
pub(crate) fn train_buffers<'a>(b: &NormForwardBuffers<'a>) -> Result<ForwardTrainBuffers<'a>> {
    Ok(ForwardTrainBuffers {
        x: b.x,
        y: b.y,
        save_mean: batch_mean(b.stats.mean)?,
        save_invstd: b.stats.rstd,
        affine: affine_pair(b.gamma, b.beta)?,
        running: b.running,
        residual: b.residual,
        workspace: b.workspace,
    })
}

/// Batch norm's backward slices from the op model's.
pub(crate) fn backward_buffers<'a>(b: &NormBackwardBuffers<'a>) -> Result<BackwardBuffers<'a>> {
    let param_grads = match b.param_grads {
        Some(p) => {
            let dbeta = p.dbeta.ok_or_else(|| Error::OptionsMismatch { what: "dbeta", reason: "batch norm writes dbeta".into() })?;
            Some(ParamGradBuffers { dgamma: p.dgamma, dbeta })
        }
        None => None,
    };
    Ok(BackwardBuffers {
        dy: b.dy,
        x: b.x,
        dx: b.dx,
        stats: b.stats,
        gamma: b.gamma,
        param_grads,
        z: b.z,
        dresidual: b.dresidual,
        workspace: b.workspace,
    })
}

/// `gamma` and `beta`, both or neither.
pub(crate) fn affine_pair<T>(gamma: Option<T>, beta: Option<T>) -> Result<Option<ChannelAffine<T>>> {
    match (gamma, beta) {
        (Some(gamma), Some(beta)) => Ok(Some(ChannelAffine { gamma, beta })),
        (None, None) => Ok(None),
        _ => Err(Error::OptionsMismatch { what: "gamma and beta", reason: "batch and instance norm take both or neither".into() }),
    }
}

/// What `options` ask of an op of the family: no epilogue (batch norm's),
/// running statistics only where the op keeps them (`keeps_running`:
/// instance norm, whose running variance is the unbiased one).
pub(crate) fn check_family_options(options: &Options, keeps_running: bool) -> Result<()> {
    options.validate()?;
    if options.epilogue != Epilogue::default() {
        return Err(Error::OptionsMismatch { what: "epilogue", reason: "only batch norm fuses an epilogue".into() });
    }
    if options.track_running_stats && !keeps_running {
        let reason = "only batch and instance norm keep running statistics".into();
        return Err(Error::OptionsMismatch { what: "track_running_stats", reason });
    }
    if options.track_running_stats && options.running_variance != RunningVariance::Unbiased {
        let reason = "instance norm's running variance is unbiased over each instance".into();
        return Err(Error::OptionsMismatch { what: "running_variance", reason });
    }
    Ok(())
}

impl PreparedNorm {
    /// The program it records, the family's or batch norm's.
    pub(crate) fn program(&self) -> &Prepared {
        match &self.op {
            ForwardOp::Rows { prepared, .. } => prepared,
            ForwardOp::Batch(op) => op.program(),
        }
    }
}

impl PreparedNormBackward {
    /// The program it records, the family's or batch norm's.
    pub(crate) fn program(&self) -> &Prepared {
        match &self.op {
            BackwardOp::Rows { prepared, .. } => prepared,
            BackwardOp::Batch(op) => op.program(),
        }
    }
}

/// The family's plan: row chunks, parameter tiles and chunks, in the engine's [`Windowed`] form.
struct RowPlan {
    windowed: Windowed,
    /// The backward's dx walk sums dgamma and dbeta ([`FLAG_GRADS_IN_ROWS`]).
    grads_in_rows: bool,
    chunks: u64,
    /// Per window: the row pass's grid and the parameter-gradient pass's.
    row_grids: Vec<Grid>,
    param_grids: Vec<Grid>,
    rows_grid: Grid,
    params_grid: Grid,
    channels_grid: Grid,
}

impl RowPlan {
    /// One step of `kernel` per window, over `grids`.
    fn per_window(&self, kernel: Kernel, variant: Variant, grids: &[Grid], args: &[(u32, Arg)]) -> Vec<Step> {
        grids.iter().enumerate().map(|(w, &grid)| Step { kernel, variant, grid, window: Some(w), args: args.to_vec() }).collect()
    }
}

fn bad_shape(what: &'static str, expected: String, got: String) -> Error {
    Error::ShapeMismatch { what, expected, got }
}

/// Checks a host vector's length.
pub(crate) fn check_len(what: &'static str, len: usize, want: usize, unit: &str) -> Result<()> {
    if len != want {
        return Err(bad_shape(what, format!("{want} values ({unit})"), format!("{len} values")));
    }
    Ok(())
}

impl GpuContext {
    fn plan_rows(&self, view: &RowView, flags: u32, eps: f32, param_grads: bool) -> Result<RowPlan> {
        check_eps(eps)?;
        let tuning = self.tuning();
        let wg = u64::from(check_workgroup_size(tuning.workgroup_size)?);
        let limits = self.device().limits();
        let bytes = view.numel() as u64 * view.dtype.size();
        if view.dtype.tensor_bytes(view.numel()) > limits.max_buffer_size {
            return Err(Error::TooLarge { what: "max_buffer_size", requested: bytes, limit: limits.max_buffer_size });
        }
        let max_binding = limits.max_storage_buffer_binding_size;
        // vec4 items where four consecutive values of a row have four
        // consecutive parameters, one aligned vec4 (`ld == 1`, `ka % 4 == 0`),
        // or share one (`ld % 4 == 0`); gamma and beta are then read as vec4s.
        let runs = view.ld == 1 && view.ka.is_multiple_of(4) || view.ld.is_multiple_of(4);
        let width = if view.l.is_multiple_of(4) && view.params.is_multiple_of(4) && runs { Width::Vec4 } else { Width::Scalar };
        let w = u64::from(width.lanes());
        let (rows, items) = (view.rows() as u64, view.row_len() as u64 / w);
        let target = u64::from(tuning.reduce_groups.max(1));
        let (chunks, chunk_len) = chunking(items, target.div_ceil(rows), wg);
        // Channels-first group and instance norm, rows in one chunk: a row is
        // `ka` contiguous runs of one channel each, so the backward's dx walk
        // sums dgamma and dbeta per (row, channel), one partial per sample
        // (merged by a loop over the samples, within the loop bound), and no
        // pass reads x and dy again for them.
        let in_runs = chunks == 1 && view.o == 1 && view.ka > 0 && (view.ld as u64).is_multiple_of(w);
        let grads_in_runs = param_grads && in_runs && view.b as u64 <= MAX_LOOP_ITERATIONS;
        // The forward's y walk and the backward's sums walk load gamma and
        // beta once a channel's run (FLAG_CHANNEL_RUNS) where a run keeps the
        // workgroup's lanes busy.
        let flags = if in_runs && view.ld as u64 / w >= wg { flags | FLAG_CHANNEL_RUNS } else { flags };
        // Row blocks (FLAG_ROW_BLOCK, asked for by the caller):
        // parameters along the row, whole rows a workgroup, rows contiguous.
        let row_block = flags & FLAG_ROW_BLOCK != 0 && view.ka == 0 && view.o == 1 && chunks == 1;
        let flags = if row_block { flags } else { flags & !FLAG_ROW_BLOCK };

        // Windows of whole units, each within one binding and starting at an
        // aligned offset: rows (layer norm: B = O = 1) or samples. The tensor
        // passes bind the window's rows of the per-row arrays too (the
        // caller's mean and rstd, f32 each, and the per-row values, NORM_ROW_FLOATS
        // each), which must fit a binding and start aligned as well.
        let (unit_rows, total_units) = if view.ka == 0 { (1, view.k as u64) } else { (view.k as u64, view.b as u64) };
        let unit_bytes = bytes / total_units;
        let row_values = u64::from(NORM_ROW_FLOATS) * 4;
        let per_unit = [unit_bytes, unit_rows * 4, unit_rows * row_values];
        let per_window = if per_unit.iter().all(|&b| b * total_units <= max_binding) {
            total_units
        } else {
            if let Some(&b) = per_unit.iter().find(|&&b| b > max_binding) {
                let what = "max_storage_buffer_binding_size (one sample, or one row of layer norm, or their per-row values)";
                return Err(Error::TooLarge { what, requested: b, limit: max_binding });
            }
            let alignment = self.slice_alignment();
            let align = per_unit.iter().map(|&b| alignment / gcd(b, alignment)).fold(1, |a, b| a / gcd(a, b) * b);
            let fit = per_unit.iter().map(|&b| max_binding / b).min().unwrap_or(0);
            let n = fit / align * align;
            if n == 0 {
                let what = "max_storage_buffer_binding_size (aligned samples or rows, with their per-row values)";
                return Err(Error::TooLarge { what, requested: unit_rows * row_values * align, limit: max_binding });
            }
            n
        };
        let sub = |n: u64| if view.ka == 0 { RowView { k: n as usize, ..*view } } else { RowView { b: n as usize, ..*view } };
        let max_dim = self.max_groups_per_dim();
        // The windows share the tuning's parameter-gradient workgroups, so
        // that their partial results together take what one window's would,
        // and no more chunks than the partials' binding holds.
        let n_windows = total_units.div_ceil(per_window);
        let param_target = target.div_ceil(n_windows);
        let max_param_chunks = (max_binding / (view.params as u64 * u64::from(PARTIAL_FLOATS) * 4) / n_windows).max(1);
        let p = view.params as u64;
        let grad_blocks = (param_grads && row_block)
            .then(|| grad_block_rows(rows, target, p, n_windows, view.dtype.tensor_bytes(view.numel()), max_binding))
            .flatten();
        let grads_in_blocks = grad_blocks.is_some();
        let block_rows = grad_blocks.unwrap_or(u64::from(NORM_ROW_BLOCK));
        // Channels-first group and instance norm take a workgroup of rows,
        // each reduced by one invocation (FLAG_ROW_LANES without
        // FLAG_ROW_BLOCK), where their rows walk run by run (FLAG_CHANNEL_RUNS)
        // and a workgroup of rows fits the kernels' per-row arrays; an
        // invocation's loops there go over a run's items and a row's blocks of
        // SUMS_BLOCK items.
        let run_lanes = flags & FLAG_CHANNEL_RUNS != 0
            && wg <= u64::from(NORM_ROW_BLOCK)
            && view.ld as u64 / w <= MAX_LOOP_ITERATIONS
            && items.div_ceil(u64::from(SUMS_BLOCK)) <= MAX_LOOP_ITERATIONS;
        // Layer and RMS norm's row blocks likewise where a block has a
        // workgroup of rows (the CPU tuning's 8-invocation workgroups) and
        // the backward's walk over a whole row keeps within the loop bound.
        let row_lanes = row_block && block_rows >= wg && items <= MAX_LOOP_ITERATIONS || run_lanes;
        let flags = if row_lanes { flags | FLAG_ROW_LANES } else { flags };
        let grads_in_rows = grads_in_runs || grads_in_blocks;
        let flags = if grads_in_rows { flags | FLAG_GRADS_IN_ROWS } else { flags };
        let mut windows = Vec::new();
        let mut block_bases = Vec::new();
        let (mut row_grids, mut param_grids) = (Vec::new(), Vec::new());
        let (mut first, mut param_chunk_base, mut block_base) = (0u64, 0u64, 0u64);
        while first < total_units {
            let n = per_window.min(total_units - first);
            let part = sub(n);
            // A walk's last step may land past the window's end by up to a
            // workgroup of items plus a row of K items per o it skips; no
            // index may wrap in u32.
            let inner_v = view.l as u64 / w;
            let overstep = wg + (wg / inner_v + 1) * view.k as u64 * inner_v;
            let index_limit = u64::from(u32::MAX).saturating_sub(overstep);
            if part.numel() as u64 / w > index_limit {
                let what = "elements of one window (32-bit indexing)";
                return Err(Error::TooLarge { what, requested: part.numel() as u64, limit: index_limit * w });
            }
            let (mut geometry, tiles, param_chunks) =
                row_geometry(&part, width, wg, (chunks, chunk_len), (param_target, max_param_chunks), flags, eps);
            geometry.row_base = (first * unit_rows) as u32;
            geometry.b_base = if view.ka == 0 { 0 } else { first as u32 };
            geometry.param_chunk_base = param_chunk_base as u32;
            geometry.row_block = block_rows as u32;
            param_chunk_base += param_chunks;
            let row_groups = if row_block {
                (part.rows() as u64).div_ceil(block_rows)
            } else if run_lanes {
                (part.rows() as u64).div_ceil(wg)
            } else {
                part.rows() as u64 * chunks
            };
            block_bases.push(block_base);
            block_base += row_groups;
            let row_grid = Grid::fold(row_groups, max_dim)?;
            row_grids.push(row_grid);
            param_grids.push(Grid::fold(tiles * param_chunks, max_dim)?);
            let plan = row_plan(geometry, width, wg, row_grid);
            let rows = Some((first * unit_rows, n * unit_rows));
            windows.push(Window { plan, offset: first * unit_bytes, bytes: (n * unit_bytes).div_ceil(4) * 4, rows });
            first += n;
        }
        // Every window's parameter-gradient partials, chunk by chunk, in one array.
        let param_chunks = if grads_in_runs {
            view.b as u64
        } else if grads_in_blocks {
            block_base
        } else {
            param_chunk_base
        };
        for (window, base) in windows.iter_mut().zip(block_bases) {
            let geometry = &mut window.plan.geometry;
            geometry.param_chunks = param_chunks as u32;
            if grads_in_blocks {
                geometry.param_chunk_base = base as u32;
            }
        }
        let (mut geometry, _, _) = row_geometry(view, width, wg, (chunks, chunk_len), (target, max_param_chunks), flags, eps);
        geometry.param_chunks = param_chunks as u32;
        geometry.row_block = block_rows as u32;
        let epilogue = |n: u64| Grid::fold(n.div_ceil(u64::from(EPILOGUE_WG)), max_dim);
        let mut full = row_plan(geometry, width, wg, row_grids[0]);
        full.epilogue_grid = epilogue(rows)?;
        let row_partials = if chunks > 1 { rows * chunks } else { 0 };
        let param_partials = if param_grads { p * param_chunks } else { 0 };
        let partials = row_partials.max(param_partials) * u64::from(PARTIAL_FLOATS) * 4;
        if partials > max_binding {
            return Err(Error::TooLarge {
                what: "max_storage_buffer_binding_size (partial results)",
                requested: partials,
                limit: max_binding,
            });
        }
        let scratch = Some((partials, rows * u64::from(NORM_ROW_FLOATS) * 4));
        Ok(RowPlan {
            windowed: Windowed { full, windows, scratch, dtype: view.dtype },
            grads_in_rows,
            chunks,
            row_grids,
            param_grids,
            rows_grid: epilogue(rows)?,
            params_grid: epilogue(p)?,
            channels_grid: epilogue(view.k as u64)?,
        })
    }

    fn norm_flags(config: &Config) -> u32 {
        let mut flags = 0;
        if config.affine {
            flags |= FLAG_AFFINE;
        }
        if config.view.rms {
            flags |= FLAG_RMS;
        }
        if config.running.is_some() {
            flags |= FLAG_RUNNING;
        }
        flags
    }

    fn plan_norm_forward(&self, config: &Config, eps: f32) -> Result<Prepared> {
        if let Some(m) = config.running {
            m.validate()?;
            if config.view.b as u64 > MAX_LOOP_ITERATIONS {
                return Err(Error::TooLarge {
                    what: "batch size with running statistics (kernel loop bound)",
                    requested: config.view.b as u64,
                    limit: MAX_LOOP_ITERATIONS,
                });
            }
            // The running statistics' pass reads every row's values in one binding.
            let (row_values, max_binding) = (config.view.rows() as u64 * u64::from(NORM_ROW_FLOATS) * 4, self.max_binding_bytes());
            if row_values > max_binding {
                let what = "max_storage_buffer_binding_size (per-row values with running statistics)";
                return Err(Error::TooLarge { what, requested: row_values, limit: max_binding });
            }
        }
        self.check_alive()?;
        check_eps(eps)?;
        if let Some(prepared) = self.plan_channel_rows_forward(config, eps)? {
            return Ok(prepared);
        }
        let plan = self.plan_rows(&config.view, Self::norm_flags(config) | FLAG_ROW_BLOCK, eps, false)?;
        let full = &plan.windowed.full;
        let (variant, stream) = (self.reduction_variant(full), full.variant());
        let epilogue =
            |kernel, grid, args: &[(u32, Arg)]| Step { kernel, variant: Variant::EPILOGUE, grid, window: None, args: args.to_vec() };
        let (gamma, beta) = ((4, Arg::Channels(F_GAMMA, Unused::Read)), (5, Arg::Channels(F_BETA, Unused::Read)));
        let saved = [(6, Arg::Channels(F_MEAN, Unused::WriteA)), (7, Arg::Channels(F_RSTD, Unused::WriteB)), (8, Arg::Params)];
        let mut args = vec![(0, Arg::Uniform), (1, Arg::Tensor(F_X)), (2, Arg::Partials), (3, Arg::Tensor(F_Y)), gamma, beta];
        args.extend(saved);
        let mut steps = plan.per_window(Kernel::NormForward, variant, &plan.row_grids, &args);
        if plan.chunks > 1 {
            let mut args = vec![(0, Arg::Uniform), (2, Arg::Partials)];
            args.extend(saved);
            steps.push(epilogue(Kernel::NormForwardFinalize, plan.rows_grid, &args));
            let args = [(0, Arg::Uniform), (1, Arg::Tensor(F_X)), (3, Arg::Tensor(F_Y)), gamma, beta, (8, Arg::Params)];
            steps.extend(plan.per_window(Kernel::NormApply, stream, &plan.row_grids, &args));
        }
        if config.running.is_some() {
            steps.push(running_step(plan.channels_grid));
        }
        let factor = config.running.map_or(0.0, |m| m.factor(1));
        Prepared::new(&self.parts(), &config.view.shape()?, &plan.windowed, self.slice_alignment(), &FORWARD_SLOTS, &[], steps, |g| {
            g.set_factor(factor)
        })
    }

    /// The plan of channels-last group and instance norm with lanes across
    /// channels (shaders/norm_group.wgsl): batch norm's rows strategy over the
    /// positions, in chunks that each lie in one sample, so that a workgroup
    /// reads contiguous rows of channels instead of one group's few values in
    /// every row; `arrays` arrays of per-(sample, channel) values after the
    /// rows' in `params`. `None` where the tensor does not take this plan: not
    /// channels-last with positions, larger than one binding, or no split of
    /// a sample's positions near the tuning's.
    fn plan_channel_rows(&self, config: &Config, eps: f32, arrays: u64) -> Result<Option<ChannelRows>> {
        let view = &config.view;
        if view.o < 2 || view.ld != 1 || view.ka == 0 || view.ka != view.l || view.rms {
            return Ok(None);
        }
        let tuning = self.tuning();
        let wg = u64::from(check_workgroup_size(tuning.workgroup_size)?);
        let max_binding = self.device().limits().max_storage_buffer_binding_size;
        let (n, s, c, per) = (view.b as u64, view.o as u64, view.params as u64, view.ka as u64);
        let width = if c.is_multiple_of(4) { Width::Vec4 } else { Width::Scalar };
        let w = u64::from(width.lanes());
        let channels_v = c / w;
        let tile_x = channels_v.next_power_of_two().min(u64::from(MAX_TILE_X)).min(wg);
        let tiles = channels_v.div_ceil(tile_x);
        let rows_step = wg / tile_x;
        // Chunks of a sample's positions: a divisor of S at or a little above
        // the chunking's count, so that no chunk crosses two samples.
        let target = u64::from(tuning.reduce_groups.max(1));
        let (want, _) = chunking(s, target.div_ceil(tiles * n), rows_step);
        let Some(per_sample) = (want..=want.saturating_mul(4).min(s)).find(|d| s.is_multiple_of(*d)) else {
            return Ok(None);
        };
        let chunk_len = s / per_sample;
        let rows = view.rows() as u64;
        let bytes = view.dtype.tensor_bytes(view.numel());
        let partials = c * n * per_sample * u64::from(PARTIAL_FLOATS) * 4;
        let params = ((rows * u64::from(NORM_ROW_FLOATS)).div_ceil(4) * 4 + arrays * n * c) * 4;
        let groups = tiles * n * per_sample;
        let too_large = [bytes, partials, params].iter().any(|&b| b > max_binding)
            || (n * s + wg) * channels_v > u64::from(u32::MAX)
            || per > MAX_LOOP_ITERATIONS
            || per_sample > MAX_LOOP_ITERATIONS
            || n > MAX_LOOP_ITERATIONS
            || chunk_len.div_ceil(rows_step) > MAX_LOOP_ITERATIONS;
        if too_large {
            return Ok(None);
        }
        let max_dim = self.max_groups_per_dim();
        let grid = Grid::fold(groups, max_dim)?;
        let rows_grid = Grid::fold(rows.div_ceil(u64::from(EPILOGUE_WG)), max_dim)?;
        let count = (per * s) as f64;
        let geometry = crate::plan::Geometry {
            channels: c as u32,
            inner: 1,
            outer: (n * s) as u32,
            inner_v: 1,
            channels_v: channels_v as u32,
            items: (n * s) as u32,
            numel_v: (view.numel() as u64 / w) as u32,
            chunks: per_sample as u32,
            chunk_len: chunk_len as u32,
            tile_x: tile_x as u32,
            groups: groups as u32,
            flags: Self::norm_flags(config),
            eps,
            count: count as f32,
            // Instance norm's running variance is unbiased over each instance's values.
            unbias: if count > 1.0 { (count / (count - 1.0)) as f32 } else { 1.0 },
            slice: channels_v as u32,
            chunk_stride: (n * per_sample) as u32,
            norm_ka: per as u32,
            norm_ld: 1,
            norm_o: s as u32,
            norm_rows: rows as u32,
            norm_params: c as u32,
            ..Default::default()
        };
        let mut window = row_plan(geometry, width, wg, grid);
        window.strategy = Strategy::Rows;
        // The per-row and per-channel passes' uniform: norm_running.wgsl averages over the N samples.
        let mut full = window.clone();
        full.epilogue_grid = rows_grid;
        full.geometry.outer = n as u32;
        let windowed = Windowed {
            full,
            windows: vec![Window { plan: window.clone(), offset: 0, bytes, rows: None }],
            scratch: Some((partials, params)),
            dtype: view.dtype,
        };
        Ok(Some(ChannelRows { windowed, window, grid, rows_grid, channels_grid: Grid::fold(c.div_ceil(u64::from(EPILOGUE_WG)), max_dim)? }))
    }

    /// Channels-last group and instance norm's forward on [`Self::plan_channel_rows`].
    fn plan_channel_rows_forward(&self, config: &Config, eps: f32) -> Result<Option<Prepared>> {
        let Some(ChannelRows { windowed, window, grid, rows_grid, channels_grid }) = self.plan_channel_rows(config, eps, 3)? else {
            return Ok(None);
        };
        let view = &config.view;
        let (x, y) = ((1, Arg::Tensor(F_X)), (3, Arg::Tensor(F_Y)));
        let finalize = vec![
            (0, Arg::Uniform),
            (2, Arg::Partials),
            (4, Arg::Channels(F_GAMMA, Unused::Read)),
            (5, Arg::Channels(F_BETA, Unused::Read)),
            (6, Arg::Channels(F_MEAN, Unused::WriteA)),
            (7, Arg::Channels(F_RSTD, Unused::WriteB)),
            (8, Arg::Params),
        ];
        let mut steps = vec![
            Step {
                kernel: Kernel::StatsRows,
                variant: self.reduction_variant(&window),
                grid,
                window: Some(0),
                args: vec![(0, Arg::Uniform), x, (2, Arg::Partials)],
            },
            Step { kernel: Kernel::NormGroupFinalize, variant: Variant::EPILOGUE, grid: rows_grid, window: None, args: finalize },
            Step {
                kernel: Kernel::NormGroupApply,
                variant: window.variant(),
                grid,
                window: Some(0),
                args: vec![(0, Arg::Uniform), x, y, (8, Arg::Params)],
            },
        ];
        if config.running.is_some() {
            steps.push(running_step(channels_grid));
        }
        let factor = config.running.map_or(0.0, |m| m.factor(1));
        let prepared = Prepared::new(&self.parts(), &view.shape()?, &windowed, self.slice_alignment(), &FORWARD_SLOTS, &[], steps, |g| {
            g.set_factor(factor)
        })?;
        Ok(Some(prepared))
    }

    /// Channels-last group and instance norm's backward on [`Self::plan_channel_rows`].
    fn plan_channel_rows_backward(&self, config: &Config, eps: f32, param_grads: bool) -> Result<Option<Prepared>> {
        let config = Config { running: None, ..*config };
        let Some(ChannelRows { windowed, window, grid, rows_grid, channels_grid }) = self.plan_channel_rows(&config, eps, 4)? else {
            return Ok(None);
        };
        let (x, dy) = ((1, Arg::Tensor(B_X)), (2, Arg::Tensor(B_DY)));
        let mean = Arg::Channels(B_MEAN, Unused::Read);
        let rstd = (5, Arg::Channels(B_RSTD, Unused::Read));
        let mut steps = vec![
            Step {
                kernel: Kernel::NormGroupGrad,
                variant: self.reduction_variant(&window),
                grid,
                window: Some(0),
                args: vec![(0, Arg::Uniform), x, dy, (4, Arg::Partials), (5, mean)],
            },
            Step {
                kernel: Kernel::NormGroupBackwardFinalize,
                variant: Variant::EPILOGUE,
                grid: rows_grid,
                window: None,
                args: vec![
                    (0, Arg::Uniform),
                    (3, Arg::Channels(B_GAMMA, Unused::Read)),
                    (4, mean),
                    rstd,
                    (6, Arg::Partials),
                    (7, Arg::Params),
                ],
            },
            Step {
                kernel: Kernel::NormGroupDx,
                variant: window.variant(),
                grid,
                window: Some(0),
                args: vec![(0, Arg::Uniform), x, dy, (7, Arg::Params), (8, Arg::Tensor(B_DX))],
            },
        ];
        if param_grads {
            let args = vec![
                (0, Arg::Uniform),
                (1, Arg::Channels(B_DGAMMA, Unused::WriteA)),
                (2, Arg::Channels(B_DBETA, Unused::WriteB)),
                (6, Arg::Partials),
                (7, Arg::Params),
            ];
            steps.push(Step { kernel: Kernel::NormGroupParamGrads, variant: Variant::EPILOGUE, grid: channels_grid, window: None, args });
        }
        Ok(Some(Prepared::new(
            &self.parts(),
            &config.view.shape()?,
            &windowed,
            self.slice_alignment(),
            &BACKWARD_SLOTS,
            &[],
            steps,
            |_| {},
        )?))
    }

    fn plan_norm_backward(&self, config: &Config, eps: f32, param_grads: bool) -> Result<Prepared> {
        if param_grads && !config.affine {
            return Err(Error::OptionsMismatch { what: "dgamma and dbeta", reason: "affine is false but they were asked for".into() });
        }
        self.check_alive()?;
        check_eps(eps)?;
        if let Some(prepared) = self.plan_channel_rows_backward(config, eps, param_grads)? {
            return Ok(prepared);
        }
        let plan =
            self.plan_rows(&config.view, Self::norm_flags(&Config { running: None, ..*config }) | FLAG_ROW_BLOCK, eps, param_grads)?;
        let full = &plan.windowed.full;
        let (variant, stream) = (self.reduction_variant(full), full.variant());
        let epilogue =
            |kernel, grid, args: &[(u32, Arg)]| Step { kernel, variant: Variant::EPILOGUE, grid, window: None, args: args.to_vec() };
        let (x, dy, dx) = ((1, Arg::Tensor(B_X)), (2, Arg::Tensor(B_DY)), (8, Arg::Tensor(B_DX)));
        let gamma = (3, Arg::Channels(B_GAMMA, Unused::Read));
        let stats = [(4, Arg::Channels(B_MEAN, Unused::Read)), (5, Arg::Channels(B_RSTD, Unused::Read))];
        let mut args = vec![(0, Arg::Uniform), x, dy, gamma];
        args.extend(stats);
        args.extend([(6, Arg::Partials), (7, Arg::Params), dx]);
        let mut steps = plan.per_window(Kernel::NormBackward, variant, &plan.row_grids, &args);
        if plan.chunks > 1 {
            let mut args = vec![(0, Arg::Uniform)];
            args.extend(stats);
            args.extend([(6, Arg::Partials), (7, Arg::Params)]);
            steps.push(epilogue(Kernel::NormBackwardFinalize, plan.rows_grid, &args));
            let args = [(0, Arg::Uniform), x, dy, gamma, (7, Arg::Params), dx];
            steps.extend(plan.per_window(Kernel::NormBackwardDx, stream, &plan.row_grids, &args));
        }
        if param_grads && !plan.grads_in_rows {
            let args = [(0, Arg::Uniform), x, dy, (6, Arg::Partials), (7, Arg::Params)];
            steps.extend(plan.per_window(Kernel::NormParamPartials, variant, &plan.param_grids, &args));
        }
        if param_grads {
            let args = [
                (0, Arg::Uniform),
                (1, Arg::Channels(B_DGAMMA, Unused::WriteA)),
                (2, Arg::Channels(B_DBETA, Unused::WriteB)),
                (6, Arg::Partials),
            ];
            steps.push(epilogue(Kernel::NormParamGrads, plan.params_grid, &args));
        }
        Prepared::new(&self.parts(), &config.view.shape()?, &plan.windowed, self.slice_alignment(), &BACKWARD_SLOTS, &[], steps, |_| {})
    }

    /// A prepared forward of the family, fresh (`cache` false) or from the context's cache.
    pub(crate) fn norm_forward_op(
        &self,
        op: &'static str,
        view: RowView,
        eps: f32,
        affine: bool,
        running: Option<Momentum>,
        cache: bool,
    ) -> Result<PreparedNorm> {
        let config = Config { view, affine, running };
        let make = || self.plan_norm_forward(&config, eps);
        let prepared = if cache {
            let momentum = match running {
                Some(Momentum::Exponential(m)) => m.to_bits(),
                Some(Momentum::CumulativeAverage) => u32::MAX,
                None => u32::MAX - 1,
            };
            self.cached(view.key(op, eps, momentum, Self::norm_flags(&config))?, make)?
        } else {
            Arc::new(make()?)
        };
        Ok(PreparedNorm { op: ForwardOp::Rows { prepared, config } })
    }

    /// A prepared backward of the family, fresh or from the context's cache.
    pub(crate) fn norm_backward_op(
        &self,
        op: &'static str,
        view: RowView,
        eps: f32,
        affine: bool,
        param_grads: bool,
        cache: bool,
    ) -> Result<PreparedNormBackward> {
        let config = Config { view, affine, running: None };
        let make = || self.plan_norm_backward(&config, eps, param_grads);
        let prepared = if cache {
            self.cached(view.key(op, eps, u32::from(param_grads), Self::norm_flags(&config))?, make)?
        } else {
            Arc::new(make()?)
        };
        Ok(PreparedNormBackward { op: BackwardOp::Rows { prepared, config, param_grads } })
    }

    /// A forward of the family on host data: `x` already checked against `view`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn norm_forward_host<E: Element>(
        &self,
        op: &'static str,
        x: &ArrayViewD<'_, E>,
        view: RowView,
        eps: f32,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        running: Option<(&mut RunningStats, Momentum)>,
    ) -> Result<NormOutput<E>> {
        check_eps(eps)?;
        check_element::<E>(view.dtype)?;
        for (what, v) in [("gamma", gamma), ("beta", beta)] {
            if let Some(v) = v {
                check_len(what, v.len(), view.params, "one per affine parameter")?;
            }
        }
        if let Some((r, _)) = &running {
            check_len("running_mean", r.mean.len(), view.k, "one per channel")?;
            check_len("running_var", r.var.len(), view.k, "one per channel")?;
        }
        let _serial = self.serialize().await;
        let rows = view.rows();
        // Planned (sizes checked) before the array is copied.
        let prepared = self.norm_forward_op(op, view, eps, gamma.is_some(), running.as_ref().map(|(_, m)| *m), true)?;
        let xb = self.upload_tensor("x", &host_data(x))?;
        let y = self.tensor_storage("y", view.dtype, view.numel())?;
        let mean = (!view.rms).then(|| self.storage("mean", rows)).transpose()?;
        let rstd = self.storage("rstd", rows)?;
        let gamma = gamma.map(|g| self.upload("gamma", g)).transpose()?;
        let beta = beta.map(|b| self.upload("beta", b)).transpose()?;
        let running_buffers = match &running {
            Some((r, _)) => Some((self.upload("running_mean", &r.mean)?, self.upload("running_var", &r.var)?, r.num_batches_tracked)),
            None => None,
        };
        let buffers = NormForwardBuffers {
            x: all(&xb),
            y: all(&y),
            stats: NormStats { mean: mean.as_ref().map(all), rstd: all(&rstd) },
            gamma: gamma.as_ref().map(all),
            beta: beta.as_ref().map(all),
            running: running_buffers.as_ref().map(|(m, v, n)| RunningBuffers { mean: all(m), var: all(v), num_batches_tracked: *n }),
            residual: None,
            workspace: None,
        };
        self.run(|encoder| prepared.record(encoder, &buffers)).await?;
        let tensor_words = view.dtype.tensor_words(view.numel());
        let mut reads = vec![(&y, tensor_words), (&rstd, rows)];
        if let Some(m) = &mean {
            reads.push((m, rows));
        }
        if let Some((m, v, _)) = &running_buffers {
            reads.extend([(m, view.k), (v, view.k)]);
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
        let mut next = || out.next().unwrap_or_default();
        let (y, rstd) = (next(), next());
        let mean = (!view.rms).then(&mut next);
        if let Some((r, _)) = running {
            r.mean = next();
            r.var = next();
            r.num_batches_tracked = r.num_batches_tracked.saturating_add(1);
        }
        Ok(NormOutput { y: from_words(y, x.shape())?, mean, rstd })
    }

    /// A backward of the family on host data: `x` already checked against `view`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn norm_backward_host<E: Element>(
        &self,
        op: &'static str,
        dy: &ArrayViewD<'_, E>,
        x: &ArrayViewD<'_, E>,
        view: RowView,
        eps: f32,
        stats: NormStats<&[f32]>,
        gamma: Option<&[f32]>,
    ) -> Result<Gradients<E>> {
        check_eps(eps)?;
        check_element::<E>(view.dtype)?;
        if dy.shape() != x.shape() {
            return Err(bad_shape("dy", format!("{:?}", x.shape()), format!("{:?}", dy.shape())));
        }
        let rows = view.rows();
        if let Some(m) = stats.mean {
            check_len("mean", m.len(), rows, "one per row")?;
        }
        check_len("rstd", stats.rstd.len(), rows, "one per row")?;
        if let Some(g) = gamma {
            check_len("gamma", g.len(), view.params, "one per affine parameter")?;
        }
        let _serial = self.serialize().await;
        // Planned (sizes checked) before the arrays are copied.
        let prepared = self.norm_backward_op(op, view, eps, gamma.is_some(), gamma.is_some(), true)?;
        let (dyb, xb) = (self.upload_tensor("dy", &host_data(dy))?, self.upload_tensor("x", &host_data(x))?);
        let dx = self.tensor_storage("dx", view.dtype, view.numel())?;
        let mean = stats.mean.map(|m| self.upload("mean", m)).transpose()?;
        let rstd = self.upload("rstd", stats.rstd)?;
        let gamma_b = gamma.map(|g| self.upload("gamma", g)).transpose()?;
        let grads = match gamma {
            Some(_) => Some((self.storage("dgamma", view.params)?, (!view.rms).then(|| self.storage("dbeta", view.params)).transpose()?)),
            None => None,
        };
        let buffers = NormBackwardBuffers {
            dy: all(&dyb),
            x: all(&xb),
            dx: all(&dx),
            stats: BackwardStats::Saved(NormStats { mean: mean.as_ref().map(all), rstd: all(&rstd) }),
            gamma: gamma_b.as_ref().map(all),
            param_grads: grads.as_ref().map(|(g, b)| NormParamGradBuffers { dgamma: all(g), dbeta: b.as_ref().map(all) }),
            z: None,
            dresidual: None,
            workspace: None,
        };
        self.run(|encoder| prepared.record(encoder, &buffers)).await?;
        let mut reads = vec![(&dx, view.dtype.tensor_words(view.numel()))];
        if let Some((g, b)) = &grads {
            reads.push((g, view.params));
            if let Some(b) = b {
                reads.push((b, view.params));
            }
        }
        let mut out = self.download_serialized(&reads).await?.into_iter();
        let dx = from_words(out.next().unwrap_or_default(), x.shape())?;
        Ok(Gradients { dx, dgamma: out.next(), dbeta: out.next(), dresidual: None })
    }
}

/// The uniform of `view` (the whole tensor, or one window of it) with the
/// row chunking of the whole tensor; also the parameter-gradient pass's tiles
/// and chunks, for `param_target` workgroups and at most `max_param_chunks`
/// chunks a parameter (more only where the loop bound needs them).
fn row_geometry(
    view: &RowView,
    width: Width,
    wg: u64,
    (chunks, chunk_len): (u64, u64),
    (param_target, max_param_chunks): (u64, u64),
    flags: u32,
    eps: f32,
) -> (crate::plan::Geometry, u64, u64) {
    let w = u64::from(width.lanes());
    let numel = view.numel() as u64;
    let (rows, items, inner_v) = (view.rows() as u64, view.row_len() as u64 / w, view.l as u64 / w);
    let p = view.params as u64;
    // Parameter items of the gradient pass: w adjacent parameters where
    // they run along a row (`ld == 1`), else one, whose items hold w of its values.
    let (units, run) = if view.ld == 1 { (p / w, 1) } else { (p, view.ld as u64 / w) };
    let tile = if view.ld == 1 { (units.next_power_of_two()).min(u64::from(MAX_TILE_X)).min(wg) } else { 1 };
    let tiles = units.div_ceil(tile);
    let param_items = if view.ka == 0 { view.param_items() as u64 } else { (view.b * view.o) as u64 * run };
    let (param_chunks, param_chunk_len) = chunking(param_items, param_target.div_ceil(tiles).min(max_param_chunks), wg / tile);
    let count = view.row_len() as f64;
    let geometry = crate::plan::Geometry {
        channels: view.k as u32,
        inner: view.l as u32,
        outer: view.b as u32,
        inner_v: inner_v as u32,
        channels_v: view.k as u32,
        items: items as u32,
        numel_v: (numel / w) as u32,
        chunks: chunks as u32,
        chunk_len: chunk_len as u32,
        tile_x: 1,
        groups: (rows * chunks) as u32,
        flags,
        eps,
        count: count as f32,
        // Instance norm's running variance is unbiased over each instance's values.
        unbias: if count > 1.0 { (count / (count - 1.0)) as f32 } else { 1.0 },
        slice: (view.k as u64 * inner_v) as u32,
        step_rows: (wg / inner_v) as u32,
        step_rem: (wg % inner_v) as u32,
        chunk_stride: chunks as u32,
        norm_ka: view.ka as u32,
        norm_ld: view.ld as u32,
        norm_o: view.o as u32,
        norm_rows: rows as u32,
        norm_params: p as u32,
        param_items: param_items as u32,
        param_chunks: param_chunks as u32,
        param_chunk_len: param_chunk_len as u32,
        param_tile: tile as u32,
        param_groups: (tiles * param_chunks) as u32,
        walk_q: ((wg % inner_v) * w / view.ld as u64) as u32,
        walk_r: ((wg % inner_v) * w % view.ld as u64) as u32,
        walk_wrap: if view.ka == 0 { view.l } else { view.ka } as u32,
        param_units: units as u32,
        param_run: run as u32,
        ..Default::default()
    };
    (geometry, tiles, param_chunks)
}

/// Rows a workgroup of layer and RMS norm's backward in row blocks takes where
/// it sums dgamma and dbeta per (block, parameter) in its dx walk, instead of
/// a pass that reads x and dy again; `None` where it does not. Blocks of enough
/// rows for the tuning's `target` workgroups, [`NORM_ROW_BLOCK`] to
/// [`NORM_MAX_ROW_BLOCK`] (each of `windows` may end in a shorter one), and
/// only where they are long enough that their partials move less than that
/// pass would read: at most half a tensor's bytes (8-row blocks of
/// `[4096, 768]` measured slower on lavapipe than the pass, BENCHMARKS.md);
/// within one binding and the merge's loop bound.
fn grad_block_rows(rows: u64, target: u64, params: u64, windows: u64, tensor_bytes: u64, max_binding: u64) -> Option<u64> {
    let block_rows = rows.div_ceil(target).clamp(u64::from(NORM_ROW_BLOCK), u64::from(NORM_MAX_ROW_BLOCK));
    let blocks = rows.div_ceil(block_rows) + windows;
    let partials = params * blocks * u64::from(PARTIAL_FLOATS) * 4;
    (blocks <= MAX_LOOP_ITERATIONS && partials <= max_binding && 2 * partials <= tensor_bytes).then_some(block_rows)
}

/// Instance norm's running statistics from the rows' (norm_running.wgsl), one invocation per channel over `grid`.
fn running_step(grid: Grid) -> Step {
    let args = vec![
        (0, Arg::Uniform),
        (1, Arg::Channels(F_MEAN, Unused::Read)),
        (2, Arg::Params),
        (3, Arg::Channels(F_RUNNING_MEAN, Unused::WriteA)),
        (4, Arg::Channels(F_RUNNING_VAR, Unused::WriteB)),
    ];
    Step { kernel: Kernel::NormRunning, variant: Variant::EPILOGUE, grid, window: None, args }
}

/// [`GpuContext::plan_channel_rows`]'s plan: the windowed plan (one window),
/// the window's plan, the grid of the per-chunk passes, and the per-row and
/// per-channel passes' grids.
struct ChannelRows {
    windowed: Windowed,
    window: Plan,
    grid: Grid,
    rows_grid: Grid,
    channels_grid: Grid,
}

/// The engine's [`Plan`] around a uniform of the family.
fn row_plan(geometry: crate::plan::Geometry, width: Width, wg: u64, row_grid: Grid) -> Plan {
    Plan {
        width,
        workgroup_size: wg as u32,
        strategy: Strategy::Inner,
        geometry,
        reduce_grid: row_grid,
        stream_grid: row_grid,
        epilogue_grid: row_grid,
        fused_grid: None,
        lanes_grid: None,
        fused_workgroup_size: wg as u32,
        channel_lanes: false,
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::grad_block_rows;

    /// The shapes tests/norms.rs's window test runs with one-workgroup
    /// tunings sum the gradients in blocks, across windows; the benchmark's
    /// rows on the CPU tuning do, on the GPU tuning's 8-row blocks they do not.
    #[test]
    fn gradients_in_blocks_where_their_partials_are_small() {
        let binding = 1 << 16;
        assert_eq!(grad_block_rows(200, 1, 100, 2, 200 * 100 * 4, binding), Some(64));
        assert_eq!(grad_block_rows(160, 1, 256, 3, 160 * 256 * 4, binding), Some(64));
        let large = 1 << 30;
        assert_eq!(grad_block_rows(4096, 64, 768, 1, 4096 * 768 * 4, large), Some(64));
        assert_eq!(grad_block_rows(2048, 64, 4096, 1, 2048 * 4096 * 4, large), Some(32));
        assert_eq!(grad_block_rows(4096, 1024, 768, 1, 4096 * 768 * 4, large), None);
        assert_eq!(grad_block_rows(7, 1, 3, 1, 7 * 3 * 4, large), None);
        assert_eq!(grad_block_rows(1 << 20, 1, 2, 1, (1 << 20) * 2 * 4, large), None, "past the loop bound");
    }
}
