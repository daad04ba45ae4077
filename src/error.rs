//! The crate's error type.

use crate::layout::Layout;

/// Everything that can go wrong in a batch-norm call.
///
/// Every message says what was wrong and what was expected, so a caller can
/// print it as it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tensor's rank does not fit the layout.
    #[error("a {layout:?} tensor is {expected}, got rank {rank} with shape {dims:?}")]
    BadRank {
        /// The layout that was asked for.
        layout: Layout,
        /// The rank that was given.
        rank: usize,
        /// The dims that were given.
        dims: Vec<usize>,
        /// The shapes the layout accepts, in words.
        expected: &'static str,
    },
    /// Two things that must agree in shape or length do not.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument is off.
        what: &'static str,
        /// What was expected, in words.
        expected: String,
        /// What was given, in words.
        got: String,
    },
    /// The tensor has no elements, or a dimension is 0.
    #[error("the tensor is empty (shape {dims:?}): every dimension must be at least 1")]
    EmptyTensor {
        /// The dims that were given.
        dims: Vec<usize>,
    },
    /// Training needs more than one value per channel to estimate a variance.
    #[error("expected more than 1 value per channel when training, got {count} (shape {dims:?})")]
    TooFewValuesPerChannel {
        /// Values per channel (`N * S`), or per instance (`S`) for instance norm.
        count: usize,
        /// The dims that were given.
        dims: Vec<usize>,
    },
    /// Group norm's `num_groups` must divide the channels (and be at least 1).
    #[error("num_groups must divide the number of channels: {channels} channels, {groups} groups")]
    InvalidGroups {
        /// `C`.
        channels: usize,
        /// The `num_groups` given.
        groups: usize,
    },
    /// `eps` must be finite and non-negative.
    #[error("eps must be finite and >= 0, got {0}")]
    InvalidEps(f32),
    /// `momentum` must lie in `[0, 1]`.
    #[error("momentum must be in [0, 1], got {0}")]
    InvalidMomentum(f32),
    /// A LeakyReLU slope must be finite and non-negative (the backward reads its mask from `z`).
    #[error("a LeakyReLU slope must be finite and >= 0, got {0}")]
    InvalidSlope(f32),
    /// A [`Tuning`](crate::Tuning) the kernels cannot run with.
    #[error("invalid tuning: {0}")]
    InvalidTuning(String),
    /// The tensor's element or byte count does not fit the host's `usize`.
    #[error("tensor too large: shape {dims:?} has more elements, or bytes, than a usize counts")]
    TooManyElements {
        /// The dims that were given.
        dims: Vec<usize>,
    },
    /// The tensor is larger than the device (or 32-bit indexing) allows.
    #[error("tensor too large: {what} needs {requested} but the limit is {limit}")]
    TooLarge {
        /// Which limit was hit (a device limit's name, or the index range).
        what: &'static str,
        /// The size that was asked for.
        requested: u64,
        /// The limit in force.
        limit: u64,
    },
    /// An argument disagrees with the call's [`Options`](crate::Options): `gamma`
    /// and `beta` given or absent against `affine`, running statistics against
    /// `track_running_stats`.
    #[error("{what} disagrees with the options: {reason}")]
    OptionsMismatch {
        /// Which argument.
        what: &'static str,
        /// What the options asked for and what was given.
        reason: String,
    },
    /// A layer call out of order (backward before any forward), or for a
    /// parameter the layer does not have.
    #[error("invalid layer state: {0}")]
    InvalidState(String),
    /// A caller-owned buffer is too small or lacks a usage flag.
    #[error("buffer `{name}` is unusable: {reason}")]
    BadBuffer {
        /// The argument's name.
        name: &'static str,
        /// What is wrong with it and what was expected.
        reason: String,
    },
    /// A device feature the call needs is missing.
    #[error("the device lacks feature {0:?}, which this call needs")]
    MissingFeature(wgpu::Features),
    /// No adapter matched the request.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device: {0}")]
    RequestDevice(String),
    /// The device was lost (destroyed, reset or removed); create a new context.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// A collective across ranks failed (synchronized batch norm).
    #[error("the collective across ranks failed: {0}")]
    Collective(String),
    /// Reading results back from the GPU failed.
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),
    /// wgpu reported a validation or out-of-memory error for work this crate
    /// recorded, or rejected one of its pipelines (a prepared op's `record`
    /// returns it each time it is called).
    #[error("wgpu rejected the work: {0}")]
    Wgpu(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
