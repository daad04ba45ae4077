//! Shared by the GPU tests: one context per test binary, seeded data, and
//! docs/SPEC.md's error measure.
// Each test binary compiles this module and uses only some of its helpers.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use ndarray::ArrayD;
use ndarray::ArrayViewD;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use wgpu_batchnorm::{
    Affine, BackwardStats, GpuContext, Gradients, Layout, Momentum, Norm, NormBackwardInputs, NormOutput, NormStats, Options, Result,
    RunningStats, Shape, Tuning,
};

/// The context every test in a binary shares. Fails (never skips) without an adapter.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new_blocking().unwrap_or_else(|e| panic!("the GPU tests need an adapter: {e}"));
        eprintln!("GPU tests on {}", ctx.describe());
        Arc::new(ctx)
    })
    .clone()
}

/// The shared context plus contexts with other workgroup tunings, so that the
/// chunking a GPU gets (many chunks per channel), the CPU tuning's trees
/// through workgroup memory (where the shared context uses subgroups) and the
/// degenerate one (one workgroup, long loops, short channels in passes rather
/// than one dispatch) run on every adapter.
pub fn tuned_contexts() -> Vec<Arc<GpuContext>> {
    static OTHERS: OnceLock<Vec<Arc<GpuContext>>> = OnceLock::new();
    let others = OTHERS.get_or_init(|| {
        [
            Tuning::GPU,
            Tuning { subgroups: false, ..Tuning::CPU },
            Tuning {
                reduce_groups: 1,
                stream_groups: 1,
                workgroup_size: 2,
                fuse_small_channels: false,
                one_dispatch: false,
                subgroups: false,
            },
        ]
        .into_iter()
        .map(|t| Arc::new(GpuContext::new_blocking().expect("adapter").with_tuning(t)))
        .collect()
    });
    std::iter::once(ctx()).chain(others.iter().cloned()).collect()
}

/// A device and queue on the adapter `WGPU_BACKEND` names whose
/// `max_storage_buffer_binding_size` is `max_binding`, so that small tensors
/// run in windows.
pub fn limited_device(max_binding: u64) -> (wgpu::Device, wgpu::Queue) {
    device_with_limits(|limits| wgpu::Limits { max_storage_buffer_binding_size: max_binding, ..limits })
}

/// A device and queue on the adapter `WGPU_BACKEND` names, with `limits` of the adapter's.
pub fn device_with_limits(limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits) -> (wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).expect("adapter");
    let required_limits = limits(adapter.limits());
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_limits, ..Default::default() })).expect("device")
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `x ~ N(mu_c, s_c^2)` per channel, with `mu_c` and `s_c` from `channel_stats(c)`.
pub fn channel_data(shape: &Shape, seed: u64, channel_stats: impl Fn(usize) -> (f64, f64)) -> ArrayD<f32> {
    let mut r = rng(seed);
    let normal = Normal::new(0.0, 1.0).unwrap();
    let stats: Vec<(f64, f64)> = (0..shape.channels()).map(channel_stats).collect();
    let (c_count, s) = (shape.channels(), shape.inner());
    let data: Vec<f32> = (0..shape.numel())
        .map(|i| {
            let (mu, sd) = stats[(i / s) % c_count];
            (mu + sd * normal.sample(&mut r)) as f32
        })
        .collect();
    ArrayD::from_shape_vec(shape.dims(), data).unwrap()
}

/// docs/SPEC.md's default test data: `|mu_c| <= 10 s_c`, scales spread over channels.
pub fn typical_data(shape: &Shape, seed: u64) -> ArrayD<f32> {
    channel_data(shape, seed, |c| {
        let s = 0.5 + (c % 7) as f64;
        let mu = ((c * 37 % 21) as f64 - 10.0) * s;
        (mu, s)
    })
}

pub fn vector(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut r = rng(seed);
    (0..len).map(|_| r.random_range(lo..hi)).collect()
}

/// `||got - want|| / ||want||`, or `||got - want||` when `want` is zero.
pub fn rel_err<'a>(got: impl IntoIterator<Item = &'a f32>, want: impl IntoIterator<Item = &'a f64>) -> f64 {
    rel_err_floor(got, want, 0.0)
}

/// `||got - want|| / max(||want||, floor)`.
pub fn rel_err_floor<'a>(got: impl IntoIterator<Item = &'a f32>, want: impl IntoIterator<Item = &'a f64>, floor: f64) -> f64 {
    let (mut diff, mut norm, mut n) = (0.0f64, 0.0f64, 0usize);
    for (g, w) in got.into_iter().zip(want) {
        diff += (*g as f64 - w).powi(2);
        norm += w * w;
        n += 1;
    }
    assert!(n > 0, "nothing compared");
    let denom = norm.sqrt().max(floor);
    if denom == 0.0 {
        diff.sqrt()
    } else {
        diff.sqrt() / denom
    }
}

pub fn assert_rel(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.0e}");
}

