//! Compute pipelines, compiled once per (kernel, variant) and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::liveness::Liveness;
use crate::shaders::{compose, Kernel, Variant};

/// Lazily built pipelines, shared by every thread using a context.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<(Kernel, Variant), Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    /// The pipeline for `kernel` as `variant`, compiling it on first use.
    ///
    /// A pipeline the device rejects (its shader compiler, or a limit such as
    /// its workgroup memory) is [`Error::Wgpu`], and is tried again on the next
    /// call: dispatching it would leave the outputs unwritten, with only a
    /// logged wgpu error to tell. The lock is held while compiling so that two
    /// threads never build the same pipeline.
    pub fn get(&self, device: &wgpu::Device, liveness: &Liveness, kernel: Kernel, variant: Variant) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipeline) = pipelines.get(&(kernel, variant)) {
            return Ok(pipeline.clone());
        }
        let made = liveness.scoped(device, || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name()),
                source: wgpu::ShaderSource::Wgsl(compose(kernel, variant).source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.name()),
                layout: None,
                module: &module,
                entry_point: Some(kernel.name()),
                // The kernels read workgroup memory only after writing it (each
                // lane its own slot of a tree before the barrier; a row's values
                // by the lane that owns the row), except where the value read is
                // then not used (forward_fused.wgsl's lanes past the last
                // channel), so zeroing it first buys nothing. On GL, naga writes
                // that zeroing out element by element: layer norm's forward and
                // backward with 256-invocation workgroups took 14 and 84 s to
                // compile on llvmpipe with it, 0.8 and 1.4 s without, and a
                // compile that long held wgpu's GL context past the 6 s other
                // threads wait for it.
                compilation_options: wgpu::PipelineCompilationOptions { zero_initialize_workgroup_memory: false, ..Default::default() },
                cache: None,
            })
        });
        let pipeline = match made {
            Ok(pipeline) => Arc::new(pipeline),
            Err(Error::Wgpu(e)) => return Err(Error::Wgpu(format!("the `{}` pipeline: {e}", kernel.name()))),
            Err(e) => return Err(e),
        };
        pipelines.insert((kernel, variant), pipeline.clone());
        Ok(pipeline)
    }
}
