//! Every normalization module inside Burn, the way a model runs it (autodiff
//! device, module forward, `backward()`, gradients read), `burn::nn`'s and
//! this crate's: same adapter, same process, one wall clock, medians (over at
//! least `--iters` steps, 7 by default, and at least half a second of them); the
//! forward alone and forward + backward. For batch norm a further column
//! times the kernels alone on the same device (prepared training forward and
//! backward over buffers of their own, recorded and submitted per step,
//! waited for): what the Burn module adds on top of them is the difference.
//! A last batch-norm row times a ResNet block's tail, `relu(bn(x) + residual)`:
//! Burn's module, add and ReLU against `forward_add_relu`.
//!
//! ```sh
//! cargo run --release -p wgpu-batchnorm-burn --example burn_bench [-- --iters N] [-- --json FILE]
//! ```

mod common;
use common::{arg, autodiff_device, median};

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use wgpu_batchnorm::{
    GpuContext, Layout, Norm, NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers, NormStats, Options, RunningBuffers, Shape,
};

/// The shapes of the issue: a ResNet stem activation, a late ResNet one and a linear layer's output.
const SHAPES: [&[usize]; 3] = [&[32, 64, 56, 56], &[8, 512, 7, 7], &[256, 1024]];

/// The least wall clock a median is taken over: a step of a few milliseconds
/// timed only `--iters` times would be the median of a few tens of
/// milliseconds of a machine whose other work comes in bursts longer than that.
const MIN_TIMED_SECONDS: f64 = 0.5;

