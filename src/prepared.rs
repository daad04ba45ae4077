//! The engine under every op: a program of dispatches planned once for a
//! shape and options, with its uniforms and compiled pipelines; a bind makes
//! the bind groups over the caller's buffer slices and workspace (or the op's
//! own, made at its first bind without one),
//! and a record records every dispatch in one compute pass, with no buffer
//! created and nothing compiled. As wgpu's `repeated_compute` example does:
//! create once, then only record and submit; the caller owns its buffers and
//! whatever binds them ([`Bound`]).

use std::sync::{Arc, OnceLock};

use crate::device::{Device, Unused};
use crate::error::{Error, Result};
use crate::options::Momentum;
use crate::plan::{Geometry, Grid, Windowed};
use crate::shaders::{Kernel, Storage, Variant, NORM_ROW_FLOATS};
use crate::shape::Shape;

/// The workspace's name in [`SlotBytes`] and [`Error::BadBuffer`].
const WORKSPACE: &str = "workspace";

/// What a caller's slice holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// `numel` values of the op's [`Dtype`](crate::Dtype).
    Tensor,
    /// This many f32s per channel.
    PerChannel(u32),
    /// One f32 per row of the normalization family's statistics (`src/norms/`).
    Rows,
    /// One f32 per affine parameter of the normalization family.
    AffineParams,
}

/// One of an op's slice arguments, in the order its buffers struct lists them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub name: &'static str,
    pub kind: SlotKind,
    /// Written by the op (outputs, and statistics updated in place).
    pub output: bool,
}

/// What a binding of a dispatch is bound to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// The caller's tensor slice `slot`, the step's window of it.
    Tensor(usize),
    /// The caller's per-channel slice `slot`: the f32s its kind names; a
    /// stand-in where the (optional) argument is absent.
    Channels(usize, Unused),
    /// The step's geometry: the whole tensor's or its window's.
    Uniform,
    /// The per-channel partial results of the reductions.
    Partials,
    /// The per-channel parameters of the tensor passes.
    Params,
}

/// One dispatch of a program.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub kernel: Kernel,
    pub variant: Variant,
    pub grid: Grid,
    /// The window of the tensor it covers; `None` for per-channel steps.
    pub window: Option<usize>,
    pub args: Vec<(u32, Arg)>,
}

/// A window of the tensor: its bytes, and the rows of the family's per-row
/// arrays its passes bind ([`Window::rows`](crate::plan::Window)).
#[derive(Debug, Clone, Copy)]
struct Span {
    offset: u64,
    bytes: u64,
    rows: Option<(u64, u64)>,
}

/// A slice a prepared op takes: its field in the op's buffers struct, the
/// bytes it must hold, and whether the op writes it. Optional slices (affine,
/// running statistics, residual) are listed whether or not the op's options
/// take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotBytes {
    /// The field's name (`gamma` for `affine.gamma`, `running_mean` for `running.mean`).
    pub name: &'static str,
    /// Bytes from the slice's offset the op reads or writes.
    pub bytes: u64,
    /// Written by the op (an output, or statistics updated in place).
    pub output: bool,
}

/// A step's pipeline and its bind group layout.
type Resolved = Vec<(Arc<wgpu::ComputePipeline>, wgpu::BindGroupLayout)>;

