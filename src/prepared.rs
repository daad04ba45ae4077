//! The engine under every op: a program of dispatches planned once for a
//! shape and options, with its uniforms, scratch buffers and pipelines; each
//! record binds the caller's buffer slices (bind groups cached per distinct
//! set of slices) and records every dispatch in one compute pass, with no
//! buffer created. As wgpu's `repeated_compute` example does: create once,
//! then only record and submit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::context::Unused;
use crate::error::{Error, Result};
use crate::pipelines::PipelineCache;
use crate::plan::{Geometry, Grid, Windowed};
use crate::shaders::{Kernel, Storage, Variant};
use crate::shape::Shape;

/// Bind groups kept per prepared op, for the most recent distinct sets of
/// slices. Each keeps its buffers alive, so the number stays small.
const BIND_GROUP_SETS: usize = 4;
/// Slots of the ring that carries a per-record running-statistics factor:
/// records of one prepared op between two submits each read their own slot
/// while there are at most this many of them.
const FACTOR_SLOTS: u64 = 256;

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

/// The context's parts a prepared op needs to record on its own.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub pipelines: Arc<PipelineCache>,
    pub unused: Arc<[wgpu::Buffer; 3]>,
}

/// The caller's slices a set of bind groups was made for, and whether its inputs are `read_write`.
type SliceKey = (Vec<Option<(wgpu::Buffer, u64)>>, bool);
/// A step's pipeline and its bind group layout.
type Resolved = Vec<(Arc<wgpu::ComputePipeline>, wgpu::BindGroupLayout)>;

/// A program with everything it needs but the caller's slices.
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
    /// (byte offset, bytes) of each window of the tensor.
    windows: Vec<(u64, u64)>,
    steps: Vec<Step>,
    /// Pipelines and layouts of the steps, plain and with every input
    /// `read_write` (for slices of one buffer read and written by one dispatch).
    resolved: [OnceLock<Resolved>; 2],
    /// The whole tensor's geometry, then each window's.
    uniforms: Vec<wgpu::Buffer>,
    /// The running-statistics factor the whole tensor's geometry was created with.
    prepared_factor: f32,
    /// f32s of a [`SlotKind::Rows`] and a [`SlotKind::AffineParams`] slice.
    rows_and_params: (u64, u64),
    partials: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_groups: Mutex<Vec<(SliceKey, Arc<Vec<wgpu::BindGroup>>)>>,
    /// Per-record factors, and the next slot to write.
    factors: wgpu::Buffer,
    next_factor: AtomicU64,
}

