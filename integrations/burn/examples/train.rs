//! Trains one small CNN twice, with `burn::nn::BatchNorm` and with this
//! crate's `BatchNorm`, from the same initial weights on the same
//! deterministic synthetic data, and compares the losses step by step.
//!
//! ```sh
//! cargo run --release -p wgpu-batchnorm-burn --example train [-- --steps N] [-- --json FILE]
//! ```
//!
//! Exits non-zero where the first losses differ by more than 1e-5 relative
//! or the last ones by more than 1e-3.

mod common;
use common::{arg, autodiff_device, median};

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const CLASSES: usize = 4;
const SAMPLES: usize = 128;
const BATCH: usize = 32;
const SIDE: usize = 16;
const LEARNING_RATE: f64 = 0.05;
const SEED: u64 = 7;

/// The two batch-norm modules behind one interface.
trait Norm: Module + burn::module::ModuleDisplay + std::fmt::Debug {
    fn make(channels: usize, device: &Device) -> Self;
    fn norm(&self, x: Tensor<4>) -> Tensor<4>;
}

impl Norm for burn::nn::BatchNorm {
    fn make(channels: usize, device: &Device) -> Self {
        burn::nn::BatchNormConfig::new(channels).init(device)
    }

    fn norm(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward(x)
    }
}

impl Norm for wgpu_batchnorm_burn::BatchNorm {
    fn make(channels: usize, device: &Device) -> Self {
        wgpu_batchnorm_burn::BatchNormConfig::new(channels).init(device)
    }

    fn norm(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward(x)
    }
}

/// conv - BatchNorm - ReLU, three times, global average pooling and a linear head.
#[derive(Module, Debug)]
struct Cnn<N: Norm> {
    conv1: Conv2d,
    bn1: N,
    conv2: Conv2d,
    bn2: N,
    conv3: Conv2d,
    bn3: N,
    pool: AdaptiveAvgPool2d,
    head: Linear,
}

impl<N: Norm> Cnn<N> {
    /// The same weights for both variants: the device's generator is reseeded first.
    fn new(device: &Device) -> Self {
        device.seed(SEED);
        let conv =
            |i, o, stride| Conv2dConfig::new([i, o], [3, 3]).with_stride([stride, stride]).with_padding(PaddingConfig2d::Same).init(device);
        Self {
            conv1: conv(3, 16, 1),
            bn1: N::make(16, device),
            conv2: conv(16, 32, 2),
            bn2: N::make(32, device),
            conv3: conv(32, 32, 1),
            bn3: N::make(32, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(32, CLASSES).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = activation::relu(self.bn1.norm(self.conv1.forward(x)));
        let x = activation::relu(self.bn2.norm(self.conv2.forward(x)));
        let x = activation::relu(self.bn3.norm(self.conv3.forward(x)));
        let [n, c, _, _] = x.dims();
        self.head.forward(self.pool.forward(x).reshape([n, c]))
    }
}

/// Images whose class sets the brightness of one quadrant per channel, plus noise.
fn dataset() -> (Vec<f32>, Vec<i64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let noise = Normal::new(0.0, 0.5).expect("finite");
    let mut images = Vec::with_capacity(SAMPLES * 3 * SIDE * SIDE);
    let mut labels = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let label = rng.random_range(0..CLASSES);
        for c in 0..3 {
            for h in 0..SIDE {
                for w in 0..SIDE {
                    let quadrant = 2 * (h * 2 / SIDE) + w * 2 / SIDE;
                    let signal = if quadrant == (label + c) % CLASSES { 1.0 } else { 0.0 };
                    images.push(signal + noise.sample(&mut rng) as f32 + 0.25 * c as f32);
                }
            }
        }
        labels.push(label as i64);
    }
    (images, labels)
}

/// Losses and per-step wall times of `steps` SGD steps over the dataset in batches.
fn train<N: Norm>(device: &Device, steps: usize, data: &(Vec<f32>, Vec<i64>)) -> (Vec<f64>, Vec<f64>) {
    let mut model = Cnn::<N>::new(device);
    let mut optimizer = SgdConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let per_image = 3 * SIDE * SIDE;
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let first = (step * BATCH) % SAMPLES;
        let images = data.0[first * per_image..(first + BATCH) * per_image].to_vec();
        let labels = data.1[first..first + BATCH].to_vec();
        let start = Instant::now();
        let x = Tensor::<4>::from_data(TensorData::new(images, [BATCH, 3, SIDE, SIDE]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [BATCH]), device);
        let loss = loss_fn.forward(model.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(LEARNING_RATE, model, grads);
        let value = loss.into_scalar::<f32>();
        device.sync().expect("device");
        times.push(start.elapsed().as_secs_f64());
        losses.push(f64::from(value));
    }
    (losses, times)
}

fn main() {
    let steps: usize = arg("--steps").map_or(30, |s| s.parse().expect("--steps N"));
    let (device, ctx) = autodiff_device();
    let data = dataset();

    let (burn_losses, burn_times) = train::<burn::nn::BatchNorm>(&device, steps, &data);
    let (ours_losses, ours_times) = train::<wgpu_batchnorm_burn::BatchNorm>(&device, steps, &data);

    println!("{:>4}  {:>12}  {:>12}  {:>9}", "step", "burn::nn", "wgpu-bn", "rel diff");
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(f64::MIN_POSITIVE);
    for (i, (a, b)) in burn_losses.iter().zip(&ours_losses).enumerate() {
        println!("{i:>4}  {a:>12.6}  {b:>12.6}  {:>9.2e}", rel(*a, *b));
    }
    let (first, last) = (rel(burn_losses[0], ours_losses[0]), rel(burn_losses[steps - 1], ours_losses[steps - 1]));
    let (burn_step, ours_step) = (median(&burn_times[1..]), median(&ours_times[1..]));
    println!("first loss rel diff {first:.2e} (bound 1e-5), last {last:.2e} (bound 1e-3)");
    println!(
        "median step time (first step excluded): burn::nn::BatchNorm {:.2} ms, wgpu-batchnorm {:.2} ms ({:.2}x)",
        burn_step * 1e3,
        ours_step * 1e3,
        burn_step / ours_step
    );

    if let Some(path) = arg("--json") {
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(", ");
        let json = format!(
            "{{\n  \"adapter\": {:?},\n  \"steps\": {steps},\n  \"burn_losses\": [{}],\n  \"wgpu_batchnorm_losses\": [{}],\n  \"burn_step_seconds\": [{}],\n  \"wgpu_batchnorm_step_seconds\": [{}],\n  \"first_rel_diff\": {first:e},\n  \"last_rel_diff\": {last:e}\n}}\n",
            ctx.describe(),
            list(&burn_losses),
            list(&ours_losses),
            list(&burn_times),
            list(&ours_times)
        );
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
    if first > 1e-5 || last > 1e-3 {
        eprintln!("the two variants disagree");
        std::process::exit(1);
    }
}