/// A program with everything it needs but the caller's slices: uniforms and
/// compiled pipelines, and the workspace it made where a bind was given none. It holds none of the caller's
/// buffers: a record binds them for that record ([`Prepared::record`]), or a
/// [`Bindings`] the caller owns holds them ([`Prepared::bind`]).
#[derive(Debug)]
pub(crate) struct Prepared {
    dev: Device,
    shape: Shape,
    /// Bytes of a [`SlotKind::Tensor`] slice.
    tensor_bytes: u64,
    slots: &'static [Slot],
    /// Pairs of slots that may be the very same slice (an op documented as in place).
    in_place: &'static [(usize, usize)],
    alignment: u64,
    windows: Vec<Span>,
    steps: Vec<Step>,
    /// Pipelines and layouts of the steps, plain (compiled when prepared) and
    /// with every input `read_write` (compiled when a set of slices first
    /// needs it: one buffer read and written by one dispatch).
    resolved: [OnceLock<Resolved>; 2],
    /// The whole tensor's geometry, then each window's.
    uniforms: Vec<wgpu::Buffer>,
    /// f32s of a [`SlotKind::Rows`] and a [`SlotKind::AffineParams`] slice.
    rows_and_params: (u64, u64),
    workspace: Workspace,
    /// The op's own workspace, made by the first bind without the caller's.
    own_workspace: OnceLock<wgpu::Buffer>,
}

/// Where the scratch of a program's dispatches lies within a workspace: the
/// per-channel partial results of the reductions, then the per-channel
/// parameters of the tensor passes, each where some step binds it.
#[derive(Debug, Clone, Copy)]
struct Workspace {
    /// Offset and bytes of the partials and of the params.
    partials: Option<(u64, u64)>,
    params: Option<(u64, u64)>,
    bytes: u64,
}

impl Workspace {
    /// Partials first, the params at the next multiple of `alignment` (their
    /// windows' rows are bound at multiples of it).
    fn new(partials: Option<u64>, params: Option<u64>, alignment: u64) -> Self {
        let partials = partials.map(|bytes| (0, bytes.max(16).next_multiple_of(4)));
        let params_at = partials.map_or(0, |(_, bytes)| bytes.next_multiple_of(alignment));
        let params = params.map(|bytes| (params_at, bytes.max(16).next_multiple_of(4)));
        let bytes = params.or(partials).map_or(0, |(offset, bytes)| offset + bytes);
        Self { partials, params, bytes }
    }
}