/// Channels-first shapes and their channels-last twins used across the op tests:
/// per-channel counts 2, 3, 24, 104, 255, 257, 260, in both item widths and
/// both reduction strategies.
pub fn shape_matrix(c: usize) -> Vec<Shape> {
    let first: [&[usize]; 7] = [&[2, c], &[1, c, 3], &[5, c, 51], &[1, c, 257], &[5, c, 4, 13], &[3, c, 2, 2, 2], &[257, c]];
    let last: [&[usize]; 5] = [&[1, 2, c], &[1, 3, c], &[5, 51, c], &[3, 2, 2, 2, c], &[2, 4, 13, c]];
    first
        .iter()
        .map(|d| Shape::new(d, Layout::ChannelsFirst).unwrap())
        .chain(last.iter().map(|d| Shape::new(d, Layout::ChannelsLast).unwrap()))
        .collect()
}

/// Training forward with `gamma` and `beta` and eps 1e-5, running statistics
/// updated at momentum 1, which makes `running_var` the unbiased batch variance itself.
pub fn train_momentum_one(ctx: &GpuContext, x: &ArrayD<f32>, layout: Layout, gamma: &[f32], beta: &[f32]) -> (NormOutput, RunningStats) {
    let channels = Shape::new(x.shape(), layout).unwrap().channels();
    let mut running = RunningStats::new(channels);
    let out = ctx
        .train(&x.view(), layout, Some(Affine { gamma, beta: Some(beta) }), Some(&mut running), Momentum::Exponential(1.0), 1e-5)
        .unwrap();
    (out, running)
}

/// Options whose `affine` and `track_running_stats` follow the arguments given.
pub fn options_for(affine: bool, tracked: bool, momentum: Momentum, eps: f32) -> Options {
    Options { eps, momentum, affine, track_running_stats: tracked, ..Options::default() }
}

/// Batch norm over `x` of `layout`.
pub fn batch(x: &[usize], layout: Layout) -> Norm {
    Norm::Batch(Shape::new(x, layout).unwrap())
}

/// Batch norm's saved statistics of `out` (which always has a mean).
pub fn saved(out: &NormOutput) -> (&[f32], &[f32]) {
    (out.mean.as_deref().expect("batch norm's mean"), &out.rstd)
}

/// Batch norm's high-level ops with each argument explicit: the `Options`
/// they take are built from the arguments (`options_for`).
pub trait Ops {
    fn train(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        momentum: Momentum,
        eps: f32,
    ) -> Result<NormOutput>;
    fn infer(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        eps: f32,
    ) -> Result<ArrayD<f32>>;
    /// Training-mode backward from `save_mean` and `save_invstd`.
    #[allow(clippy::too_many_arguments)]
    fn grads_train(
        &self,
        dy: &ArrayViewD<'_, f32>,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        save_mean: &[f32],
        save_invstd: &[f32],
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients>;
    /// Inference-mode backward from the running statistics.
    fn grads_inference(
        &self,
        dy: &ArrayViewD<'_, f32>,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        running: &RunningStats,
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients>;
}

impl Ops for GpuContext {
    fn train(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: Option<&mut RunningStats>,
        momentum: Momentum,
        eps: f32,
    ) -> Result<NormOutput> {
        let options = options_for(affine.is_some(), running.is_some(), momentum, eps);
        self.norm_blocking(&batch(x.shape(), layout), x, affine.map(|a| a.gamma), affine.and_then(|a| a.beta), running, &options)
    }

    fn infer(
        &self,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        affine: Option<Affine<&[f32]>>,
        running: &RunningStats,
        eps: f32,
    ) -> Result<ArrayD<f32>> {
        let options = options_for(affine.is_some(), true, Momentum::default(), eps);
        self.norm_inference_blocking(&batch(x.shape(), layout), x, affine.map(|a| a.gamma), affine.and_then(|a| a.beta), running, &options)
    }

    fn grads_train(
        &self,
        dy: &ArrayViewD<'_, f32>,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        save_mean: &[f32],
        save_invstd: &[f32],
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients> {
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let options = options_for(gamma.is_some(), false, Momentum::default(), eps);
        let stats = BackwardStats::Saved(NormStats { mean: Some(save_mean), rstd: save_invstd });
        self.norm_backward_blocking(&batch(x.shape(), layout), &inputs, stats, gamma, &options)
    }

    fn grads_inference(
        &self,
        dy: &ArrayViewD<'_, f32>,
        x: &ArrayViewD<'_, f32>,
        layout: Layout,
        running: &RunningStats,
        gamma: Option<&[f32]>,
        eps: f32,
    ) -> Result<Gradients> {
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let options = options_for(gamma.is_some(), true, Momentum::default(), eps);
        self.norm_backward_blocking(&batch(x.shape(), layout), &inputs, running.backward_stats(), gamma, &options)
    }
}

/// `dgamma` and `dbeta` of gradients computed with `affine = true`.
pub fn param_grads(g: &Gradients) -> (&[f32], &[f32]) {
    (g.dgamma.as_deref().expect("affine gradients"), g.dbeta.as_deref().expect("affine gradients"))
}

/// The reference's running statistics after one batch of `x`, from the initial ones.
pub fn reference_running(shape: &Shape, x: &ArrayD<f32>, options: &Options) -> RunningStats<f64> {
    let mut want = RunningStats::<f64>::new(shape.channels());
    let batch = wgpu_batchnorm::reference::batch_stats(shape, &x.view()).unwrap();
    wgpu_batchnorm::reference::update_running(&mut want, &batch, shape.per_channel(), options);
    want
}
