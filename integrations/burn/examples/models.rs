//! Trains two small models twice each, once with `burn::nn`'s normalization
//! modules and once with this crate's, from the same initial weights on the
//! same deterministic synthetic data, and compares the losses step by step:
//!
//! - a pre-norm transformer (self-attention and an MLP, each behind a norm,
//!   a final norm, a classification head), with `LayerNorm` and with `RmsNorm`;
//! - a U-Net-style block (conv - GroupNorm - SiLU down, a strided conv, a
//!   transposed conv up, the skip concatenated), denoising images.
//!
//! ```sh
//! cargo run --release -p wgpu-batchnorm-burn --example models [-- --steps N] [-- --json FILE]
//! ```
//!
//! Exits non-zero where a pair's first losses differ by more than 1e-5
//! relative or its last ones by more than 1e-3.

mod common;
use common::{arg, autodiff_device, median};

use std::time::Instant;

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::loss::{CrossEntropyLossConfig, MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const SEED: u64 = 11;
const LEARNING_RATE: f64 = 0.05;

/// A normalization module of either crate behind one interface.
trait Norm<const D: usize>: Module + burn::module::ModuleDisplay + std::fmt::Debug {
    fn make(features: usize, device: &Device) -> Self;
    fn norm(&self, x: Tensor<D>) -> Tensor<D>;
}

macro_rules! norm {
    ($ty:ty, $d:literal, |$f:ident, $device:ident| $make:expr) => {
        impl Norm<$d> for $ty {
            fn make($f: usize, $device: &Device) -> Self {
                $make
            }

            fn norm(&self, x: Tensor<$d>) -> Tensor<$d> {
                self.forward(x)
            }
        }
    };
}

norm!(burn::nn::LayerNorm, 3, |f, device| burn::nn::LayerNormConfig::new(f).init(device));
norm!(wgpu_batchnorm_burn::LayerNorm, 3, |f, device| wgpu_batchnorm_burn::LayerNormConfig::new(f).init(device));
norm!(burn::nn::RmsNorm, 3, |f, device| burn::nn::RmsNormConfig::new(f).init(device));
norm!(wgpu_batchnorm_burn::RmsNorm, 3, |f, device| wgpu_batchnorm_burn::RmsNormConfig::new(f).init(device));
norm!(burn::nn::GroupNorm, 4, |f, device| burn::nn::GroupNormConfig::new(4, f).init(device));
norm!(wgpu_batchnorm_burn::GroupNorm, 4, |f, device| wgpu_batchnorm_burn::GroupNormConfig::new(4, f).init(device));

// The transformer's sizes: batch, sequence, model width, heads, classes.
const BATCH: usize = 16;
const SEQ: usize = 24;
const WIDTH: usize = 64;
const HEADS: usize = 4;
const CLASSES: usize = 4;

/// Two pre-norm blocks, a final norm, mean pooling and a linear head.
#[derive(Module, Debug)]
struct Transformer<N: Norm<3>> {
    norm_attention: Vec<N>,
    attention: Vec<MultiHeadAttention>,
    norm_mlp: Vec<N>,
    up: Vec<Linear>,
    down: Vec<Linear>,
    norm_out: N,
    head: Linear,
}

impl<N: Norm<3>> Transformer<N> {
    /// The same weights for both variants: the device's generator is reseeded first.
    fn new(device: &Device) -> Self {
        device.seed(SEED);
        let blocks = 0..2;
        Self {
            norm_attention: blocks.clone().map(|_| N::make(WIDTH, device)).collect(),
            attention: blocks.clone().map(|_| MultiHeadAttentionConfig::new(WIDTH, HEADS).with_dropout(0.0).init(device)).collect(),
            norm_mlp: blocks.clone().map(|_| N::make(WIDTH, device)).collect(),
            up: blocks.clone().map(|_| LinearConfig::new(WIDTH, 2 * WIDTH).init(device)).collect(),
            down: blocks.map(|_| LinearConfig::new(2 * WIDTH, WIDTH).init(device)).collect(),
            norm_out: N::make(WIDTH, device),
            head: LinearConfig::new(WIDTH, CLASSES).init(device),
        }
    }

    fn forward(&self, mut x: Tensor<3>) -> Tensor<2> {
        for i in 0..self.attention.len() {
            let attended = self.attention[i].forward(MhaInput::self_attn(self.norm_attention[i].norm(x.clone()))).context;
            x = x + attended;
            let hidden = activation::gelu(self.up[i].forward(self.norm_mlp[i].norm(x.clone())));
            x = x + self.down[i].forward(hidden);
        }
        let pooled = self.norm_out.norm(x).mean_dim(1).squeeze_dim::<2>(1);
        self.head.forward(pooled)
    }
}

/// Sequences whose class sets a direction added to every token, plus noise.
fn sequences(rng: &mut rand::rngs::StdRng) -> (Vec<f32>, Vec<i64>) {
    let noise = Normal::new(0.0, 1.0).expect("finite");
    let mut x = Vec::with_capacity(BATCH * SEQ * WIDTH);
    let mut labels = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let label = rng.random_range(0..CLASSES);
        for _ in 0..SEQ {
            for f in 0..WIDTH {
                let signal = if f % CLASSES == label { 1.5 } else { 0.0 };
                x.push(signal + noise.sample(rng) as f32 + 2.0);
            }
        }
        labels.push(label as i64);
    }
    (x, labels)
}