#[cfg(test)]
impl Prepared {
    /// The steps as they are recorded (their variants final).
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// A prepared op's bind groups over one set of the caller's slices, which
/// they keep alive; dropped with them.
#[derive(Debug)]
pub(crate) struct Bindings {
    groups: Vec<wgpu::BindGroup>,
    aliased: bool,
}

impl Prepared {
    /// Creates the uniforms (`geometry` applied to each plan's) of `steps`,
    /// lays out their workspace, and compiles their pipelines: a pipeline the device
    /// rejects is [`Error::Wgpu`] here, not a record that writes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dev: &Device,
        shape: &Shape,
        plan: &Windowed,
        alignment: u64,
        slots: &'static [Slot],
        in_place: &'static [(usize, usize)],
        steps: Vec<Step>,
        set: impl Fn(&mut Geometry),
    ) -> Result<Self> {
        dev.liveness.known()?;
        let geometries: Vec<Geometry> = std::iter::once(&plan.full)
            .chain(plan.windows.iter().map(|w| &w.plan))
            .map(|p| {
                let mut g = p.geometry;
                set(&mut g);
                g
            })
            .collect();
        // The passes over the tensor store it as its dtype; the per-channel
        // passes bind no tensor and keep the one pipeline every dtype shares.
        let storage = Storage::of(plan.dtype, dev.device.features().contains(wgpu::Features::SHADER_F16));
        let mut steps = steps;
        for step in steps.iter_mut().filter(|s| s.args.iter().any(|(_, a)| matches!(a, Arg::Tensor(_)))) {
            step.variant.storage = storage;
        }
        let uses = |wanted: fn(&Arg) -> bool| steps.iter().any(|s| s.args.iter().any(|(_, a)| wanted(a)));
        let (partials_used, params_used) = (uses(|a| matches!(a, Arg::Partials)), uses(|a| matches!(a, Arg::Params)));
        let workspace = Workspace::new(partials_used.then(|| plan.partials_bytes()), params_used.then(|| plan.params_bytes()), alignment);
        let uniforms = dev.scoped(|| {
            geometries
                .iter()
                .map(|g| {
                    let buffer = dev.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("wgpu-batchnorm geometry"),
                        size: std::mem::size_of::<Geometry>() as u64,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    dev.queue.write_buffer(&buffer, 0, bytemuck::bytes_of(g));
                    buffer
                })
                .collect::<Vec<_>>()
        })?;
        let prepared = Self {
            dev: dev.clone(),
            shape: shape.clone(),
            tensor_bytes: plan.dtype.tensor_bytes(shape.numel()),
            slots,
            in_place,
            alignment,
            windows: plan.windows.iter().map(|w| Span { offset: w.offset, bytes: w.bytes, rows: w.rows }).collect(),
            workspace,
            own_workspace: OnceLock::new(),
            steps,
            resolved: [OnceLock::new(), OnceLock::new()],
            uniforms,
            rows_and_params: (u64::from(geometries[0].norm_rows), u64::from(geometries[0].norm_params)),
        };
        prepared.resolved(false)?;
        Ok(prepared)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Every slot and the bytes its slice must hold, in the buffers struct's
    /// order, then the workspace.
    pub fn slot_bytes(&self) -> Vec<SlotBytes> {
        let slots = self.slots.iter().map(|s| SlotBytes { name: s.name, bytes: self.needed(s.kind), output: s.output });
        slots.chain([SlotBytes { name: WORKSPACE, bytes: self.workspace.bytes, output: true }]).collect()
    }

    /// Bytes of the scratch the dispatches share: the least a caller's
    /// workspace slice holds.
    pub fn workspace_bytes(&self) -> u64 {
        self.workspace.bytes
    }

    /// Bytes of device memory the op holds of its own: its uniforms, and its
    /// workspace once a bind without the caller's made it.
    pub fn held_bytes(&self) -> u64 {
        self.uniforms.iter().chain(self.own_workspace.get()).map(wgpu::Buffer::size).sum()
    }

    /// The steps' pipelines, plain or `aliased`, compiled on first use.
    fn resolved(&self, aliased: bool) -> Result<&Resolved> {
        if let Some(resolved) = self.resolved[usize::from(aliased)].get() {
            return Ok(resolved);
        }
        let resolved = self
            .steps
            .iter()
            .map(|s| {
                let pipeline = self.dev.pipelines.get(&self.dev.device, &self.dev.liveness, s.kernel, Variant { aliased, ..s.variant })?;
                let layout = pipeline.get_bind_group_layout(0);
                Ok((pipeline, layout))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.resolved[usize::from(aliased)].get_or_init(|| resolved))
    }

    /// Bytes a slot's slice must hold.
    fn needed(&self, kind: SlotKind) -> u64 {
        match kind {
            SlotKind::Tensor => self.tensor_bytes,
            SlotKind::PerChannel(n) => self.shape.channels() as u64 * 4 * u64::from(n),
            SlotKind::Rows => self.rows_and_params.0 * 4,
            SlotKind::AffineParams => self.rows_and_params.1 * 4,
        }
    }

    /// The name, bytes and output flag of argument `i`: a slot, or after the
    /// slots the workspace.
    fn argument(&self, i: usize) -> (&'static str, u64, bool) {
        self.slots.get(i).map_or((WORKSPACE, self.workspace.bytes, true), |s| (s.name, self.needed(s.kind), s.output))
    }

    /// Every present argument (the slots' slices, then the workspace) against
    /// what the op asks of it: usage, alignment, size, and no output
    /// overlapping another argument (but the op's in-place pairs).
    fn check(&self, args: &[Option<wgpu::BufferSlice<'_>>]) -> Result<()> {
        let range = |i: usize, s: &wgpu::BufferSlice<'_>| s.offset()..s.offset() + self.argument(i).1;
        for (i, s) in args.iter().enumerate() {
            let Some(s) = s else { continue };
            let (name, needed, _) = self.argument(i);
            if !s.buffer().usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(Error::BadBuffer { name, reason: format!("has usage {:?}, needs STORAGE", s.buffer().usage()) });
            }
            if !s.offset().is_multiple_of(self.alignment) {
                return Err(Error::BadBuffer {
                    name,
                    reason: format!(
                        "starts at byte {}, not a multiple of the device's min_storage_buffer_offset_alignment ({})",
                        s.offset(),
                        self.alignment
                    ),
                });
            }
            if s.size() < needed {
                return Err(Error::BadBuffer {
                    name,
                    reason: format!("holds {} bytes from byte {}, needs {needed}", s.size(), s.offset()),
                });
            }
        }
        for (o, out) in args.iter().enumerate().filter(|(o, _)| self.argument(*o).2) {
            let Some(out) = out else { continue };
            for (i, other) in args.iter().enumerate() {
                let Some(other) = other else { continue };
                if i == o || out.buffer() != other.buffer() {
                    continue;
                }
                let (a, b) = (range(o, out), range(i, other));
                let same = a == b && self.in_place.iter().any(|&p| p == (o, i) || p == (i, o));
                if a.start < b.end && b.start < a.end && !same {
                    return Err(Error::BadBuffer {
                        name: self.argument(o).0,
                        reason: format!("bytes {a:?} overlap `{}` (bytes {b:?}) in the same buffer", self.argument(i).0),
                    });
                }
            }
        }
        Ok(())
    }

    /// Binds `slices` (one per slot, `None` for an absent optional argument)
    /// and the caller's `workspace`, or the op's own: checks them, and creates
    /// the bind groups of every step. A slice wgpu cannot bind (a destroyed
    /// buffer, one of another device) is [`Error::BadBuffer`] naming it.
    pub fn bind(&self, slices: &[Option<wgpu::BufferSlice<'_>>], workspace: Option<wgpu::BufferSlice<'_>>) -> Result<Bindings> {
        self.dev.liveness.known()?;
        let args: Vec<_> = slices.iter().copied().chain([workspace]).collect();
        self.check(&args)?;
        // A dispatch may not bind one buffer read-only and read-write: where an
        // input shares a buffer with an output, the inputs are bound read_write.
        let output = |i: usize| self.argument(i).2;
        let aliased = args.iter().enumerate().any(|(o, out)| {
            output(o)
                && out.is_some_and(|out| args.iter().enumerate().any(|(i, s)| !output(i) && s.is_some_and(|s| s.buffer() == out.buffer())))
        });
        let resolved = self.resolved(aliased)?;
        let workspace = match workspace {
            Some(w) => (w.buffer(), w.offset()),
            // No step binds a workspace the program has no room in.
            None if self.workspace.bytes == 0 => (&self.dev.unused[Unused::WriteA as usize], 0),
            None => (self.own_workspace()?, 0),
        };
        match self.dev.scoped(|| self.bind_groups(slices, workspace, resolved)) {
            Ok(groups) => Ok(Bindings { groups, aliased }),
            Err(Error::Wgpu(message)) => Err(self.unbindable(&args, message)),
            Err(e) => Err(e),
        }
    }

    /// The op's own workspace, made on first use.
    fn own_workspace(&self) -> Result<&wgpu::Buffer> {
        if let Some(buffer) = self.own_workspace.get() {
            return Ok(buffer);
        }
        let buffer = self.dev.scoped(|| {
            self.dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm workspace"),
                size: self.workspace.bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(self.own_workspace.get_or_init(|| buffer))
    }

    /// The error of bind groups wgpu refused: the first slice that cannot be
    /// bound on its own, with wgpu's words.
    fn unbindable(&self, args: &[Option<wgpu::BufferSlice<'_>>], message: String) -> Error {
        let layout = self.dev.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("wgpu-batchnorm slice check"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        for (i, s) in args.iter().enumerate() {
            let Some(s) = s else { continue };
            let alone = self.dev.scoped(|| {
                let resource = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: s.buffer(),
                    offset: s.offset(),
                    size: wgpu::BufferSize::new(4),
                });
                self.dev.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry { binding: 0, resource }],
                })
            });
            match alone {
                Ok(_) => {}
                Err(Error::Wgpu(reason)) => return Error::BadBuffer { name: self.argument(i).0, reason },
                Err(e) => return e,
            }
        }
        Error::Wgpu(message)
    }

    /// Records the program over `bindings` in one compute pass, with the
    /// running statistics' `factor` where this record weighs its batch itself:
    /// copied into the uniform within the encoder, byte by byte from the
    /// device's table of byte values, so that it is this record's in whatever
    /// order encoders are submitted and from whatever thread.
    pub fn record_bound(&self, encoder: &mut wgpu::CommandEncoder, bindings: &Bindings, factor: Option<f32>) -> Result<()> {
        self.dev.liveness.known()?;
        let resolved = self.resolved(bindings.aliased)?;
        if let Some(factor) = factor {
            let at = std::mem::offset_of!(Geometry, factor_b0) as u64;
            for (i, byte) in factor.to_bits().to_le_bytes().into_iter().enumerate() {
                encoder.copy_buffer_to_buffer(&self.dev.byte_values, u64::from(byte) * 4, &self.uniforms[0], at + 4 * i as u64, 4);
            }
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-batchnorm"), timestamp_writes: None });
        for ((step, (pipeline, _)), group) in self.steps.iter().zip(resolved).zip(&bindings.groups) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(step.grid.x, step.grid.y, 1);
        }
        Ok(())
    }

    /// Binds `slices` for this record alone and records the program: the bind
    /// groups go with the call, and the buffers stay the caller's to drop.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slices: &[Option<wgpu::BufferSlice<'_>>],
        workspace: Option<wgpu::BufferSlice<'_>>,
        factor: Option<f32>,
    ) -> Result<()> {
        let bindings = self.bind(slices, workspace)?;
        self.record_bound(encoder, &bindings, factor)
    }

    fn bind_groups(
        &self,
        slices: &[Option<wgpu::BufferSlice<'_>>],
        (workspace, at): (&wgpu::Buffer, u64),
        resolved: &Resolved,
    ) -> Vec<wgpu::BindGroup> {
        self.steps
            .iter()
            .zip(resolved)
            .map(|(step, (_, layout))| {
                let entries: Vec<wgpu::BindGroupEntry> = step
                    .args
                    .iter()
                    .map(|&(binding, arg)| {
                        // The family's per-row arrays, bound for the window's rows
                        // where its tensor passes take them so, else whole.
                        let rows = step.window.and_then(|w| self.windows[w].rows);
                        let (buffer, offset, size) = match arg {
                            Arg::Tensor(slot) => {
                                // A step over the tensor names its window; plans give every tensor step one.
                                let Span { offset, bytes, .. } = self.windows[step.window.unwrap_or(0)];
                                slices[slot].map_or((&self.dev.unused[Unused::Read as usize], 0, None), |s| {
                                    (s.buffer(), s.offset() + offset, Some(bytes))
                                })
                            }
                            Arg::Channels(slot, unused) => {
                                slices[slot].map_or((&self.dev.unused[unused as usize], 0, None), |s| match (self.slots[slot].kind, rows) {
                                    (SlotKind::Rows, Some((first, count))) => (s.buffer(), s.offset() + first * 4, Some(count * 4)),
                                    (kind, _) => (s.buffer(), s.offset(), Some(self.needed(kind))),
                                })
                            }
                            Arg::Uniform => (&self.uniforms[step.window.map_or(0, |w| w + 1)], 0, None),
                            // A step binds only what the program's workspace has room for.
                            Arg::Partials => {
                                let (offset, bytes) = self.workspace.partials.unwrap_or_default();
                                (workspace, at + offset, Some(bytes))
                            }
                            Arg::Params => {
                                let (offset, bytes) = self.workspace.params.unwrap_or_default();
                                match rows {
                                    Some((first, count)) => {
                                        let row_bytes = u64::from(NORM_ROW_FLOATS) * 4;
                                        (workspace, at + offset + first * row_bytes, Some(count * row_bytes))
                                    }
                                    None => (workspace, at + offset, Some(bytes)),
                                }
                            }
                        };
                        wgpu::BindGroupEntry {
                            binding,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer,
                                offset,
                                size: size.and_then(wgpu::BufferSize::new),
                            }),
                        }
                    })
                    .collect();
                self.dev.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
            })
            .collect()
    }
}

