//! The correctness check a GPU run trusts, in one binary: every op against the
//! f64 reference (`wgpu_batchnorm::reference`) on the adapter it finds, at
//! docs/SPEC.md's bounds, exiting non-zero on any miss.
//!
//! `cargo run --release --example gpu_check [-- --quick] [--json FILE]`
//! (`--adapter`: print the adapter it would run on, and stop)
//!
//! Ops: batch norm's training forward (with running statistics), backward,
//! inference forward and backward, and the fused `relu(bn(x) + residual)`
//! forward and backward; group, instance, layer and RMS norm forward and
//! backward. Each in f32, f16 and bf16 tensors, channels-first and
//! channels-last, on the benchmark's shapes (`--quick`: small shapes that
//! still reach both item widths and both reduction strategies, as CI runs it
//! on the software adapters).
//!
//! Bounds (docs/SPEC.md sections 7 and 16): f32 tensors and every f32
//! output (statistics, running statistics, parameter gradients) within 1e-5
//! normwise relative error, `dgamma` against `sqrt(sum (dy * xhat)^2)` where
//! its sum cancels; half-precision tensors each value within one unit in the
//! last place of its dtype plus 1e-5 of the reference's root mean square.

use std::process::ExitCode;
use std::time::Instant;

use ndarray::{ArrayD, ArrayViewD};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use wgpu_batchnorm::half::{bf16, f16};
use wgpu_batchnorm::{
    reference, Activation, Dtype, Element, Epilogue, GpuContext, Layout, Norm, NormBackwardInputs, NormInputs, Options, RunningStats, Shape,
};

/// Batch norm's shapes: the benchmark's (`wgpu_batchnorm::bench::SHAPES`), or small ones.
const BATCH_SHAPES: [(&[usize], Layout); 7] = [
    (&[32, 64, 56, 56], Layout::ChannelsFirst),
    (&[32, 56, 56, 64], Layout::ChannelsLast),
    (&[256, 1024], Layout::ChannelsFirst),
    (&[8, 512, 7, 7], Layout::ChannelsFirst),
    (&[8, 7, 7, 512], Layout::ChannelsLast),
    (&[4, 3, 224, 224], Layout::ChannelsFirst),
    (&[4, 224, 224, 3], Layout::ChannelsLast),
];
const QUICK_BATCH_SHAPES: [(&[usize], Layout); 5] = [
    (&[4, 8, 9, 8], Layout::ChannelsFirst),
    (&[4, 9, 7, 8], Layout::ChannelsLast),
    (&[64, 12], Layout::ChannelsFirst),
    (&[2, 3, 5, 5], Layout::ChannelsFirst),
    (&[3, 5, 5, 3], Layout::ChannelsLast),
];

/// An op of the normalization family on a shape.
#[derive(Debug, Clone, Copy)]
enum Family {
    Group(&'static [usize], Layout, usize),
    Instance(&'static [usize], Layout),
    Layer(&'static [usize], usize),
    Rms(&'static [usize], usize),
}

/// The family's shapes: the benchmark's, or small ones (`Layer` and `Rms`
/// normalize over their last `usize` dims).
const FAMILY: [Family; 6] = [
    Family::Layer(&[4096, 768], 1),
    Family::Layer(&[2048, 4096], 1),
    Family::Rms(&[4096, 4096], 1),
    Family::Group(&[2, 320, 64, 64], Layout::ChannelsFirst, 32),
    Family::Group(&[2, 64, 64, 320], Layout::ChannelsLast, 32),
    Family::Instance(&[8, 64, 128, 128], Layout::ChannelsFirst),
];
const QUICK_FAMILY: [Family; 7] = [
    Family::Layer(&[32, 48], 1),
    Family::Layer(&[6, 5, 12], 2),
    Family::Rms(&[16, 64], 1),
    Family::Group(&[2, 16, 6, 6], Layout::ChannelsFirst, 4),
    Family::Group(&[2, 6, 6, 16], Layout::ChannelsLast, 4),
    Family::Instance(&[2, 8, 7, 9], Layout::ChannelsFirst),
    Family::Instance(&[2, 7, 9, 8], Layout::ChannelsLast),
];

/// An element type the check draws its data in.
trait Draw: Element {
    fn from_f32(v: f32) -> Self;
}

impl Draw for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Draw for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Draw for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// `x ~ N(mu_c, s_c^2)` per channel (`channel(i)` of element `i`), rounded to `E`.
fn data<E: Draw>(dims: &[usize], seed: u64, channels: usize, channel: impl Fn(usize) -> usize) -> ArrayD<E> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f64, 1.0).expect("a standard normal");
    let n: usize = dims.iter().product();
    let values = (0..n)
        .map(|i| {
            let c = channel(i) % channels.max(1);
            let s = 0.5 + (c % 7) as f64;
            let mu = ((c * 37 % 21) as f64 - 10.0) * s;
            E::from_f32((mu + s * normal.sample(&mut rng)) as f32)
        })
        .collect();
    ArrayD::from_shape_vec(dims, values).expect("dims match")
}

/// `N(0, 1)` values, rounded to `E`: upstream gradients and residuals.
fn noise<E: Draw>(dims: &[usize], seed: u64) -> ArrayD<E> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("a standard normal");
    ArrayD::from_shape_simple_fn(dims, || E::from_f32(normal.sample(&mut rng)))
}

/// `n` values in `[lo, hi)`, deterministic.
fn vector(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 1000.0)).collect()
}

