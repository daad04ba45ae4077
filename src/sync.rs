//! Synchronized batch norm: training statistics over the batch of every rank
//! (devices in one process, or processes on many machines through MPI), as
//! PyTorch's `SyncBatchNorm`.
//!
//! The training ops run in phases around a collective (docs/SPEC.md,
//! Synchronized batch norm): the forward's local statistics per channel
//! `(count, mean, M2)` (`sync_stats.wgsl`) are gathered from every rank and
//! merged with Chan's formula in rank order, in f64, identically on every rank,
//! then applied (`finalize_sync.wgsl`, `apply.wgsl`) with the global count;
//! the backward's local `sum dy` and `sum dy * (x - mean)`
//! (`backward_sync_sums.wgsl`) are gathered and summed in rank order, then
//! applied (`backward_finalize_sync.wgsl`, `backward_dx.wgsl`). Per rank and
//! step, 3 C values travel forward and 2 C backward.

use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "mpi")]
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::device::Unused;
use crate::error::{Error, Result};
use crate::layer::{batch_norm_layer_methods, LayerState};
use crate::layout::Layout;
use crate::norms::batch_norm::backward::{BackwardBuffers, ParamGradBuffers};
use crate::norms::batch_norm::forward_inference::ForwardInferenceBuffers;
use crate::norms::batch_norm::forward_train::ForwardTrainBuffers;
use crate::ops::{all, channels, from_words, host_data, per_channel, per_window, BackwardStats, ChannelAffine, Gradients, NormStats};
use crate::options::{check_element, Element, Options};
use crate::prepared::{Arg, Prepared, Slot, SlotKind};
use crate::shaders::{Kernel, FLAG_AFFINE, FLAG_RUNNING, FLAG_WRITE_GRADS, SYNC_LOCAL_FLOATS, SYNC_STATS_FLOATS, SYNC_SUMS_FLOATS};
use crate::shape::Shape;

#[cfg(not(target_arch = "wasm32"))]
mod in_process;
#[cfg(not(target_arch = "wasm32"))]
pub use in_process::{in_process, in_process_with_timeout, InProcessRank};

/// How long a collective waits for the other ranks before it gives up with
/// [`Error::Collective`]: ten minutes, as PyTorch's NCCL process groups.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// The one collective the synchronized ops need: every rank's values, in rank order.
///
/// A collective that cannot complete (a rank failed, left, or did not come
/// within the timeout) returns [`Error::Collective`] on every rank that waits
/// for it, never blocks for ever; after that the group is unusable, and every
/// later call returns the same error, as a failed NCCL communicator is.
pub trait Collective {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Every rank's `local` (the same length on every rank), concatenated in rank order.
    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>>;
    /// Tells the other ranks that this one failed and will not come to the
    /// collectives they may be waiting in, so that those return
    /// [`Error::Collective`] now rather than at their timeout.
    /// [`SyncBatchNorm`] calls it when a synchronized step fails on this rank.
    /// By default it does nothing: the others' collectives time out.
    fn abort(&self, reason: &str) {
        let _ = reason;
    }
}

impl<T: Collective + ?Sized> Collective for &T {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn size(&self) -> usize {
        (**self).size()
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>> {
        (**self).all_gather(local)
    }

    fn abort(&self, reason: &str) {
        (**self).abort(reason)
    }
}

/// The ranks of an MPI job (`mpirun -np N program`), on `MPI_COMM_WORLD`.
///
/// Each collective is a non-blocking `MPI_Iallgather` tested until it
/// completes or its timeout passes ([`DEFAULT_COLLECTIVE_TIMEOUT`], or
/// [`Mpi::with_timeout`]'s): past it, [`Error::Collective`], and every later
/// call fails at once (the pending collective's buffers are left to MPI). A
/// rank that fails cannot tell the others (MPI has no abort short of ending
/// the job), so theirs time out.
#[cfg(feature = "mpi")]
pub struct Mpi {
    world: mpi::topology::SimpleCommunicator,
    timeout: Duration,
    failed: Mutex<Option<String>>,
    // Finalizes MPI when dropped, after the communicator.
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl Mpi {
    /// Initializes MPI; an error if it already was, or cannot be.
    pub fn new() -> Result<Self> {
        Self::with_timeout(DEFAULT_COLLECTIVE_TIMEOUT)
    }

    /// [`Mpi::new`] whose collectives wait at most `timeout` for the other ranks.
    pub fn with_timeout(timeout: Duration) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| Error::Collective("MPI is already initialized".into()))?;
        Ok(Self { world: universe.world(), timeout, failed: Mutex::new(None), _universe: universe })
    }
}