/// A prepared op bound to one set of the caller's buffer slices: its bind
/// groups made once, then recorded any number of times, into any encoders,
/// from any thread, with nothing made or compiled per record. Made by the
/// prepared ops' `bind` ([`PreparedNorm::bind`](crate::PreparedNorm::bind) and the others').
///
/// It holds the buffers it binds (wgpu's bind groups keep them alive), and
/// nothing else does: drop it with them. A framework whose tensors change
/// every step binds every step, or records with the op's `record`, which
/// binds for that record alone. A buffer the caller destroys while it is bound
/// makes the encoders holding its records invalid (wgpu reports it when they
/// are finished or submitted).
///
/// ```no_run
/// use wgpu_batchnorm::{GpuContext, Layout, Norm, NormForwardBuffers, NormStats, Options, Shape};
/// let ctx = GpuContext::new_blocking()?;
/// let shape = Shape::new(&[8, 16, 32, 32], Layout::ChannelsFirst)?;
/// let options = Options { affine: false, track_running_stats: false, ..Options::default() };
/// let op = ctx.prepare_norm(&Norm::Batch(shape.clone()), &options)?;
/// let (x, y) = (ctx.upload("x", &vec![1.0; shape.numel()])?, ctx.storage("y", shape.numel())?);
/// let stats = ctx.storage("mean and rstd", 2 * 64)?;
/// let bound = op.bind(&NormForwardBuffers {
///     x: x.slice(..), y: y.slice(..),
///     stats: NormStats { mean: Some(stats.slice(..256)), rstd: stats.slice(256..) },
///     gamma: None, beta: None, running: None, residual: None, workspace: None,
/// })?;
/// for _ in 0..10 {
///     let mut encoder = ctx.device().create_command_encoder(&Default::default());
///     bound.record(&mut encoder)?;
///     ctx.queue().submit([encoder.finish()]);
/// }
/// drop(bound); // and with it the last hold on x, y and stats but the caller's
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct Bound {
    prepared: Arc<Prepared>,
    bindings: Bindings,
    /// The running statistics' momentum and the batches seen before the
    /// bound step, where the op updates running statistics.
    running: Option<(Momentum, u64)>,
}