fn to_f64<E: Element>(a: &ArrayViewD<'_, E>) -> ArrayD<f64> {
    a.mapv(|v| v.into())
}

/// One unit in the last place of `dtype` at magnitude `m`.
fn ulp(dtype: Dtype, m: f64) -> f64 {
    let bits = match dtype {
        Dtype::F32 => 23,
        Dtype::F16 => 10,
        Dtype::Bf16 => 7,
    };
    let min_exp = match dtype {
        Dtype::F16 => -14,
        _ => -126,
    };
    2f64.powi(m.max(f64::MIN_POSITIVE).log2().floor().max(f64::from(min_exp)) as i32 - bits)
}

/// The checks' results: each output's worst error as a multiple of its bound.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
    json: Vec<String>,
    failed: usize,
    checked: usize,
}

impl Report {
    fn add(&mut self, what: &str, output: &str, excess: f64) {
        let pass = excess <= 1.0;
        self.checked += 1;
        if !pass {
            self.failed += 1;
        }
        let verdict = if pass { "ok" } else { "FAILED" };
        let line = format!("{verdict:<6} {what}: {output} at {excess:.3} of its bound");
        if !pass {
            eprintln!("{line}");
        }
        self.lines.push(line);
        self.json.push(format!(
            "  {{\"check\": \"{what}\", \"output\": \"{output}\", \"of_bound\": {}, \"pass\": {pass}}}",
            if excess.is_finite() { format!("{excess:.6}") } else { "null".into() }
        ));
    }

    /// A tensor of `dtype` against its reference (section 7 for f32, 16 for halves).
    fn tensor<E: Element>(&mut self, what: &str, output: &str, got: &ArrayViewD<'_, E>, want: &ArrayViewD<'_, f64>) {
        let got: Vec<f64> = got.iter().map(|&v| v.into()).collect();
        let want: Vec<f64> = want.iter().copied().collect();
        let excess = match E::DTYPE {
            Dtype::F32 => relative(&got, &want, 0.0) / 1e-5,
            dtype => {
                let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
                got.iter().zip(&want).map(|(g, w)| (g - w).abs() / (ulp(dtype, g.abs().max(w.abs())) + 1e-5 * rms)).fold(0.0, |a, b| {
                    if b.is_nan() {
                        f64::NAN
                    } else {
                        a.max(b)
                    }
                })
            }
        };
        self.add(what, output, excess);
    }

    /// f32 values within 1e-5 normwise, relative to `max(||want||, floor)`.
    fn values(&mut self, what: &str, output: &str, got: &[f32], want: &[f64], floor: f64) {
        let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
        self.add(what, output, relative(&got, want, floor) / 1e-5);
    }
}

