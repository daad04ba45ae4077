//! Batch-norm forward + backward inside Burn, the way a model runs it
//! (autodiff device, module forward, `backward()`, gradients read), with
//! `burn::nn::BatchNorm` and with this crate's `BatchNorm`: same adapter,
//! same process, one wall clock, medians.
//!
//! ```sh
//! cargo run --release -p wgpu-batchnorm-burn --example bench [-- --iters N] [-- --json FILE]
//! ```

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

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

fn run<const D: usize>(device: &Device, dims: &[usize], iters: usize) -> (f64, f64) {
    let c = dims[1];
    let theirs = burn::nn::BatchNormConfig::new(c).init(device);
    let ours = wgpu_batchnorm_burn::BatchNormConfig::new(c).init(device);
    let burn_times = time::<D, _>(device, dims, iters, &theirs, |m, x| m.forward(x));
    let ours_times = time::<D, _>(device, dims, iters, &ours, |m, x| m.forward(x));
    (median(&burn_times), median(&ours_times))
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
    println!("{:<16} {:>12} {:>12} {:>9}", "shape", "burn::nn", "wgpu-bn", "speed-up");
    let mut rows = Vec::new();
    for dims in SHAPES {
        let (burn_s, ours_s) = match dims.len() {
            4 => run::<4>(&device, dims, iters),
            _ => run::<2>(&device, dims, iters),
        };
        let name = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        println!("{name:<16} {:>12.2} {:>12.2} {:>8.2}x", burn_s * 1e3, ours_s * 1e3, burn_s / ours_s);
        rows.push(format!(
            "    {{\"shape\": {dims:?}, \"burn_ms\": {:.4}, \"wgpu_batchnorm_ms\": {:.4}, \"speedup\": {:.3}}}",
            burn_s * 1e3,
            ours_s * 1e3,
            burn_s / ours_s
        ));
    }
    if let Some(path) = arg("--json") {
        let json =
            format!("{{\n  \"adapter\": {:?},\n  \"iters\": {iters},\n  \"rows\": [\n{}\n  ]\n}}\n", ctx.describe(), rows.join(",\n"));
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
}
