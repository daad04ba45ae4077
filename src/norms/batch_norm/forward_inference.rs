//! Inference forward: running statistics folded per channel, then one
//! normalize-scale-shift pass.
//!
//! Two dispatches in one compute pass: `prepare_inference.wgsl` (per
//! channel), `apply.wgsl`. Memory traffic: `x` once, `y` once. May run in
//! place (`y` is `x`).

use std::sync::Arc;

use ndarray::ArrayD;

use crate::context::{GpuContext, PreparedKey};
use crate::device::Unused;
use crate::error::Result;
use crate::layout::Layout;
use crate::ops::{all, channels, from_words, host_data, per_channel, per_window, ChannelAffine, RunningStats};
use crate::options::{Element, Options};
use crate::prepared::{Arg, Bound, Prepared, Slot, SlotKind};
use crate::shaders::{Fusion, Kernel, FLAG_AFFINE};
use crate::shape::Shape;

/// Buffer slices of an inference forward pass. Tensors hold the options' `dtype`, the rest f32; all need `STORAGE`
/// usage and start at a multiple of [`GpuContext::slice_alignment`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardInferenceBuffers<'a> {
    /// Input, `numel` values of the options' `dtype`.
    pub x: wgpu::BufferSlice<'a>,
    /// Output, `numel` values of the options' `dtype`: either exactly `x` (in place) or overlapping no other argument.
    pub y: wgpu::BufferSlice<'a>,
    /// `gamma` and `beta`, exactly when `options.affine`.
    pub affine: Option<ChannelAffine<wgpu::BufferSlice<'a>>>,
    /// Running mean, `C` f32s.
    pub running_mean: wgpu::BufferSlice<'a>,
    /// Running variance, `C` f32s.
    pub running_var: wgpu::BufferSlice<'a>,
    /// The residual added before the activation, `numel` values of the options' `dtype`, exactly when
    /// `options.epilogue.residual`; `y` may be this very slice (in place).
    pub residual: Option<wgpu::BufferSlice<'a>>,
    /// Scratch for the dispatches, `workspace_bytes()` bytes; `None`: the op's own.
    pub workspace: Option<wgpu::BufferSlice<'a>>,
}

const X: usize = 0;
const Y: usize = 1;
const GAMMA: usize = 2;
const BETA: usize = 3;
const RUNNING_MEAN: usize = 4;
const RUNNING_VAR: usize = 5;
const RESIDUAL: usize = 6;

const SLOTS: [Slot; 7] = [
    Slot { name: "x", kind: SlotKind::Tensor, output: false },
    Slot { name: "y", kind: SlotKind::Tensor, output: true },
    Slot { name: "gamma", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "beta", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_mean", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "running_var", kind: SlotKind::PerChannel(1), output: false },
    Slot { name: "residual", kind: SlotKind::Tensor, output: false },
];

/// Batch norm's inference forward planned for one shape and [`Options`]
/// (behind the op model's [`PreparedNormInference`](crate::PreparedNormInference)).
#[derive(Debug, Clone)]
pub(crate) struct PreparedForwardInference {
    prepared: Arc<Prepared>,
    options: Options,
}

impl PreparedForwardInference {
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
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, b: &ForwardInferenceBuffers<'_>) -> Result<()> {
        self.prepared.record(encoder, &self.slices(b)?, b.workspace, None)
    }

    /// Checks `b` and binds it once, for any number of records ([`Bound`]).
    pub fn bind(&self, b: &ForwardInferenceBuffers<'_>) -> Result<Bound> {
        Ok(Bound::new(self.prepared.clone(), self.prepared.bind(&self.slices(b)?, b.workspace)?, None))
    }

    /// `b` in slot order, checked against the options.
    fn slices<'a>(&self, b: &ForwardInferenceBuffers<'a>) -> Result<[Option<wgpu::BufferSlice<'a>>; 7]> {
        self.options.check_affine(b.affine.is_some())?;
        self.options.epilogue.check_residual("residual", b.residual.is_some())?;
        Ok([
            Some(b.x),
            Some(b.y),
            b.affine.map(|a| a.gamma),
            b.affine.map(|a| a.beta),
            Some(b.running_mean),
            Some(b.running_var),
            b.residual,
        ])
    }
}

impl GpuContext {
    /// Plans an inference forward for `shape` and `options`
    /// (`options.track_running_stats` must be true: without running
    /// statistics, eval normalizes with the batch's, as training does).
    pub(crate) fn prepare_forward_inference(&self, shape: &Shape, options: &Options) -> Result<PreparedForwardInference> {
        Ok(PreparedForwardInference { prepared: Arc::new(self.plan_forward_inference(shape, options)?), options: *options })
    }

