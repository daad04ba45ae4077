//! Compute pipelines, compiled once per (kernel, variant) and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::shaders::{compose, Kernel, Variant};

/// Lazily built pipelines, shared by every thread using a context.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    pipelines: Mutex<HashMap<(Kernel, Variant), Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    /// The pipeline for `kernel` as `variant`, compiling it on first use.
    ///
    /// The lock is held while compiling so that two threads never build the same pipeline.
    pub fn get(&self, device: &wgpu::Device, kernel: Kernel, variant: Variant) -> Arc<wgpu::ComputePipeline> {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        pipelines
            .entry((kernel, variant))
            .or_insert_with(|| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(compose(kernel, variant).source.into()),
                });
                Arc::new(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name()),
                    layout: None,
                    module: &module,
                    entry_point: Some(kernel.name()),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                }))
            })
            .clone()
    }
}