impl Prepared {
    /// Creates the uniforms (`geometry` applied to each plan's) and scratch buffers of `steps`.
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
    ) -> Self {
        let geometries: Vec<Geometry> = std::iter::once(&plan.full)
            .chain(plan.windows.iter().map(|w| &w.plan))
            .map(|p| {
                let mut g = p.geometry;
                set(&mut g);
                g
            })
            .collect();
        let uniforms = geometries
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
            .collect();
        // The passes over the tensor store it as its dtype; the per-channel
        // passes bind no tensor and keep the one pipeline every dtype shares.
        let storage = Storage::of(plan.dtype, dev.device.features().contains(wgpu::Features::SHADER_F16));
        let mut steps = steps;
        for step in steps.iter_mut().filter(|s| s.args.iter().any(|(_, a)| matches!(a, Arg::Tensor(_)))) {
            step.variant.storage = storage;
        }
        let uses = |wanted: fn(&Arg) -> bool| steps.iter().any(|s| s.args.iter().any(|(_, a)| wanted(a)));
        let scratch = |label, bytes: u64, used: bool| {
            dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: if used { bytes.max(16) } else { 16 },
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Self {
            dev: dev.clone(),
            shape: shape.clone(),
            tensor_bytes: plan.dtype.tensor_bytes(shape.numel()),
            slots,
            in_place,
            alignment,
            windows: plan.windows.iter().map(|w| (w.offset, w.bytes)).collect(),
            partials: scratch("wgpu-batchnorm partials", plan.partials_bytes(), uses(|a| matches!(a, Arg::Partials))),
            params: scratch("wgpu-batchnorm params", plan.params_bytes(), uses(|a| matches!(a, Arg::Params))),
            steps,
            resolved: [OnceLock::new(), OnceLock::new()],
            uniforms,
            prepared_factor: geometries[0].factor,
            rows_and_params: (u64::from(geometries[0].norm_rows), u64::from(geometries[0].norm_params)),
            bind_groups: Mutex::new(Vec::new()),
            factors: dev.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm factors"),
                size: FACTOR_SLOTS * 4,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            next_factor: AtomicU64::new(0),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Records a copy of `factor` into the whole tensor's geometry (which the
    /// per-channel epilogues read) ahead of the pass. The value travels
    /// through its own ring slot, written by the queue before the submit, and
    /// the copy is ordered in the encoder: records before one submit each see
    /// their own factor.
    fn record_factor(&self, encoder: &mut wgpu::CommandEncoder, factor: f32) {
        // Until the ring is first used, the uniform holds the prepared factor.
        if factor.to_bits() == self.prepared_factor.to_bits() && self.next_factor.load(Ordering::Relaxed) == 0 {
            return;
        }
        let slot = self.next_factor.fetch_add(1, Ordering::Relaxed) % FACTOR_SLOTS;
        self.dev.queue.write_buffer(&self.factors, slot * 4, bytemuck::bytes_of(&factor));
        let at = std::mem::offset_of!(Geometry, factor) as u64;
        encoder.copy_buffer_to_buffer(&self.factors, slot * 4, &self.uniforms[0], at, 4);
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

    /// Every present slice against its slot: usage, alignment, size, and no
    /// output overlapping another argument (but the op's in-place pairs).
    fn check(&self, slices: &[Option<wgpu::BufferSlice<'_>>]) -> Result<()> {
        let range = |i: usize, s: &wgpu::BufferSlice<'_>| s.offset()..s.offset() + self.needed(self.slots[i].kind);
        for (i, s) in slices.iter().enumerate() {
            let Some(s) = s else { continue };
            let name = self.slots[i].name;
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
            let needed = self.needed(self.slots[i].kind);
            if s.size() < needed {
                return Err(Error::BadBuffer {
                    name,
                    reason: format!("holds {} bytes from byte {}, needs {needed}", s.size(), s.offset()),
                });
            }
        }
        for (o, out) in slices.iter().enumerate().filter(|(o, _)| self.slots[*o].output) {
            let Some(out) = out else { continue };
            for (i, other) in slices.iter().enumerate() {
                let Some(other) = other else { continue };
                if i == o || out.buffer() != other.buffer() {
                    continue;
                }
                let (a, b) = (range(o, out), range(i, other));
                let same = a == b && self.in_place.iter().any(|&p| p == (o, i) || p == (i, o));
                if a.start < b.end && b.start < a.end && !same {
                    return Err(Error::BadBuffer {
                        name: self.slots[o].name,
                        reason: format!("bytes {a:?} overlap `{}` (bytes {b:?}) in the same buffer", self.slots[i].name),
                    });
                }
            }
        }
        Ok(())
    }

    /// Records the program over `slices` (one per slot, `None` for an absent
    /// optional argument) in one compute pass, with the running statistics'
    /// `factor` where they are updated. With `keep`, the bind groups are kept
    /// for the next record over the same slices.
    pub fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slices: &[Option<wgpu::BufferSlice<'_>>],
        factor: Option<f32>,
        keep: bool,
    ) -> Result<()> {
        self.check(slices)?;
        if let Some(factor) = factor {
            self.record_factor(encoder, factor);
        }
        // A dispatch may not bind one buffer read-only and read-write: where an
        // input shares a buffer with an output, the inputs are bound read_write.
        let aliased = slices.iter().enumerate().any(|(o, out)| {
            self.slots[o].output
                && out.is_some_and(|out| {
                    slices.iter().enumerate().any(|(i, s)| i != o && !self.slots[i].output && s.is_some_and(|s| s.buffer() == out.buffer()))
                })
        });
        let resolved = match self.resolved[usize::from(aliased)].get() {
            Some(resolved) => resolved,
            None => {
                let resolved = self
                    .steps
                    .iter()
                    .map(|s| {
                        let pipeline = self.dev.pipelines.get(&self.dev.device, s.kernel, Variant { aliased, ..s.variant })?;
                        let layout = pipeline.get_bind_group_layout(0);
                        Ok((pipeline, layout))
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.resolved[usize::from(aliased)].get_or_init(|| resolved)
            }
        };
        let key: SliceKey = (slices.iter().map(|s| s.map(|s| (s.buffer().clone(), s.offset()))).collect(), aliased);
        let cached = keep.then(|| self.cached(&key)).flatten();
        let groups = match cached {
            Some(groups) => groups,
            None => {
                let groups = Arc::new(self.bind_groups(slices, resolved));
                if keep {
                    let mut cache = self.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() == BIND_GROUP_SETS {
                        cache.remove(0);
                    }
                    cache.push((key, groups.clone()));
                }
                groups
            }
        };
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-batchnorm"), timestamp_writes: None });
        for ((step, (pipeline, _)), group) in self.steps.iter().zip(resolved).zip(groups.iter()) {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(step.grid.x, step.grid.y, 1);
        }
        Ok(())
    }

    fn cached(&self, key: &SliceKey) -> Option<Arc<Vec<wgpu::BindGroup>>> {
        let mut cache = self.bind_groups.lock().unwrap_or_else(|e| e.into_inner());
        let i = cache.iter().position(|(k, _)| k == key)?;
        // Most recently used last, so the oldest set goes first.
        let entry = cache.remove(i);
        let groups = entry.1.clone();
        cache.push(entry);
        Some(groups)
    }

    fn bind_groups(&self, slices: &[Option<wgpu::BufferSlice<'_>>], resolved: &Resolved) -> Vec<wgpu::BindGroup> {
        self.steps
            .iter()
            .zip(resolved)
            .map(|(step, (_, layout))| {
                let entries: Vec<wgpu::BindGroupEntry> = step
                    .args
                    .iter()
                    .map(|&(binding, arg)| {
                        let (buffer, offset, size) = match arg {
                            Arg::Tensor(slot) => {
                                // A step over the tensor names its window; plans give every tensor step one.
                                let (offset, bytes) = self.windows[step.window.unwrap_or(0)];
                                slices[slot].map_or((&self.dev.unused[Unused::Read as usize], 0, None), |s| {
                                    (s.buffer(), s.offset() + offset, Some(bytes))
                                })
                            }
                            Arg::Channels(slot, unused) => slices[slot].map_or((&self.dev.unused[unused as usize], 0, None), |s| {
                                (s.buffer(), s.offset(), Some(self.needed(self.slots[slot].kind)))
                            }),
                            Arg::Uniform => (&self.uniforms[step.window.map_or(0, |w| w + 1)], 0, None),
                            Arg::Partials => (&self.partials, 0, None),
                            Arg::Params => (&self.params, 0, None),
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