/// Seconds of each timed run of `step`, after two untimed warm-ups: at least
/// `iters` runs, and at least [`MIN_TIMED_SECONDS`] of them.
fn timed<E>(iters: usize, mut step: impl FnMut() -> Result<(), E>) -> Result<Vec<f64>, E> {
    step()?;
    step()?;
    let mut times = Vec::new();
    while times.len() < iters || times.iter().sum::<f64>() < MIN_TIMED_SECONDS {
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Seconds of the timed steps ([`timed`]) of forward and, where `backward`,
/// backward (from Burn's own all-ones output gradient), and a wait for the
/// output or the gradients.
fn time<const D: usize, M: Module>(
    device: &Device,
    dims: &[usize],
    iters: usize,
    backward: bool,
    module: &M,
    forward: impl Fn(&M, Tensor<D>) -> Tensor<D>,
) -> Vec<f64> {
    let shape: [usize; D] = dims.try_into().expect("rank");
    let x = Tensor::<D>::random(shape, Distribution::Normal(1.0, 2.0), device).require_grad();
    device.sync().expect("device");
    let Ok(times) = timed(iters, || {
        let y = forward(module, x.clone());
        if backward {
            let grads = y.backward();
            let dx = x.grad(&grads).expect("dx");
            drop(grads);
            device.sync().expect("device");
            drop(dx);
        } else {
            device.sync().expect("device");
            drop(y);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    times
}

/// Seconds of the timed steps ([`timed`]) of the kernels alone:
/// training forward and backward, prepared once, recorded into one encoder,
/// submitted and waited for.
fn time_kernels(ctx: &GpuContext, dims: &[usize], iters: usize) -> Result<Vec<f64>, wgpu_batchnorm::Error> {
    let shape = Shape::new(dims, Layout::ChannelsFirst)?;
    let options = Options::default();
    let (n, c) = (shape.numel(), shape.channels());
    let x = ctx.upload("x", &(0..n).map(|i| (i % 97) as f32 * 0.03 - 1.0).collect::<Vec<_>>())?;
    let dy = ctx.upload("dy", &(0..n).map(|i| (i % 89) as f32 * 0.02 - 0.9).collect::<Vec<_>>())?;
    let (y, dx) = (ctx.storage("y", n)?, ctx.storage("dx", n)?);
    let ones = vec![1.0; c];
    // gamma and the running variance start at 1; new storage buffers are zeroed.
    let (gamma, var) = (ctx.upload("gamma", &ones)?, ctx.upload("running_var", &ones)?);
    let [beta, mean, save_mean, save_invstd, dgamma, dbeta] = [(); 6].map(|_| ctx.storage("per channel", c));
    let [beta, mean, save_mean, save_invstd, dgamma, dbeta] = [beta?, mean?, save_mean?, save_invstd?, dgamma?, dbeta?];
    let op = Norm::Batch(shape);
    let forward = ctx.prepare_norm(&op, &options)?;
    let backward = ctx.prepare_norm_backward(&op, &options, true)?;
    timed(iters, || {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        forward.record(
            &mut encoder,
            &NormForwardBuffers {
                x: x.slice(..),
                y: y.slice(..),
                stats: NormStats { mean: Some(save_mean.slice(..)), rstd: save_invstd.slice(..) },
                gamma: Some(gamma.slice(..)),
                beta: Some(beta.slice(..)),
                running: Some(RunningBuffers { mean: mean.slice(..), var: var.slice(..), num_batches_tracked: 0 }),
                residual: None,
                workspace: None,
            },
        )?;
        backward.record(
            &mut encoder,
            &NormBackwardBuffers {
                dy: dy.slice(..),
                x: x.slice(..),
                dx: dx.slice(..),
                stats: NormStats { mean: Some(save_mean.slice(..)), rstd: save_invstd.slice(..) }.into(),
                gamma: Some(gamma.slice(..)),
                param_grads: Some(NormParamGradBuffers { dgamma: dgamma.slice(..), dbeta: Some(dbeta.slice(..)) }),
                z: None,
                dresidual: None,
                workspace: None,
            },
        )?;
        ctx.queue().submit([encoder.finish()]);
        ctx.device().poll(wgpu::PollType::wait_indefinitely()).map_err(|e| wgpu_batchnorm::Error::DeviceLost(e.to_string()))?;
        Ok(())
    })
}

/// One row: a module of Burn's and this crate's on one shape, the medians
/// of the forward and of forward + backward, and the kernels alone where timed.
struct Row {
    module: &'static str,
    dims: Vec<usize>,
    /// (Burn, this crate) forward, then forward + backward, seconds.
    forward: (f64, f64),
    step: (f64, f64),
    kernels: Option<f64>,
}

/// Times `theirs` and `ours` on `dims`.
fn row<const D: usize, A: Module, B: Module>(
    module: &'static str,
    device: &Device,
    dims: &[usize],
    iters: usize,
    (theirs, their_forward): (A, impl Fn(&A, Tensor<D>) -> Tensor<D>),
    (ours, our_forward): (B, impl Fn(&B, Tensor<D>) -> Tensor<D>),
) -> Row {
    let pair = |backward| {
        let a = median(&time::<D, _>(device, dims, iters, backward, &theirs, &their_forward));
        let b = median(&time::<D, _>(device, dims, iters, backward, &ours, &our_forward));
        (a, b)
    };
    Row { module, dims: dims.to_vec(), forward: pair(false), step: pair(true), kernels: None }
}

fn batch_norm<const D: usize>(device: &Device, ctx: &GpuContext, dims: &[usize], iters: usize) -> Row {
    let c = dims[1];
    let theirs = burn::nn::BatchNormConfig::new(c).init(device);
    let ours = wgpu_batchnorm_burn::BatchNormConfig::new(c).init(device);
    let mut row = row::<D, _, _>("BatchNorm", device, dims, iters, (theirs, |m, x| m.forward(x)), (ours, |m, x| m.forward(x)));
    let kernels = time_kernels(ctx, dims, iters).unwrap_or_else(|e| panic!("the kernels alone on {dims:?}: {e}"));
    row.kernels = Some(median(&kernels));
    row
}

/// A ResNet block's tail, `relu(bn(x) + residual)`: Burn's module, add and
/// ReLU against this crate's one op (the input doubles as the residual).
fn residual_tail(device: &Device, dims: &[usize], iters: usize) -> Row {
    let c = dims[1];
    let theirs = burn::nn::BatchNormConfig::new(c).init(device);
    let ours = wgpu_batchnorm_burn::BatchNormConfig::new(c).init(device);
    row::<4, _, _>(
        "BN+add+ReLU",
        device,
        dims,
        iters,
        (theirs, |m, x| burn::tensor::activation::relu(m.forward(x.clone()) + x)),
        (ours, |m, x| m.forward_add_relu(x.clone(), x)),
    )
}

fn family(device: &Device, iters: usize) -> Vec<Row> {
    use wgpu_batchnorm_burn as wb;
    let mut rows = Vec::new();
    for dims in [[4096, 768], [2048, 4096]] {
        let (theirs, ours) = (burn::nn::LayerNormConfig::new(dims[1]).init(device), wb::LayerNormConfig::new(dims[1]).init(device));
        rows.push(row::<2, _, _>("LayerNorm", device, &dims, iters, (theirs, |m, x| m.forward(x)), (ours, |m, x| m.forward(x))));
    }
    let dims = [4096, 4096];
    let (theirs, ours) = (burn::nn::RmsNormConfig::new(dims[1]).init(device), wb::RmsNormConfig::new(dims[1]).init(device));
    rows.push(row::<2, _, _>("RmsNorm", device, &dims, iters, (theirs, |m, x| m.forward(x)), (ours, |m, x| m.forward(x))));
    let dims = [2, 320, 64, 64];
    let (theirs, ours) = (burn::nn::GroupNormConfig::new(32, 320).init(device), wb::GroupNormConfig::new(32, 320).init(device));
    rows.push(row::<4, _, _>("GroupNorm 32", device, &dims, iters, (theirs, |m, x| m.forward(x)), (ours, |m, x| m.forward(x))));
    let dims = [8, 64, 128, 128];
    let (theirs, ours) = (burn::nn::InstanceNormConfig::new(64).init(device), wb::InstanceNormConfig::new(64).init(device));
    rows.push(row::<4, _, _>("InstanceNorm", device, &dims, iters, (theirs, |m, x| m.forward(x)), (ours, |m, x| m.forward(x))));
    rows
}

fn main() {
    let iters: usize = arg("--iters").map_or(7, |s| s.parse().expect("--iters N"));
    let (device, ctx) = autodiff_device();
    println!(
        "through Burn's autodiff, median of at least {iters} steps and {MIN_TIMED_SECONDS} s (wall clock, ms): burn::nn's module / this crate's"
    );
    println!(
        "{:<13} {:<16} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8} {:>13}",
        "module", "shape", "fwd burn", "fwd ours", "speed-up", "f+b burn", "f+b ours", "speed-up", "kernels alone"
    );
    let mut rows = Vec::new();
    for dims in SHAPES {
        rows.push(match dims.len() {
            4 => batch_norm::<4>(&device, &ctx, dims, iters),
            _ => batch_norm::<2>(&device, &ctx, dims, iters),
        });
    }
    rows.push(residual_tail(&device, SHAPES[0], iters));
    rows.extend(family(&device, iters));
    let mut json = Vec::new();
    for r in &rows {
        let name = r.dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let ms = |s: f64| s * 1e3;
        let kernels = r.kernels.map_or_else(String::new, |k| format!("{:.2}", ms(k)));
        println!(
            "{:<13} {name:<16} {:>10.2} {:>10.2} {:>7.2}x {:>10.2} {:>10.2} {:>7.2}x {kernels:>13}",
            r.module,
            ms(r.forward.0),
            ms(r.forward.1),
            r.forward.0 / r.forward.1,
            ms(r.step.0),
            ms(r.step.1),
            r.step.0 / r.step.1
        );
        json.push(format!(
            "    {{\"module\": {:?}, \"shape\": {:?}, \"forward_burn_ms\": {:.4}, \"forward_ms\": {:.4}, \"forward_speedup\": {:.3}, \"step_burn_ms\": {:.4}, \"step_ms\": {:.4}, \"step_speedup\": {:.3}, \"kernels_alone_ms\": {}}}",
            r.module,
            r.dims,
            ms(r.forward.0),
            ms(r.forward.1),
            r.forward.0 / r.forward.1,
            ms(r.step.0),
            ms(r.step.1),
            r.step.0 / r.step.1,
            r.kernels.map_or_else(|| "null".to_string(), |k| format!("{:.4}", ms(k)))
        ));
    }
    if let Some(path) = arg("--json") {
        let json = format!(
            "{{\n  \"adapter\": {:?},\n  \"iters\": {iters},\n  \"min_timed_seconds\": {MIN_TIMED_SECONDS},\n  \"rows\": [\n{}\n  ]\n}}\n",
            ctx.describe(),
            json.join(",\n")
        );
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
}