// The U-Net block's batch, image side and channels.
const IMAGES: usize = 8;
const SIDE: usize = 16;
const CHANNELS: usize = 16;

/// conv - norm - SiLU at full size, a strided conv - norm - SiLU at half
/// size, a transposed conv back up, the skip concatenated, conv - norm -
/// SiLU, and a 1x1 conv to the image's 3 channels.
#[derive(Module, Debug)]
struct UNet<N: Norm<4>> {
    stem: Conv2d,
    norm_stem: N,
    down: Conv2d,
    norm_down: N,
    up: ConvTranspose2d,
    merge: Conv2d,
    norm_merge: N,
    out: Conv2d,
}

impl<N: Norm<4>> UNet<N> {
    fn new(device: &Device) -> Self {
        device.seed(SEED);
        let conv = |i, o, stride| {
            Conv2dConfig::new([i, o], [3, 3]).with_stride([stride, stride]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
        };
        Self {
            stem: conv(3, CHANNELS, 1),
            norm_stem: N::make(CHANNELS, device),
            down: conv(CHANNELS, 2 * CHANNELS, 2),
            norm_down: N::make(2 * CHANNELS, device),
            up: ConvTranspose2dConfig::new([2 * CHANNELS, CHANNELS], [2, 2]).with_stride([2, 2]).init(device),
            merge: conv(2 * CHANNELS, CHANNELS, 1),
            norm_merge: N::make(CHANNELS, device),
            out: Conv2dConfig::new([CHANNELS, 3], [1, 1]).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = activation::silu(self.norm_stem.norm(self.stem.forward(x)));
        let low = activation::silu(self.norm_down.norm(self.down.forward(skip.clone())));
        let up = self.up.forward(low);
        let merged = activation::silu(self.norm_merge.norm(self.merge.forward(Tensor::cat(vec![up, skip], 1))));
        self.out.forward(merged)
    }
}

/// Smooth images (a gradient per channel and a bright square) and their noisy copies.
fn images(rng: &mut rand::rngs::StdRng) -> (Vec<f32>, Vec<f32>) {
    let noise = Normal::new(0.0, 0.3).expect("finite");
    let (mut clean, mut noisy) = (Vec::new(), Vec::new());
    for _ in 0..IMAGES {
        let (top, left) = (rng.random_range(0..SIDE / 2), rng.random_range(0..SIDE / 2));
        for c in 0..3 {
            for h in 0..SIDE {
                for w in 0..SIDE {
                    let square = (top..top + SIDE / 2).contains(&h) && (left..left + SIDE / 2).contains(&w);
                    let value = (h + c * w) as f32 / SIDE as f32 + if square { 1.0 } else { 0.0 };
                    clean.push(value);
                    noisy.push(value + noise.sample(rng) as f32);
                }
            }
        }
    }
    (clean, noisy)
}

/// Losses and per-step wall times of `steps` SGD steps of `loss` on `model`.
fn train<M: Module>(mut model: M, steps: usize, device: &Device, loss: impl Fn(&M, usize) -> Tensor<1>) -> (Vec<f64>, Vec<f64>) {
    let mut optimizer = SgdConfig::new().init();
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let start = Instant::now();
        let value = loss(&model, step);
        let grads = GradientsParams::from_grads(value.backward(), &model);
        model = optimizer.step(LEARNING_RATE, model, grads);
        let value = value.into_scalar::<f32>();
        device.sync().expect("device");
        times.push(start.elapsed().as_secs_f64());
        losses.push(f64::from(value));
    }
    (losses, times)
}

fn transformer<N: Norm<3>>(device: &Device, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let batches: Vec<_> = (0..steps).map(|_| sequences(&mut rng)).collect();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    train(Transformer::<N>::new(device), steps, device, |model, step| {
        let (x, labels) = batches[step].clone();
        let x = Tensor::<3>::from_data(TensorData::new(x, [BATCH, SEQ, WIDTH]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [BATCH]), device);
        loss_fn.forward(model.forward(x), y)
    })
}

fn unet<N: Norm<4>>(device: &Device, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let batches: Vec<_> = (0..steps).map(|_| images(&mut rng)).collect();
    train(UNet::<N>::new(device), steps, device, |model, step| {
        let (clean, noisy) = batches[step].clone();
        let dims = [IMAGES, 3, SIDE, SIDE];
        let (clean, noisy) =
            (Tensor::<4>::from_data(TensorData::new(clean, dims), device), Tensor::from_data(TensorData::new(noisy, dims), device));
        MseLoss::new().forward(model.forward(noisy), clean, Reduction::Mean)
    })
}

fn main() {
    let steps: usize = arg("--steps").map_or(20, |s| s.parse().expect("--steps N"));
    let (device, ctx) = autodiff_device();
    type Runs = fn(&Device, usize) -> (Vec<f64>, Vec<f64>);
    let models: [(&str, Runs, Runs); 3] = [
        ("transformer, LayerNorm", transformer::<burn::nn::LayerNorm>, transformer::<wgpu_batchnorm_burn::LayerNorm>),
        ("transformer, RmsNorm", transformer::<burn::nn::RmsNorm>, transformer::<wgpu_batchnorm_burn::RmsNorm>),
        ("U-Net block, GroupNorm", unet::<burn::nn::GroupNorm>, unet::<wgpu_batchnorm_burn::GroupNorm>),
    ];
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(f64::MIN_POSITIVE);
    let (mut json, mut agree) = (Vec::new(), true);
    for (name, theirs, ours) in models {
        let ((burn_losses, burn_times), (our_losses, our_times)) = (theirs(&device, steps), ours(&device, steps));
        let (first, last) = (rel(burn_losses[0], our_losses[0]), rel(burn_losses[steps - 1], our_losses[steps - 1]));
        let (burn_step, our_step) = (median(&burn_times[1..]), median(&our_times[1..]));
        println!(
            "{name}: loss {:.6} -> {:.6} (burn::nn) and {:.6} -> {:.6} (wgpu-batchnorm); rel diff first {first:.2e} (bound 1e-5), last {last:.2e} (bound 1e-3); median step {:.2} ms and {:.2} ms ({:.2}x)",
            burn_losses[0],
            burn_losses[steps - 1],
            our_losses[0],
            our_losses[steps - 1],
            burn_step * 1e3,
            our_step * 1e3,
            burn_step / our_step
        );
        agree &= first <= 1e-5 && last <= 1e-3;
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:e}")).collect::<Vec<_>>().join(", ");
        json.push(format!(
            "    {{\"model\": {name:?}, \"burn_losses\": [{}], \"wgpu_batchnorm_losses\": [{}], \"burn_step_seconds\": [{}], \"wgpu_batchnorm_step_seconds\": [{}], \"first_rel_diff\": {first:e}, \"last_rel_diff\": {last:e}}}",
            list(&burn_losses),
            list(&our_losses),
            list(&burn_times),
            list(&our_times)
        ));
    }
    if let Some(path) = arg("--json") {
        let json =
            format!("{{\n  \"adapter\": {:?},\n  \"steps\": {steps},\n  \"models\": [\n{}\n  ]\n}}\n", ctx.describe(), json.join(",\n"));
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        println!("wrote {path}");
    }
    if !agree {
        eprintln!("a pair of variants disagrees");
        std::process::exit(1);
    }
}
