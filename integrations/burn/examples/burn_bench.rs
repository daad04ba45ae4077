//! Batch-norm forward + backward inside Burn, the way a model runs it
//! (autodiff device, module forward, `backward()`, gradients read), with
//! `burn::nn::BatchNorm` and with this crate's `BatchNorm`: same adapter,
//! same process, one wall clock, medians. A third column times the kernels
//! alone on the same device (prepared training forward and backward over
//! buffers of their own, recorded and submitted per step, waited for): what
//! the Burn module adds on top of them is the difference.
//!
//! ```sh
//! cargo run --release -p wgpu-batchnorm-burn --example burn_bench [-- --iters N] [-- --json FILE]
//! ```

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use wgpu_batchnorm::{
    GpuContext, Layout, Norm, NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers, NormStats, Options, RunningBuffers, Shape,
};

/// The shapes of the issue: a ResNet stem activation, a late ResNet one and a linear layer's output.
const SHAPES: [&[usize]; 3] = [&[32, 64, 56, 56], &[8, 512, 7, 7], &[256, 1024]];

/// Seconds of `iters` timed steps (after two warm-ups) of forward, backward
/// (from Burn's own all-ones output gradient) and a wait for the gradients.
fn time<const D: usize, M: Module>(
    device: &Device,
    dims: &[usize],
    iters: usize,
    module: &M,
    forward: impl Fn(&M, Tensor<D>) -> Tensor<D>,
) -> Vec<f64> {
    let shape: [usize; D] = dims.try_into().expect("rank");
    let x = Tensor::<D>::random(shape, Distribution::Normal(1.0, 2.0), device).require_grad();
    device.sync().expect("device");
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let start = Instant::now();
        let y = forward(module, x.clone());
        let grads = y.backward();
        let dx = x.grad(&grads).expect("dx");
        drop(grads);
        device.sync().expect("device");
        drop(dx);
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds of `iters` timed steps (after two warm-ups) of the kernels alone:
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
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let start = Instant::now();
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
            },
        )?;
        ctx.queue().submit([encoder.finish()]);
        ctx.device().poll(wgpu::PollType::wait_indefinitely()).map_err(|e| wgpu_batchnorm::Error::DeviceLost(e.to_string()))?;
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Medians of Burn's module, this crate's module and the kernels alone.
fn run<const D: usize>(device: &Device, ctx: &GpuContext, dims: &[usize], iters: usize) -> (f64, f64, f64) {
    let c = dims[1];
    let theirs = burn::nn::BatchNormConfig::new(c).init(device);
    let ours = wgpu_batchnorm_burn::BatchNormConfig::new(c).init(device);
    let burn_times = time::<D, _>(device, dims, iters, &theirs, |m, x| m.forward(x));
    let ours_times = time::<D, _>(device, dims, iters, &ours, |m, x| m.forward(x));
    let kernel_times = time_kernels(ctx, dims, iters).unwrap_or_else(|e| panic!("the kernels alone on {dims:?}: {e}"));
    (median(&burn_times), median(&ours_times), median(&kernel_times))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let iters: usize = arg("--iters").map_or(7, |s| s.parse().expect("--iters N"));
    let (device, ctx) = wgpu_batchnorm_burn::shared_device().unwrap_or_else(|e| {
        eprintln!("no device: {e}");
        std::process::exit(2)
    });
    let device = device.autodiff();
    println!("adapter: {}", ctx.describe());
    println!("forward + backward through Burn's autodiff, median of {iters} (wall clock, ms)");
    println!("{:<16} {:>12} {:>12} {:>9} {:>13}", "shape", "burn::nn", "wgpu-bn", "speed-up", "kernels alone");
    let mut rows = Vec::new();
    for dims in SHAPES {
        let (burn_s, ours_s, kernels_s) = match dims.len() {
            4 => run::<4>(&device, &ctx, dims, iters),
            _ => run::<2>(&device, &ctx, dims, iters),
        };
        let name = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        println!("{name:<16} {:>12.2} {:>12.2} {:>8.2}x {:>13.2}", burn_s * 1e3, ours_s * 1e3, burn_s / ours_s, kernels_s * 1e3);
        rows.push(format!(
            "    {{\"shape\": {dims:?}, \"burn_ms\": {:.4}, \"wgpu_batchnorm_ms\": {:.4}, \"speedup\": {:.3}, \"kernels_alone_ms\": {:.4}}}",
            burn_s * 1e3,
            ours_s * 1e3,
            burn_s / ours_s,
            kernels_s * 1e3
        ));
    }
    if let Some(path) = arg("--json") {
        let json =
            format!("{{\n  \"adapter\": {:?},\n  \"iters\": {iters},\n  \"rows\": [\n{}\n  ]\n}}\n", ctx.describe(), rows.join(",\n"));
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
}