/// `||got - want|| / max(||want||, floor)` (absolute where both are 0); NaN on a length mismatch.
fn relative(got: &[f64], want: &[f64], floor: f64) -> f64 {
    if got.len() != want.len() {
        return f64::NAN;
    }
    let diff = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum::<f64>().sqrt();
    let norm = want.iter().map(|w| w * w).sum::<f64>().sqrt().max(floor);
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// `sqrt(sum (dy * xhat)^2)`, the size `dgamma`'s error scales with where its
/// sum cancels (docs/SPEC.md, Numerics), with `xhat = (y - beta) / gamma` from
/// the reference's `y` and element `i`'s parameter `param(i)`.
fn dgamma_floor<E: Element>(dy: &ArrayD<E>, y: &ArrayD<f64>, gamma: &[f32], beta: Option<&[f32]>, param: impl Fn(usize) -> usize) -> f64 {
    let terms = dy.iter().zip(y.iter()).enumerate().map(|(i, (&d, &y))| {
        let p = param(i);
        let xhat = (y - beta.map_or(0.0, |b| f64::from(b[p]))) / f64::from(gamma[p]);
        (d.into() * xhat).powi(2)
    });
    terms.sum::<f64>().sqrt()
}

type Check = Result<(), wgpu_batchnorm::Error>;

/// Batch norm's ops on one shape and dtype.
fn batch_norm<E: Draw>(ctx: &GpuContext, report: &mut Report, dims: &[usize], layout: Layout) -> Check {
    let shape = Shape::new(dims, layout)?;
    let (c, s) = (shape.channels(), shape.inner());
    let channel = |i: usize| (i / s) % c;
    let what = format!("batch norm {dims:?} {layout:?} {:?}", E::DTYPE);
    let x = data::<E>(dims, 1, c, channel);
    let dy = noise::<E>(dims, 2);
    let (gamma, beta) = (vector(c, 3, 0.5, 1.5), vector(c, 4, -1.0, 1.0));
    let op = Norm::Batch(shape.clone());
    let options = Options { dtype: E::DTYPE, ..Options::default() };
    let mut running = RunningStats::new(c);
    let out = ctx.norm_blocking(&op, x.view(), Some(&gamma[..]), Some(&beta[..]), Some(&mut running), &options)?;
    let want = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5)?;
    report.tensor(&what, "training y", &out.y.view(), &want.y.view());
    report.values(&what, "save_mean", out.mean.as_deref().unwrap_or_default(), &want.save_mean, 0.0);
    report.values(&what, "save_invstd", &out.rstd, &want.save_invstd, 0.0);
    let mut want_running = RunningStats::<f64>::new(c);
    let batch = reference::BatchStats { mean: want.save_mean.clone(), var: want.var.clone() };
    reference::update_running(&mut want_running, &batch, shape.per_channel(), &options);
    report.values(&what, "running_mean", &running.mean, &want_running.mean, 0.0);
    report.values(&what, "running_var", &running.var, &want_running.var, 0.0);

    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), Some(&gamma[..]), &options)?;
    let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..]))?;
    report.tensor(&what, "dx", &grads.dx.view(), &wg.dx.view());
    let floor = dgamma_floor(&dy, &want.y, &gamma, Some(&beta), channel);
    report.values(&what, "dgamma", grads.dgamma.as_deref().unwrap_or_default(), &wg.dgamma, floor);
    report.values(&what, "dbeta", grads.dbeta.as_deref().unwrap_or_default(), &wg.dbeta, 0.0);

    let y = ctx.norm_inference_blocking(&op, x.view(), Some(&gamma[..]), Some(&beta[..]), &running, &options)?;
    let wy = reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)?;
    report.tensor(&what, "inference y", &y.view(), &wy.view());
    let gi = ctx.norm_backward_blocking(&op, &inputs, running.backward_stats(), Some(&gamma[..]), &options)?;
    let wi = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, Some(&gamma[..]), 1e-5)?;
    report.tensor(&what, "inference dx", &gi.dx.view(), &wi.dx.view());

    // The fused ResNet tail, relu(bn(x) + residual), forward and backward.
    let fused = Options { epilogue: Epilogue { activation: Activation::Relu, residual: true }, track_running_stats: false, ..options };
    let residual = noise::<E>(dims, 5);
    let fused_x = NormInputs { x: x.view(), residual: Some(residual.view()) };
    let z = ctx.norm_blocking(&op, fused_x, Some(&gamma[..]), Some(&beta[..]), None, &fused)?;
    let wz = reference::epilogue(&want.y.view(), Some(&residual.view()), Activation::Relu)?;
    report.tensor(&what, "relu(bn + residual) z", &z.y.view(), &wz.view());
    let fused_inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: Some(z.y.view()) };
    let fg = ctx.norm_backward_blocking(&op, &fused_inputs, z.stats(), Some(&gamma[..]), &fused)?;
    let masked = reference::epilogue_grad(&dy.view(), &z.y.view(), Activation::Relu)?;
    let wf =
        reference::backward_train(&shape, &masked.view(), &to_f64(&x.view()).view(), &want.save_mean, &want.save_invstd, Some(&gamma[..]))?;
    report.tensor(&what, "fused dx", &fg.dx.view(), &wf.dx.view());
    if let Some(dr) = &fg.dresidual {
        report.tensor(&what, "fused dresidual", &dr.view(), &masked.view());
    }
    Ok(())
}