#[cfg(feature = "mpi")]
impl Collective for Mpi {
    fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.size() as usize
    }

    fn all_gather(&self, local: &[f64]) -> Result<Vec<f64>> {
        use mpi::collective::CommunicatorCollectives;
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = &*failed {
            return Err(Error::Collective(reason.clone()));
        }
        // The buffers live for the program: a collective that times out is
        // still pending in MPI, which may write them later.
        let send: &'static [f64] = Box::leak(local.to_vec().into_boxed_slice());
        let receive: &'static mut [f64] = Box::leak(vec![0.0; local.len() * self.size()].into_boxed_slice());
        let mut request = self.world.immediate_all_gather_into(mpi::request::StaticScope, send, receive);
        let deadline = Instant::now() + self.timeout;
        loop {
            match request.test_with_data() {
                Ok((_, gathered)) => return Ok(gathered.to_vec()),
                Err(pending) if Instant::now() < deadline => {
                    request = pending;
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(pending) => {
                    // Left pending: MPI cannot cancel a collective, and its
                    // buffers were leaked for that.
                    std::mem::forget(pending);
                    let reason = format!("rank {} waited {:?} for the other ranks in an all-gather", self.rank(), self.timeout);
                    *failed = Some(reason.clone());
                    return Err(Error::Collective(reason));
                }
            }
        }
    }
}

/// One rank's, or the merged, statistics of one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Values.
    pub count: f64,
    /// Their mean.
    pub mean: f64,
    /// The sum of their squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    /// Chan's formula; an empty side leaves the other as it is.
    pub fn merge(self, b: Moments) -> Moments {
        if b.count == 0.0 {
            return self;
        }
        if self.count == 0.0 {
            return b;
        }
        let count = self.count + b.count;
        let d = b.mean - self.mean;
        Moments { count, mean: self.mean + d * (b.count / count), m2: self.m2 + b.m2 + d * d * (self.count * b.count / count) }
    }
}

/// Every rank's moments of `channels` channels, as gathered (`[count, mean, M2]`
/// per channel, rank after rank), merged channel by channel in rank order: the
/// same on every rank, bit for bit.
pub fn merge_ranks(gathered: &[f64], channels: usize) -> Vec<Moments> {
    let empty = Moments { count: 0.0, mean: 0.0, m2: 0.0 };
    let mut out = vec![empty; channels];
    if channels == 0 {
        return out;
    }
    for rank in gathered.chunks_exact(3 * channels) {
        for (c, m) in rank.chunks_exact(3).enumerate() {
            out[c] = out[c].merge(Moments { count: m[0], mean: m[1], m2: m[2] });
        }
    }
    out
}

const X: usize = 0;
const Y: usize = 1;
const SAVE_MEAN: usize = 2;
const SAVE_INVSTD: usize = 3;
const GAMMA: usize = 4;
const BETA: usize = 5;
const RUNNING_MEAN: usize = 6;
const RUNNING_VAR: usize = 7;
const LOCAL: usize = 8;
const MERGED: usize = 9;
const DY: usize = 10;
const DX: usize = 11;
const DGAMMA: usize = 12;
const DBETA: usize = 13;

const fn slot(name: &'static str, kind: SlotKind, output: bool) -> Slot {
    Slot { name, kind, output }
}

/// Every argument of the four programs, one slot list for all; each program
/// binds the ones it uses.
const SLOTS: [Slot; 14] = [
    slot("x", SlotKind::Tensor, false),
    slot("y", SlotKind::Tensor, true),
    slot("mean", SlotKind::PerChannel(1), true),
    slot("rstd", SlotKind::PerChannel(1), true),
    slot("gamma", SlotKind::PerChannel(1), false),
    slot("beta", SlotKind::PerChannel(1), false),
    slot("running_mean", SlotKind::PerChannel(1), true),
    slot("running_var", SlotKind::PerChannel(1), true),
    slot("local statistics", SlotKind::PerChannel(SYNC_LOCAL_FLOATS), true),
    slot("merged statistics", SlotKind::PerChannel(SYNC_STATS_FLOATS), false),
    slot("dy", SlotKind::Tensor, false),
    slot("dx", SlotKind::Tensor, true),
    slot("dgamma", SlotKind::PerChannel(1), true),
    slot("dbeta", SlotKind::PerChannel(1), true),
];

/// The four phases' programs for one shape.
#[derive(Debug)]
struct Programs {
    shape: Shape,
    stats: Prepared,
    apply: Prepared,
    sums: Prepared,
    backward: Prepared,
}