    pub(crate) fn cached_forward_inference(&self, shape: &Shape, options: &Options) -> Result<PreparedForwardInference> {
        let key = PreparedKey::new("forward_inference", shape, [options.eps.to_bits(), 0], u32::from(options.affine))
            .fused(&options.epilogue)
            .typed(options.dtype);
        let prepared = self.cached(key, || self.plan_forward_inference(shape, options))?;
        Ok(PreparedForwardInference { prepared, options: *options })
    }

    fn plan_forward_inference(&self, shape: &Shape, options: &Options) -> Result<Prepared> {
        options.validate()?;
        options.check_running(true)?;
        self.check_alive()?;
        let plan = self.plan(shape, options.dtype)?;
        let prepare = [
            (0, Arg::Uniform),
            (2, channels(GAMMA, Unused::Read)),
            (3, channels(BETA, Unused::Read)),
            (6, Arg::Params),
            (7, channels(RUNNING_MEAN, Unused::Read)),
            (8, channels(RUNNING_VAR, Unused::Read)),
        ];
        let mut steps = vec![per_channel(&plan, Kernel::PrepareInference, &prepare)];
        let mut apply = vec![(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Params), (3, Arg::Tensor(Y))];
        apply.extend(options.epilogue.residual.then_some((9, Arg::Tensor(RESIDUAL))));
        let fusion = Fusion::of(&options.epilogue);
        steps.extend(per_window(&plan, |_| Kernel::Apply, |p| p.variant().fused(fusion), |p| p.stream_grid, &apply));
        Prepared::new(&self.parts(), shape, &plan, self.slice_alignment(), &SLOTS, &[(Y, X), (Y, RESIDUAL)], steps, |g| {
            g.eps = options.eps;
            g.slope = options.epilogue.activation.slope();
            if options.affine {
                g.flags |= FLAG_AFFINE;
            }
        })
    }

    /// Records an inference forward pass with running statistics into
    /// `encoder`, through a prepared op the context keeps:
    /// `y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta`,
    /// computed as `(x - running_mean) * k + beta` with `k` folded per
    /// channel. `y` may be `x` itself (in place).
    pub(crate) fn encode_forward_inference(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        shape: &Shape,
        options: &Options,
        b: &ForwardInferenceBuffers<'_>,
    ) -> Result<()> {
        self.cached_forward_inference(shape, options)?.record(encoder, b)
    }

    /// Batch norm's inference forward on host arrays with running
    /// statistics, through its epilogue where `options` has one (`residual`
    /// exactly when it has a residual).
    pub(crate) async fn forward_inference_epilogue<E: Element>(
        &self,
        x: &ndarray::ArrayViewD<'_, E>,
        residual: Option<&ndarray::ArrayViewD<'_, E>>,
        layout: Layout,
        affine: Option<ChannelAffine<&[f32]>>,
        running: &RunningStats,
        options: &Options,
    ) -> Result<ArrayD<E>> {
        options.validate()?;
        options.check_affine(affine.is_some())?;
        options.check_running(true)?;
        options.epilogue.check_residual("residual", residual.is_some())?;
        crate::options::check_element::<E>(options.dtype)?;
        let _serial = self.serialize().await;
        let shape = Shape::new(x.shape(), layout)?;
        if let Some(r) = residual {
            shape.check_same_dims("residual", r.shape())?;
        }
        if let Some(a) = &affine {
            shape.check_channel_len("gamma", a.gamma.len())?;
            shape.check_channel_len("beta", a.beta.len())?;
        }
        shape.check_channel_len("running_mean", running.mean.len())?;
        shape.check_channel_len("running_var", running.var.len())?;
        // Planned (sizes checked) before the arrays are copied.
        let op = self.cached_forward_inference(&shape, options)?;
        self.check_alive()?;
        let xb = self.upload_tensor("x", &host_data(x))?;
        let rb = residual.map(|r| self.upload_tensor("residual", &host_data(r))).transpose()?;
        let y = self.tensor_storage("y", options.dtype, shape.numel())?;
        let affine_buffers = self.upload_affine(affine)?;
        let (mean, var) = (self.upload("running_mean", &running.mean)?, self.upload("running_var", &running.var)?);
        let buffers = ForwardInferenceBuffers {
            x: all(&xb),
            y: all(&y),
            affine: affine_buffers.as_ref().map(|a| ChannelAffine { gamma: all(&a.gamma), beta: all(&a.beta) }),
            running_mean: all(&mean),
            running_var: all(&var),
            residual: rb.as_ref().map(all),
            workspace: None,
        };
        self.run(|encoder| op.record(encoder, &buffers)).await?;
        let y = self.download_serialized(&[(&y, E::DTYPE.tensor_words(shape.numel()))]).await?.pop().unwrap_or_default();
        from_words(y, shape.dims())
    }
}
