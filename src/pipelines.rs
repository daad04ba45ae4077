//! Compute pipelines, compiled once per (kernel, variant) and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::plan::Variant;
use crate::shaders::ShaderFamily;

/// One entry point of one kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    StatsInner,
    StatsRows,
    FinalizeTrain,
    PrepareInference,
    Apply,
    ForwardFused,
    ReduceInner,
    ReduceRows,
    BackwardPrepare,
    BackwardFinalize,
    BackwardDx,
    Copy,
    ReadOnly,
}

impl Kernel {
    fn family(self) -> ShaderFamily {
        match self {
            Kernel::StatsInner | Kernel::StatsRows => ShaderFamily::Stats,
            Kernel::FinalizeTrain | Kernel::PrepareInference => ShaderFamily::Finalize,
            Kernel::Apply => ShaderFamily::Apply,
            Kernel::ForwardFused => ShaderFamily::ForwardFused,
            Kernel::ReduceInner | Kernel::ReduceRows => ShaderFamily::BackwardReduce,
            Kernel::BackwardPrepare | Kernel::BackwardFinalize => ShaderFamily::BackwardFinalize,
            Kernel::BackwardDx => ShaderFamily::BackwardDx,
            Kernel::Copy | Kernel::ReadOnly => ShaderFamily::Copy,
        }
    }

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::StatsInner => "stats_inner",
            Kernel::StatsRows => "stats_rows",
            Kernel::FinalizeTrain => "finalize_train",
            Kernel::PrepareInference => "prepare_inference",
            Kernel::Apply => "apply",
            Kernel::ForwardFused => "forward_fused",
            Kernel::ReduceInner => "reduce_inner",
            Kernel::ReduceRows => "reduce_rows",
            Kernel::BackwardPrepare => "backward_prepare",
            Kernel::BackwardFinalize => "backward_finalize",
            Kernel::BackwardDx => "backward_dx",
            Kernel::Copy => "copy",
            Kernel::ReadOnly => "read_only",
        }
    }
}

/// Lazily built modules and pipelines, shared by every thread using a context.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(ShaderFamily, Variant), Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<(Kernel, Variant), Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    /// The pipeline for `kernel` as `variant`, compiling it on first use.
    ///
    /// The lock is held while compiling so that two threads never build the same pipeline.
    pub fn get(&self, device: &wgpu::Device, kernel: Kernel, variant: Variant) -> Arc<wgpu::ComputePipeline> {
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pipelines.get(&(kernel, variant)) {
            return p.clone();
        }
        let module = self.module(device, kernel.family(), variant);
        let pipeline = Arc::new(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry_point()),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry_point()),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        }));
        pipelines.insert((kernel, variant), pipeline.clone());
        pipeline
    }

    fn module(&self, device: &wgpu::Device, family: ShaderFamily, variant: Variant) -> Arc<wgpu::ShaderModule> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        modules
            .entry((family, variant))
            .or_insert_with(|| {
                Arc::new(device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(family.file_name()),
                    source: wgpu::ShaderSource::Wgsl(family.source(variant.width, variant.workgroup_size, variant.subgroups).into()),
                }))
            })
            .clone()
    }
}