impl Programs {
    fn new(ctx: &GpuContext, shape: &Shape, options: &Options) -> Result<Self> {
        ctx.check_alive()?;
        let plan = ctx.plan(shape, options.dtype)?;
        let prepare = |steps, set: &dyn Fn(&mut crate::plan::Geometry)| {
            Prepared::new(&ctx.parts(), shape, &plan, ctx.slice_alignment(), &SLOTS, &[], steps, |g| {
                g.eps = options.eps;
                if options.affine {
                    g.flags |= FLAG_AFFINE;
                }
                set(g);
            })
        };
        let mut stats = per_window(
            &plan,
            |p| p.stats_kernel(),
            |p| ctx.reduction_variant(p),
            |p| p.reduce_grid,
            &[(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Partials)],
        );
        stats.push(per_channel(&plan, Kernel::SyncStats, &[(0, Arg::Uniform), (1, Arg::Partials), (9, channels(LOCAL, Unused::WriteA))]));
        let finalize = [
            (0, Arg::Uniform),
            (2, channels(GAMMA, Unused::Read)),
            (3, channels(BETA, Unused::Read)),
            (4, channels(SAVE_MEAN, Unused::WriteA)),
            (5, channels(SAVE_INVSTD, Unused::WriteB)),
            (6, Arg::Params),
            (7, channels(RUNNING_MEAN, Unused::WriteA)),
            (8, channels(RUNNING_VAR, Unused::WriteB)),
            (9, channels(MERGED, Unused::Read)),
        ];
        let mut apply = vec![per_channel(&plan, Kernel::FinalizeSync, &finalize)];
        let apply_args = [(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Params), (3, Arg::Tensor(Y))];
        apply.extend(per_window(&plan, |_| Kernel::Apply, |p| p.variant(), |p| p.stream_grid, &apply_args));
        let prepare_mean =
            per_channel(&plan, Kernel::BackwardPrepare, &[(0, Arg::Uniform), (6, Arg::Params), (7, channels(SAVE_MEAN, Unused::Read))]);
        let mut sums = vec![prepare_mean.clone()];
        let reduce = [(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Tensor(DY)), (3, Arg::Params), (4, Arg::Partials)];
        sums.extend(per_window(&plan, |p| p.reduce_kernel(), |p| ctx.reduction_variant(p), |p| p.reduce_grid, &reduce));
        sums.push(per_channel(
            &plan,
            Kernel::BackwardSyncSums,
            &[(0, Arg::Uniform), (1, Arg::Partials), (9, channels(LOCAL, Unused::WriteA))],
        ));
        let finalize_backward = [
            (0, Arg::Uniform),
            (2, channels(GAMMA, Unused::Read)),
            (3, channels(SAVE_INVSTD, Unused::Read)),
            (4, channels(DGAMMA, Unused::WriteA)),
            (5, channels(DBETA, Unused::WriteB)),
            (6, Arg::Params),
            (9, channels(MERGED, Unused::Read)),
        ];
        let mut backward = vec![prepare_mean, per_channel(&plan, Kernel::BackwardFinalizeSync, &finalize_backward)];
        let dx = [(0, Arg::Uniform), (1, Arg::Tensor(X)), (2, Arg::Tensor(DY)), (3, Arg::Params), (4, Arg::Tensor(DX))];
        backward.extend(per_window(&plan, |_| Kernel::BackwardDx, |p| p.variant(), |p| p.stream_grid, &dx));
        let running = options.track_running_stats;
        Ok(Self {
            shape: shape.clone(),
            stats: prepare(stats, &|_| {})?,
            apply: prepare(apply, &|g| {
                if running {
                    g.flags |= FLAG_RUNNING;
                    g.set_factor(options.momentum.factor(1));
                }
            })?,
            sums: prepare(sums, &|_| {})?,
            backward: prepare(backward, &|g| {
                if options.affine {
                    g.flags |= FLAG_WRITE_GRADS;
                }
            })?,
        })
    }
}

/// What the last forward pass was.
#[derive(Debug, Clone)]
enum Last {
    /// Synchronized training: this rank's shape (`None` without samples), the
    /// count over all ranks, and per channel the merged mean minus `save_mean`.
    Sync { shape: Option<Shape>, count: f64, delta: Vec<f64> },
    /// Eval mode, per rank as [`BatchNorm`](crate::BatchNorm) does.
    Local { shape: Shape, batch: bool },
}

/// A batch-norm layer whose training statistics are those of the batch of
/// every rank ([`Collective`]): PyTorch's `SyncBatchNorm`. In eval mode it
/// behaves as [`BatchNorm`](crate::BatchNorm), rank by rank. Every rank must
/// call the same methods in the same order, as with any collective.
///
/// Each rank may hold a different batch size, including none: a rank
/// without samples passes a tensor whose batch dimension is 0, contributes
/// nothing to the statistics, and still takes part in the collectives.
///
/// ```
/// use std::sync::Arc;
/// use ndarray::ArrayD;
/// use wgpu_batchnorm::{in_process, GpuContext, Layout, Options, SyncBatchNorm};
/// # fn main() -> wgpu_batchnorm::Result<()> {
/// let threads: Vec<_> = in_process(2)
///     .into_iter()
///     .map(|rank| {
///         std::thread::spawn(move || -> wgpu_batchnorm::Result<ArrayD<f32>> {
///             let ctx = Arc::new(GpuContext::new_blocking()?);
///             let mut bn = SyncBatchNorm::new(ctx, rank, 3, Options::default())?;
///             let x = ArrayD::from_shape_fn(vec![2, 3, 4], |i| (i[0] * 7 + i[2]) as f32);
///             bn.forward_blocking(&x.view(), Layout::ChannelsFirst)
///         })
///     })
///     .collect();
/// for t in threads {
///     t.join().expect("rank")?;
/// }
/// # Ok(()) }
/// ```
pub struct SyncBatchNorm<C: Collective> {
    ctx: Arc<GpuContext>,
    collective: C,
    options: Options,
    training: bool,
    state: LayerState,
    /// This rank's statistics or sums, and the merged ones to apply.
    local: wgpu::Buffer,
    merged: wgpu::Buffer,
    num_batches_tracked: u64,
    programs: Mutex<Option<Arc<Programs>>>,
    last: Option<Last>,
    /// `x` of the last forward (on host arrays), for its backward.
    host_x: Option<wgpu::Buffer>,
}

