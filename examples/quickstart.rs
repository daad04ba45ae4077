//! Runs training forward, backward and inference on a ResNet-like tensor on the
//! default adapter (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF` choose
//! another), checks each against the f64 CPU reference and prints errors and timings.
//!
//! `cargo run --release --example quickstart [-- N C H W]`

use std::process::ExitCode;
use std::time::Instant;

use ndarray::ArrayD;
use wgpu_batchnorm::{reference, GpuContext, Layout, Norm, NormBackwardInputs, Options, RunningStats, Shape};

/// docs/SPEC.md's bound for `x ~ N(mu_c, s_c^2)`, `|mu_c| <= 10 s_c`.
const TOLERANCE: f64 = 1e-5;

/// (normwise relative error, max absolute error) against the reference.
fn errors<'a>(got: impl IntoIterator<Item = &'a f32>, want: impl IntoIterator<Item = &'a f64>) -> (f64, f64) {
    let (mut d, mut n, mut max) = (0.0, 0.0, 0.0f64);
    for (g, w) in got.into_iter().zip(want) {
        let e = *g as f64 - w;
        d += e * e;
        n += w * w;
        max = max.max(e.abs());
    }
    ((d / n).sqrt(), max)
}

/// A deterministic pseudo-random stream (splitmix64), so the example needs no RNG crate.
fn noise(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let dims = if args.len() == 4 { args } else { vec![32, 64, 56, 56] };
    match run(&dims) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("FAILED: an error is above {TOLERANCE:e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dims: &[usize]) -> wgpu_batchnorm::Result<bool> {
    let ctx = GpuContext::new_blocking()?;
    let info = ctx.adapter_info();
    println!("adapter: {} | backend: {:?} | type: {:?}", info.name, info.backend, info.device_type);
    let shape = Shape::new(dims, Layout::ChannelsFirst)?;
    let c = shape.channels();
    println!(
        "tensor: {:?} channels-first, {} elements ({:.1} MiB)",
        dims,
        shape.numel(),
        shape.bytes(wgpu_batchnorm::Dtype::F32) as f64 / (1 << 20) as f64
    );
    let mut rand = noise(1);
    let x = ArrayD::from_shape_fn(dims, |i| (i[1] as f64 * 0.5 - 8.0 + (1.0 + i[1] as f64 % 5.0) * rand()) as f32);
    let dy = ArrayD::from_shape_fn(dims, |_| rand() as f32);
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
    let beta: Vec<f32> = (0..c).map(|i| (i % 5) as f32 * 0.2 - 0.4).collect();
    let (g, b) = (Some(&gamma[..]), Some(&beta[..]));
    let op = Norm::Batch(shape.clone());
    let mut ok = true;
    let mut report = |name: &str, gpu_ms: f64, cpu_ms: f64, errors: &[(&str, (f64, f64))]| {
        let text: Vec<String> = errors.iter().map(|(n, (rel, max))| format!("{n} {rel:.1e} (max abs {max:.1e})")).collect();
        println!("{name:<18} gpu {gpu_ms:>8.1} ms | cpu reference {cpu_ms:>7.1} ms | rel. error {}", text.join(", "));
        ok &= errors.iter().all(|(_, (rel, _))| *rel <= TOLERANCE);
    };

    // Warm-up compiles the pipelines so the timings below are of the work alone.
    let options = Options::default();
    let mut running = RunningStats::new(c);
    ctx.norm_blocking(&op, x.view(), g, b, Some(&mut running.clone()), &options)?;

    let t = Instant::now();
    let out = ctx.norm_blocking(&op, x.view(), g, b, Some(&mut running), &options)?;
    let gpu = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let want = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5)?;
    let cpu = t.elapsed().as_secs_f64() * 1e3;
    let mut want_running = RunningStats::<f64>::new(c);
    let batch = reference::BatchStats { mean: want.save_mean.clone(), var: want.var.clone() };
    reference::update_running(&mut want_running, &batch, shape.per_channel(), &options);
    report(
        "training forward",
        gpu,
        cpu,
        &[
            ("y", errors(out.y.iter(), want.y.iter())),
            ("mean", errors(out.mean.as_deref().unwrap_or_default(), &want.save_mean)),
            ("invstd", errors(&out.rstd, &want.save_invstd)),
            ("running_var", errors(&running.var, &want_running.var)),
        ],
    );

    let t = Instant::now();
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), g, &options)?;
    let gpu = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    // The gradients at the batch statistics of the raw data, in f64.
    let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..]))?;
    let cpu = t.elapsed().as_secs_f64() * 1e3;
    let (dgamma, dbeta) = (grads.dgamma.unwrap_or_default(), grads.dbeta.unwrap_or_default());
    report(
        "training backward",
        gpu,
        cpu,
        &[("dx", errors(grads.dx.iter(), wg.dx.iter())), ("dgamma", errors(&dgamma, &wg.dgamma)), ("dbeta", errors(&dbeta, &wg.dbeta))],
    );

    let t = Instant::now();
    let y = ctx.norm_inference_blocking(&op, x.view(), g, b, &running, &options)?;
    let gpu = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let wy = reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)?;
    let cpu = t.elapsed().as_secs_f64() * 1e3;
    report("inference forward", gpu, cpu, &[("y", errors(y.iter(), wy.iter()))]);
    println!("gpu times include upload and readback; `cargo run --release --features bench --example bench` times the kernels alone");
    Ok(ok)
}
