//! The parts of a context a prepared op records with: device, queue,
//! pipelines, stand-in buffers and the device's liveness.

use std::sync::Arc;

use crate::error::Result;
use crate::liveness::Liveness;
use crate::pipelines::PipelineCache;

/// Which stand-in buffer an absent binding gets. A buffer may not be bound
/// read-only and read-write in one dispatch, so read-only bindings share one
/// and each read-write binding of a dispatch has its own; the flags in the
/// geometry keep the kernels from touching them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unused {
    Read = 0,
    WriteA = 1,
    WriteB = 2,
}

/// The context's parts a prepared op needs to record on its own.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub pipelines: Arc<PipelineCache>,
    pub unused: Arc<[wgpu::Buffer; 3]>,
    /// The 256 byte values, one a 32-bit word: what a record copies its own
    /// running-statistics factor from, byte by byte ([`Geometry::set_factor`]).
    pub byte_values: wgpu::Buffer,
    pub liveness: Arc<Liveness>,
}

impl Device {
    /// [`Liveness::scoped`] on this device.
    pub fn scoped<T>(&self, make: impl FnOnce() -> T) -> Result<T> {
        self.liveness.scoped(&self.device, make)
    }
}