impl<C: Collective> std::fmt::Debug for SyncBatchNorm<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncBatchNorm")
            .field("rank", &self.collective.rank())
            .field("ranks", &self.collective.size())
            .field("channels", &self.state.channels)
            .field("options", &self.options)
            .field("training", &self.training)
            .finish_non_exhaustive()
    }
}

batch_norm_layer_methods!(SyncBatchNorm<C: Collective>);

impl<C: Collective> SyncBatchNorm<C> {
    /// A layer in training mode with PyTorch's initial parameters and statistics.
    /// A fused epilogue (`options.epilogue` other than the default) is
    /// [`Error::OptionsMismatch`]: the synchronized backward does not mask.
    /// `options.dtype` is the element type of the tensors the layer takes
    /// (slices, or arrays of that [`Element`]); its parameters, statistics and
    /// the values the ranks exchange are f32.
    pub fn new(ctx: Arc<GpuContext>, collective: C, channels: usize, options: Options) -> Result<Self> {
        // The synchronized backward reduces dy with kernels of its own, which no epilogue reaches.
        if options.epilogue != crate::Epilogue::default() {
            let reason = "SyncBatchNorm runs plain batch norm: fuse no activation or residual".to_string();
            return Err(Error::OptionsMismatch { what: "epilogue", reason });
        }
        let state = LayerState::new(&ctx, channels, &options)?;
        let floats = channels * SYNC_LOCAL_FLOATS.max(SYNC_STATS_FLOATS) as usize;
        Ok(Self {
            local: ctx.storage("local statistics", floats)?,
            merged: ctx.storage("merged statistics", floats)?,
            ctx,
            collective,
            options,
            training: true,
            state,
            num_batches_tracked: 0,
            programs: Mutex::new(None),
            last: None,
            host_x: None,
        })
    }

    /// Training mode: statistics over every rank's batch, running statistics updated.
    pub fn train(&mut self) {
        self.training = true;
    }

    /// Eval mode: running statistics, rank by rank.
    pub fn eval(&mut self) {
        self.training = false;
    }

    /// The collective the layer synchronizes over.
    pub fn collective(&self) -> &C {
        &self.collective
    }

    /// The saved statistics (the merged batch `mean` and `rstd` per channel)
    /// of the last training forward, read back: bitwise the same on every
    /// rank; `None` before any forward and after one in eval mode.
    pub async fn saved_stats(&self) -> Result<Option<NormStats<Vec<f32>>>> {
        let synced = matches!(self.last, Some(Last::Sync { .. }) | Some(Last::Local { batch: true, .. }));
        match synced {
            true => Ok(Some(self.state.saved_stats(&self.ctx).await?)),
            false => Ok(None),
        }
    }