impl Bound {
    pub(crate) fn new(prepared: Arc<Prepared>, bindings: Bindings, running: Option<(Momentum, u64)>) -> Self {
        Self { prepared, bindings, running }
    }

    /// Records the op into `encoder` as one compute pass; a training forward
    /// that updates running statistics weighs its batch by the
    /// `num_batches_tracked` it was bound with.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let factor = self.running.and_then(|(momentum, tracked)| momentum.per_record(tracked));
        self.prepared.record_bound(encoder, &self.bindings, factor)
    }

    /// Records a training forward that updates running statistics as the
    /// step after `num_batches_tracked` batches: the batch's weight is
    /// `momentum.factor(num_batches_tracked + 1)`, this record's own in
    /// whatever order its encoder is submitted. [`Error::OptionsMismatch`] for
    /// an op that updates no running statistics.
    pub fn record_step(&self, encoder: &mut wgpu::CommandEncoder, num_batches_tracked: u64) -> Result<()> {
        let Some((momentum, _)) = self.running else {
            let reason = "the bound op updates no running statistics".to_string();
            return Err(Error::OptionsMismatch { what: "num_batches_tracked", reason });
        };
        self.prepared.record_bound(encoder, &self.bindings, momentum.per_record(num_batches_tracked))
    }
}