/// One op of the family on its shape and dtype: forward and backward.
fn family<E: Draw>(ctx: &GpuContext, report: &mut Report, op: Family) -> Check {
    let dims = match op {
        Family::Group(d, ..) | Family::Instance(d, _) | Family::Layer(d, _) | Family::Rms(d, _) => d,
    };
    let what = format!("{op:?} {:?}", E::DTYPE);
    let (params, channel): (usize, Box<dyn Fn(usize) -> usize>) = match op {
        Family::Group(d, layout, _) | Family::Instance(d, layout) => {
            let shape = Shape::new(d, layout)?;
            let (c, s) = (shape.channels(), shape.inner());
            (c, Box::new(move |i| (i / s) % c))
        }
        Family::Layer(d, k) | Family::Rms(d, k) => {
            let p: usize = d[d.len() - k..].iter().product();
            (p, Box::new(move |i| i % p))
        }
    };
    let x = data::<E>(dims, 11, params, &channel);
    let dy = noise::<E>(dims, 12);
    let (gamma, beta) = (vector(params, 13, 0.5, 1.5), vector(params, 14, -1.0, 1.0));
    let gamma64: Vec<f64> = gamma.iter().map(|&g| f64::from(g)).collect();
    // The op's descriptor, and PyTorch's module defaults for it (RMS norm's eps is f32's epsilon) with affine parameters.
    let norm = match op {
        Family::Group(_, layout, groups) => Norm::Group { shape: Shape::new(dims, layout)?, groups },
        Family::Instance(_, layout) => Norm::Instance(Shape::new(dims, layout)?),
        Family::Layer(_, k) => Norm::Layer { dims: dims.to_vec(), normalized_shape: dims[dims.len() - k..].to_vec() },
        Family::Rms(_, k) => Norm::Rms { dims: dims.to_vec(), normalized_shape: dims[dims.len() - k..].to_vec() },
    };
    let options = Options { affine: true, dtype: E::DTYPE, ..norm.default_options() };
    let rms = matches!(op, Family::Rms(..));
    let out = ctx.norm_blocking(&norm, x.view(), Some(&gamma[..]), (!rms).then_some(&beta[..]), None, &options)?;
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let grads = ctx.norm_backward_blocking(&norm, &inputs, out.stats(), Some(&gamma[..]), &options)?;
    // The reference at the options' own eps (RMS norm's is f32's epsilon).
    let beta64 = (!rms).then_some(&beta[..]);
    let want = reference::norm(&norm, &x.view(), Some(&gamma[..]), beta64, f64::from(options.eps))?;
    let wg = reference::norm_backward(&norm, &dy.view(), &x.view(), &want.mean, &want.rstd, Some(&gamma64[..]))?;
    report.tensor(&what, "y", &out.y.view(), &want.y.view());
    if let Some(mean) = &out.mean {
        report.values(&what, "mean", mean, &want.mean, 0.0);
    }
    report.values(&what, "rstd", &out.rstd, &want.rstd, 0.0);
    report.tensor(&what, "dx", &grads.dx.view(), &wg.dx.view());
    let floor = dgamma_floor(&dy, &want.y, &gamma, (!rms).then_some(&beta[..]), &channel);
    report.values(&what, "dgamma", grads.dgamma.as_deref().unwrap_or_default(), &wg.dgamma, floor);
    if !rms {
        report.values(&what, "dbeta", grads.dbeta.as_deref().unwrap_or_default(), &wg.dbeta, 0.0);
    }
    Ok(())
}

/// Every check on `ctx`, in every dtype.
fn run(ctx: &GpuContext, quick: bool, report: &mut Report) -> Check {
    let batch: &[(&[usize], Layout)] = if quick { &QUICK_BATCH_SHAPES } else { &BATCH_SHAPES };
    let ops: &[Family] = if quick { &QUICK_FAMILY } else { &FAMILY };
    for &(dims, layout) in batch {
        batch_norm::<f32>(ctx, report, dims, layout)?;
        batch_norm::<f16>(ctx, report, dims, layout)?;
        batch_norm::<bf16>(ctx, report, dims, layout)?;
    }
    for &op in ops {
        family::<f32>(ctx, report, op)?;
        family::<f16>(ctx, report, op)?;
        family::<bf16>(ctx, report, op)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let ctx = match GpuContext::new_blocking() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.iter().any(|a| a == "--adapter") {
        println!("{}", ctx.describe());
        return ExitCode::SUCCESS;
    }
    let f16_path = if ctx.shader_f16() { "SHADER_F16" } else { "32-bit words" };
    println!("gpu_check on {} (f16 through {f16_path}){}", ctx.describe(), if quick { ", quick shapes" } else { "" });
    let start = Instant::now();
    let mut report = Report::default();
    let ran = run(&ctx, quick, &mut report);
    for line in &report.lines {
        println!("{line}");
    }
    if let Some(path) = json {
        let text = format!("[\n{}\n]\n", report.json.join(",\n"));
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("gpu_check: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    match ran {
        Err(e) => {
            eprintln!("gpu_check: FAILED: an op returned {e} ({} checks before it, {} failed)", report.checked, report.failed);
            ExitCode::FAILURE
        }
        Ok(()) if report.failed > 0 => {
            eprintln!("gpu_check: FAILED: {} of {} checks past their bounds ({seconds:.1} s)", report.failed, report.checked);
            ExitCode::FAILURE
        }
        Ok(()) => {
            println!("gpu_check: all {} checks within their bounds ({seconds:.1} s)", report.checked);
            ExitCode::SUCCESS
        }
    }
}