    /// Blocking [`SyncBatchNorm::saved_stats`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn saved_stats_blocking(&self) -> Result<Option<NormStats<Vec<f32>>>> {
        pollster::block_on(self.saved_stats())
    }

    /// The shape of `x` checked against the layer, or `None` for a rank without samples.
    fn shape_of(&self, dims: &[usize], layout: Layout) -> Result<Option<Shape>> {
        let channel_axis = match layout {
            Layout::ChannelsFirst => 1,
            Layout::ChannelsLast => dims.len().saturating_sub(1),
        };
        let empty = dims.first() == Some(&0) && dims.get(channel_axis) == Some(&self.state.channels) && dims.iter().skip(1).all(|&d| d > 0);
        if empty {
            return Ok(None);
        }
        let shape = Shape::new(dims, layout)?;
        if shape.channels() != self.state.channels {
            return Err(Error::ShapeMismatch {
                what: "x's channel axis",
                expected: format!("{} channels", self.state.channels),
                got: format!("{} channels (shape {dims:?}, {layout:?})", shape.channels()),
            });
        }
        Ok(Some(shape))
    }

    /// The four programs for `shape`, planned unless they are for it already.
    fn programs_for(&self, shape: &Shape) -> Result<Arc<Programs>> {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        match &*programs {
            Some(p) if p.shape == *shape => Ok(p.clone()),
            _ => {
                let p = Arc::new(Programs::new(&self.ctx, shape, &self.options)?);
                *programs = Some(p.clone());
                Ok(p)
            }
        }
    }

    /// Records `program` over `slices` and waits for it.
    async fn run(&self, program: &Prepared, slices: &[Option<wgpu::BufferSlice<'_>>], factor: Option<f32>) -> Result<()> {
        self.ctx.run(|e| program.record(e, slices, None, factor)).await
    }

    /// `out` of a synchronized step; where it failed, the other ranks are told
    /// ([`Collective::abort`]), since they may wait for this one in a
    /// collective it will not reach, and the ranks' steps no longer pair up.
    /// But too few values per channel over all ranks, which every rank finds
    /// from the same gathered counts after the collective.
    fn tell_ranks<T>(&self, out: Result<T>) -> Result<T> {
        if let Err(e) = &out {
            if !matches!(e, Error::TooFewValuesPerChannel { .. }) {
                self.collective.abort(&e.to_string());
            }
        }
        out
    }

    /// The synchronized training forward over this rank's slices (`None`: no
    /// samples on this rank), with its waits for the GPU and the collective.
    /// Its backward is [`SyncBatchNorm::backward_slices`]; after it the layer
    /// has no host input to differentiate ([`SyncBatchNorm::backward`] is
    /// [`Error::InvalidState`] until the next forward on host arrays).
    pub async fn forward_slices(&mut self, input: Option<(&Shape, wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>)>) -> Result<()> {
        self.host_x = None;
        self.last = None;
        let out = self.forward_synced(input).await;
        self.tell_ranks(out)
    }

    async fn forward_synced(&mut self, input: Option<(&Shape, wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>)>) -> Result<()> {
        let ctx = self.ctx.clone();
        // Held for the GPU's phases, not across the collective: on GL the
        // contexts on one adapter share it, and another rank's may need it to get there.
        let serial = ctx.serialize().await;
        let c = self.state.channels;
        let mut slices: Vec<Option<wgpu::BufferSlice<'_>>> = vec![None; SLOTS.len()];
        // This rank's (count, mean, M2) per channel; zeros without samples.
        let mut moments = vec![0.0; 3 * c];
        let mut shifts = vec![0.0f32; c];
        if let Some((shape, x, _)) = input {
            slices[X] = Some(x);
            slices[LOCAL] = Some(self.local.slice(..));
            self.run(&self.programs_for(shape)?.stats, &slices, None).await?;
            let local = self.ctx.download_serialized(&[(&self.local, SYNC_LOCAL_FLOATS as usize * c)]).await?.concat();
            for (ch, l) in local.chunks_exact(SYNC_LOCAL_FLOATS as usize).enumerate() {
                let (count, shift, offset, m2, summed) = (l[0], l[1], l[2], l[3], l[4]);
                // The better conditioned of the two means, as finalize_train.wgsl picks.
                let mean = if offset.abs() >= summed.abs() && summed.is_finite() {
                    f64::from(summed)
                } else {
                    f64::from(shift) + f64::from(offset)
                };
                moments[3 * ch..3 * ch + 3].copy_from_slice(&[f64::from(count), mean, f64::from(m2)]);
                shifts[ch] = shift;
            }
        }
        drop(serial);
        let merged = merge_ranks(&self.collective.all_gather(&moments)?, c);
        let _serial = ctx.serialize().await;
        let count = merged.first().map_or(0.0, |m| m.count);
        let dims = input.map_or_else(|| vec![0, c], |(s, _, _)| s.dims().to_vec());
        if count <= 1.0 {
            return Err(Error::TooFewValuesPerChannel { count: count as usize, dims });
        }
        let unbias = self.options.running_variance.factor(count as usize) as f32;
        let mut upload = Vec::with_capacity(SYNC_STATS_FLOATS as usize * c);
        let mut delta = Vec::with_capacity(c);
        for (m, shift) in merged.iter().zip(&shifts) {
            let mean = m.mean as f32;
            upload.extend([mean, *shift, (m.mean - f64::from(*shift)) as f32, (m.m2 / m.count) as f32, unbias]);
            delta.push(m.mean - f64::from(mean));
        }
        self.ctx.write(&self.merged, &upload)?;
        // A rank without samples still updates its statistics, over a one-row stand-in.
        let stand_in = Shape::new(&[1, c], Layout::ChannelsFirst)?;
        let scratch = self.stand_in(input.is_none())?;
        let (shape, x, y) = match (input, &scratch) {
            (Some(input), _) => input,
            (None, Some((x, y))) => (&stand_in, x.slice(..), y.slice(..)),
            (None, None) => return Err(Error::InvalidState("no input and no stand-in".into())),
        };
        slices[X] = Some(x);
        slices[Y] = Some(y);
        slices[LOCAL] = None;
        slices[SAVE_MEAN] = Some(self.state.saved.0.slice(..));
        slices[SAVE_INVSTD] = Some(self.state.saved.1.slice(..));
        slices[MERGED] = Some(self.merged.slice(..));
        if let Some(a) = &self.state.affine {
            slices[GAMMA] = Some(all(&a.gamma));
            slices[BETA] = Some(all(&a.beta));
        }
        let factor = self.state.running.as_ref().and_then(|_| self.options.momentum.per_record(self.num_batches_tracked));
        if let Some((mean, var)) = &self.state.running {
            slices[RUNNING_MEAN] = Some(all(mean));
            slices[RUNNING_VAR] = Some(all(var));
        }
        self.run(&self.programs_for(shape)?.apply, &slices, factor).await?;
        if self.state.running.is_some() {
            self.num_batches_tracked = self.num_batches_tracked.saturating_add(1);
        }
        self.last = Some(Last::Sync { shape: input.map(|(s, _, _)| s.clone()), count, delta });
        Ok(())
    }

    /// The synchronized backward of the last [`SyncBatchNorm::forward_slices`]
    /// in training mode, over this rank's `dy`, `x` and `dx` (`None`: no
    /// samples on this rank); `dgamma` and `dbeta`, the same on every rank,
    /// land in [`SyncBatchNorm::param_grad_buffers`].
    pub async fn backward_slices(
        &self,
        input: Option<(wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>)>,
    ) -> Result<()> {
        let out = self.backward_synced(input).await;
        self.tell_ranks(out)
    }

    /// Tensors of `c` values for a rank without samples, where `needed`.
    fn stand_in(&self, needed: bool) -> Result<Option<(wgpu::Buffer, wgpu::Buffer)>> {
        let (dtype, c) = (self.options.dtype, self.state.channels);
        match needed {
            true => Ok(Some((self.ctx.tensor_storage("stand-in x", dtype, c)?, self.ctx.tensor_storage("stand-in y", dtype, c)?))),
            false => Ok(None),
        }
    }

    async fn backward_synced(&self, input: Option<(wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>)>) -> Result<()> {
        let ctx = self.ctx.clone();
        // As in the forward: not held across the collective.
        let serial = ctx.serialize().await;
        let Some(Last::Sync { shape, count, delta }) = self.last.clone() else {
            return Err(Error::InvalidState("a synchronized backward needs a synchronized training forward first".into()));
        };
        let c = self.state.channels;
        let mut slices: Vec<Option<wgpu::BufferSlice<'_>>> = vec![None; SLOTS.len()];
        slices[SAVE_MEAN] = Some(self.state.saved.0.slice(..));
        let mut sums = vec![0.0; 2 * c];
        if let (Some(shape), Some((dy, x, _))) = (&shape, input) {
            slices[X] = Some(x);
            slices[DY] = Some(dy);
            slices[LOCAL] = Some(self.local.slice(..));
            self.run(&self.programs_for(shape)?.sums, &slices, None).await?;
            let local = self.ctx.download_serialized(&[(&self.local, 2 * c)]).await?.concat();
            sums = local.iter().map(|&v| f64::from(v)).collect();
        }
        drop(serial);
        let gathered = self.collective.all_gather(&sums)?;
        let _serial = ctx.serialize().await;
        let mut total = vec![0.0f64; 2 * c];
        for rank in gathered.chunks_exact(2 * c) {
            for (t, v) in total.iter_mut().zip(rank) {
                *t += v;
            }
        }
        let mut upload = Vec::with_capacity(SYNC_SUMS_FLOATS as usize * c);
        for (ch, d) in delta.iter().enumerate() {
            let (sum_dy, sum_dyx) = (total[2 * ch], total[2 * ch + 1]);
            // At the merged mean, not at its f32 rounding save_mean.
            upload.extend([sum_dy as f32, (sum_dyx - d * sum_dy) as f32, *d as f32, count as f32]);
        }
        self.ctx.write(&self.merged, &upload)?;
        let stand_in = Shape::new(&[1, c], Layout::ChannelsFirst)?;
        let scratch = self.stand_in(input.is_none())?;
        let (shape, dy, x, dx) = match (&shape, input, &scratch) {
            (Some(shape), Some((dy, x, dx)), _) => (shape, dy, x, dx),
            (None, _, Some((x, dx))) => (&stand_in, x.slice(..), x.slice(..), dx.slice(..)),
            _ => return Err(Error::InvalidState("the backward's tensors do not match the forward's rank having samples".into())),
        };
        slices[X] = Some(x);
        slices[DY] = Some(dy);
        slices[DX] = Some(dx);
        slices[LOCAL] = None;
        slices[SAVE_INVSTD] = Some(self.state.saved.1.slice(..));
        slices[MERGED] = Some(self.merged.slice(..));
        if let Some(a) = &self.state.affine {
            slices[GAMMA] = Some(all(&a.gamma));
        }
        if let Some((dgamma, dbeta)) = &self.state.grads {
            slices[DGAMMA] = Some(all(dgamma));
            slices[DBETA] = Some(all(dbeta));
        }
        self.run(&self.programs_for(shape)?.backward, &slices, None).await
    }

    /// Normalizes this rank's `x`: in training mode with the statistics of
    /// every rank's batch (a rank without samples passes a batch dimension of
    /// 0 and gets an empty `y`), in eval mode as [`BatchNorm`](crate::BatchNorm).
    pub async fn forward<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        self.host_x = None;
        self.last = None;
        let out = self.forward_host(x, layout).await;
        match self.training {
            true => self.tell_ranks(out),
            false => out,
        }
    }

    async fn forward_host<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        check_element::<E>(self.options.dtype)?;
        let shape = self.shape_of(x.shape(), layout)?;
        let ctx = self.ctx.clone();
        let Some(shape) = shape else {
            if !self.training {
                return Err(Error::EmptyTensor { dims: x.shape().to_vec() });
            }
            self.forward_synced(None).await?;
            return Ok(ArrayD::from_elem(x.shape(), <E as bytemuck::Zeroable>::zeroed()));
        };
        // Sizes checked before the array is copied.
        ctx.plan(&shape, E::DTYPE)?;
        let xb = ctx.upload_tensor("x", &host_data(x))?;
        let y = ctx.tensor_storage("y", E::DTYPE, shape.numel())?;
        if self.training {
            self.forward_synced(Some((&shape, all(&xb), all(&y)))).await?;
        } else {
            self.forward_local(&shape, all(&xb), all(&y)).await?;
        }
        let out = ctx.download(&[(&y, E::DTYPE.tensor_words(shape.numel()))]).await?.pop().unwrap_or_default();
        self.host_x = Some(xb);
        from_words(out, shape.dims())
    }

    /// Eval mode, rank by rank: running statistics, or the batch's where they are not tracked.
    async fn forward_local(&mut self, shape: &Shape, x: wgpu::BufferSlice<'_>, y: wgpu::BufferSlice<'_>) -> Result<()> {
        let ctx = self.ctx.clone();
        let _serial = ctx.serialize().await;
        let affine = self.state.affine.as_ref().map(|a| ChannelAffine { gamma: all(&a.gamma), beta: all(&a.beta) });
        let batch = match &self.state.running {
            Some((mean, var)) => {
                let b = ForwardInferenceBuffers {
                    x,
                    y,
                    affine,
                    running_mean: all(mean),
                    running_var: all(var),
                    residual: None,
                    workspace: None,
                };
                ctx.run(|e| ctx.encode_forward_inference(e, shape, &self.options, &b)).await?;
                false
            }
            None => {
                let b = ForwardTrainBuffers {
                    x,
                    y,
                    save_mean: all(&self.state.saved.0),
                    save_invstd: all(&self.state.saved.1),
                    affine,
                    running: None,
                    residual: None,
                    workspace: None,
                };
                ctx.run(|e| ctx.encode_forward_train(e, shape, &self.options, &b)).await?;
                true
            }
        };
        self.last = Some(Last::Local { shape: shape.clone(), batch });
        Ok(())
    }

    /// Blocking [`SyncBatchNorm::forward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking<E: Element>(&mut self, x: &ArrayViewD<'_, E>, layout: Layout) -> Result<ArrayD<E>> {
        pollster::block_on(self.forward(x, layout))
    }

    /// Gradients of the last [`SyncBatchNorm::forward`] for `dy`: `dx` of this
    /// rank's samples, and `dgamma` and `dbeta` over every rank's (the same on
    /// every rank) in training mode, of this rank's in eval mode.
    pub async fn backward<E: Element>(&self, dy: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        check_element::<E>(self.options.dtype)?;
        let c = self.state.channels;
        let out = self.backward_with(dy, self.host_x.as_ref()).await;
        let synced = matches!(self.last, Some(Last::Sync { .. }));
        let (dx, grads) = if synced { self.tell_ranks(out)? } else { out? };
        let dx = match dx {
            Some(dx) => dx,
            None => ArrayD::from_elem(dy.shape(), <E as bytemuck::Zeroable>::zeroed()),
        };
        let (dgamma, dbeta) = match grads {
            Some(mut g) => (g.next(), g.next()),
            None => (None, None),
        };
        debug_assert!(dgamma.as_ref().is_none_or(|g: &Vec<f32>| g.len() == c));
        Ok(Gradients { dx, dgamma, dbeta, dresidual: None })
    }

    async fn backward_with<E: Element>(
        &self,
        dy: &ArrayViewD<'_, E>,
        x: Option<&wgpu::Buffer>,
    ) -> Result<(Option<ArrayD<E>>, Option<std::vec::IntoIter<Vec<f32>>>)> {
        let ctx = self.ctx.clone();
        let c = self.state.channels;
        let shape = match &self.last {
            Some(Last::Sync { shape, .. }) => shape.clone(),
            Some(Last::Local { shape, .. }) => Some(shape.clone()),
            None => return Err(Error::InvalidState("backward before any forward pass".into())),
        };
        let mut dx_out = None;
        match (&self.last, &shape, x) {
            (Some(Last::Sync { .. }), None, _) => self.backward_synced(None).await?,
            (Some(last), Some(shape), Some(x)) => {
                shape.check_same_dims("dy", dy.shape())?;
                let dyb = ctx.upload_tensor("dy", &host_data(dy))?;
                let dx = ctx.tensor_storage("dx", E::DTYPE, shape.numel())?;
                match last {
                    Last::Sync { .. } => self.backward_synced(Some((all(&dyb), all(x), all(&dx)))).await?,
                    Last::Local { batch, .. } => {
                        let _serial = ctx.serialize().await;
                        let stats = match (batch, &self.state.running) {
                            (true, _) => {
                                BackwardStats::Saved(NormStats { mean: Some(all(&self.state.saved.0)), rstd: all(&self.state.saved.1) })
                            }
                            (false, Some((mean, var))) => BackwardStats::Running { mean: all(mean), var: all(var) },
                            (false, None) => return Err(Error::InvalidState("the last forward pass left no statistics".into())),
                        };
                        let b = BackwardBuffers {
                            dy: all(&dyb),
                            x: all(x),
                            dx: all(&dx),
                            stats,
                            gamma: self.state.affine.as_ref().map(|a| all(&a.gamma)),
                            param_grads: self
                                .state
                                .grads
                                .as_ref()
                                .map(|(dgamma, dbeta)| ParamGradBuffers { dgamma: all(dgamma), dbeta: all(dbeta) }),
                            z: None,
                            dresidual: None,
                            workspace: None,
                        };
                        ctx.run(|e| ctx.encode_backward(e, shape, &self.options, &b)).await?;
                    }
                }
                let out = ctx.download(&[(&dx, E::DTYPE.tensor_words(shape.numel()))]).await?.pop().unwrap_or_default();
                dx_out = Some(from_words(out, shape.dims())?);
            }
            _ => return Err(Error::InvalidState("backward before a forward pass on host arrays".into())),
        }
        let grads = match &self.state.grads {
            Some((dgamma, dbeta)) => Some(ctx.download(&[(dgamma, c), (dbeta, c)]).await?.into_iter()),
            None => None,
        };
        Ok((dx_out, grads))
    }

    /// Blocking [`SyncBatchNorm::backward`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward_blocking<E: Element>(&self, dy: &ArrayViewD<'_, E>) -> Result<Gradients<E>> {
        pollster::block_on(self.backward(dy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(values: &[f64]) -> Moments {
        let count = values.len() as f64;
        let mean = values.iter().sum::<f64>() / count.max(1.0);
        Moments { count, mean, m2: values.iter().map(|v| (v - mean) * (v - mean)).sum() }
    }

    /// Ranks' moments merged in rank order equal the moments of all the values,
    /// an empty rank changes nothing, and the merge of the same gathered values
    /// is the same bit for bit.
    #[test]
    fn merging_ranks_gives_the_moments_of_the_whole_batch() {
        let ranks: [&[f64]; 4] = [&[1e4 + 1.0, 1e4 - 2.0], &[], &[1e4 + 0.5], &[1e4 + 3.0, 1e4 - 1.0, 1e4 + 2.5]];
        let gathered: Vec<f64> = ranks
            .iter()
            .flat_map(|r| {
                let m = moments(r);
                [m.count, m.mean, m.m2]
            })
            .collect();
        let merged = merge_ranks(&gathered, 1)[0];
        let whole = moments(&ranks.concat());
        assert_eq!(merged.count, whole.count);
        // f64 rounding at 1e4: a few ulps of the mean, relative 1e-12 of M2.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        assert!(close(merged.mean, whole.mean) && close(merged.m2, whole.m2), "{merged:?} {whole:?}");
        assert_eq!(merge_ranks(&gathered, 1), merge_ranks(&gathered, 1));
    }

    #[test]
    fn in_process_ranks_gather_in_rank_order() {
        let threads: Vec<_> = in_process(3)
            .into_iter()
            .map(|r| std::thread::spawn(move || (r.all_gather(&[r.rank() as f64, 10.0]), r.all_gather(&[r.rank() as f64 * 2.0]))))
            .collect();
        for t in threads {
            let (a, b) = t.join().expect("rank");
            assert_eq!(a.expect("gather"), vec![0.0, 10.0, 1.0, 10.0, 2.0, 10.0]);
            assert_eq!(b.expect("gather"), vec![0.0, 2.0, 4.0]);
        }
    }
}
