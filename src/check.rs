//! The correctness check a run on a new adapter trusts: every op against the
//! f64 reference ([`crate::reference`]) on the context's adapter, at
//! docs/SPEC.md's bounds. `examples/gpu_check.rs` runs it natively; the web
//! package (`web/`) runs the same check inside wasm on the browser's WebGPU.
//!
//! Ops: batch norm's training forward (with running statistics), backward,
//! inference forward and backward, and the fused `relu(bn(x) + residual)`
//! forward and backward; group, instance, layer and RMS norm forward and
//! backward. Each in f32, f16 and bf16 tensors, channels-first and
//! channels-last, on the benchmark's shapes or on small ones that still reach
//! both item widths and both reduction strategies ([`Shapes`]).
//!
//! Bounds (docs/SPEC.md sections 7 and 16): f32 tensors and every f32 output
//! (statistics, running statistics, parameter gradients) within 1e-5
//! normwise relative error, `dgamma` against `sqrt(sum (dy * xhat)^2)` where
//! its sum cancels; half-precision tensors each value within one unit in the
//! last place of its dtype plus 1e-5 of the reference's root mean square.
//!
//! ```no_run
//! use wgpu_batchnorm::check::{self, Report, Shapes};
//! let ctx = wgpu_batchnorm::GpuContext::new_blocking()?;
//! let mut report = Report::default();
//! pollster::block_on(check::run(&ctx, Shapes::Quick, &mut report))?;
//! assert_eq!(report.failed(), 0, "{}", report.lines().join("\n"));
//! # Ok::<(), wgpu_batchnorm::Error>(())
//! ```

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD};

use crate::context::GpuContext;
use crate::error::Result;
use crate::layout::Layout;
use crate::op::{Norm, NormBackwardInputs, NormInputs};
use crate::ops::RunningStats;
use crate::options::{Activation, Dtype, Element, Epilogue, Options};
use crate::reference;
use crate::shape::Shape;

/// Which shapes [`run`] checks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shapes {
    /// Small shapes that still reach both item widths and both reduction
    /// strategies: 315 checks, seconds on a software adapter.
    Quick,
    /// The benchmark's shapes (`bench::SHAPES` and the family's): 375 checks.
    Benchmark,
}

/// Batch norm's shapes: the benchmark's (`bench::SHAPES`).
pub(crate) const BATCH_SHAPES: [(&[usize], Layout); 7] = [
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

/// The family's shapes (`Layer` and `Rms` normalize over their last `usize` dims).
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

/// One output's worst error against its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The op, shape, layout and dtype.
    pub check: String,
    /// Which output (`"dx"`, `"running_var"`, ...).
    pub output: String,
    /// The worst error as a multiple of its bound: within it at `<= 1`; NaN
    /// where the output had a NaN or the wrong length.
    pub of_bound: f64,
}

impl Outcome {
    /// Within its bound (a NaN is not).
    pub fn passed(&self) -> bool {
        self.of_bound <= 1.0
    }
}

/// The outcomes of [`run`], in the order checked; kept where an op returns
/// an error part way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every output checked.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// How many outputs missed their bounds.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.passed()).count()
    }

    /// One line per output: `ok` or `FAILED`, what, and the error as a multiple of its bound.
    pub fn lines(&self) -> Vec<String> {
        let line = |o: &Outcome| {
            let verdict = if o.passed() { "ok" } else { "FAILED" };
            format!("{verdict:<6} {}: {} at {:.3} of its bound", o.check, o.output, o.of_bound)
        };
        self.outcomes.iter().map(line).collect()
    }

    /// The outcomes as a JSON array of `{"check", "output", "of_bound", "pass"}`
    /// objects (`of_bound` null where NaN).
    pub fn to_json(&self) -> String {
        let item = |o: &Outcome| {
            let of_bound = if o.of_bound.is_finite() { format!("{:.6}", o.of_bound) } else { "null".into() };
            format!("  {{\"check\": {:?}, \"output\": {:?}, \"of_bound\": {of_bound}, \"pass\": {}}}", o.check, o.output, o.passed())
        };
        format!("[\n{}\n]\n", self.outcomes.iter().map(item).collect::<Vec<_>>().join(",\n"))
    }

    fn add(&mut self, check: &str, output: &str, of_bound: f64) {
        self.outcomes.push(Outcome { check: check.into(), output: output.into(), of_bound });
    }

    /// A tensor of `E` against its reference (section 7 for f32, 16 for halves).
    fn tensor<E: Element>(&mut self, what: &str, output: &str, got: &ArrayViewD<'_, E>, want: &ArrayViewD<'_, f64>) {
        let got: Vec<f64> = got.iter().map(|&v| v.into()).collect();
        let want: Vec<f64> = want.iter().copied().collect();
        let of_bound = match E::DTYPE {
            Dtype::F32 => relative(&got, &want, 0.0) / 1e-5,
            _ if got.len() != want.len() => f64::NAN,
            dtype => {
                let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
                let each = got.iter().zip(&want).map(|(g, w)| (g - w).abs() / (ulp(dtype, g.abs().max(w.abs())) + 1e-5 * rms));
                each.fold(0.0, |a: f64, b| if b.is_nan() || a.is_nan() { f64::NAN } else { a.max(b) })
            }
        };
        self.add(what, output, of_bound);
    }

    /// f32 values within 1e-5 normwise, relative to `max(||want||, floor)`.
    fn values(&mut self, what: &str, output: &str, got: &[f32], want: &[f64], floor: f64) {
        let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
        self.add(what, output, relative(&got, want, floor) / 1e-5);
    }
}

/// Every check on `ctx`, in every dtype, added to `report`.
///
/// # Errors
/// The first error an op returns; the outcomes checked before it stay in `report`.
pub async fn run(ctx: &GpuContext, shapes: Shapes, report: &mut Report) -> Result<()> {
    let (batch, ops): (&[(&[usize], Layout)], &[Family]) = match shapes {
        Shapes::Quick => (&QUICK_BATCH_SHAPES, &QUICK_FAMILY),
        Shapes::Benchmark => (&BATCH_SHAPES, &FAMILY),
    };
    for &(dims, layout) in batch {
        batch_norm::<f32>(ctx, report, dims, layout).await?;
        batch_norm::<f16>(ctx, report, dims, layout).await?;
        batch_norm::<bf16>(ctx, report, dims, layout).await?;
    }
    for &op in ops {
        family::<f32>(ctx, report, op).await?;
        family::<f16>(ctx, report, op).await?;
        family::<bf16>(ctx, report, op).await?;
    }
    Ok(())
}

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

/// Standard normal values from a seed, the same on every target (SplitMix64
/// and Box-Muller), so that a native and a wasm check draw the same data.
struct Normals {
    state: u64,
}

impl Normals {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Uniform in `(0, 1]`.
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `x ~ N(mu_c, s_c^2)` per channel (`channel(i)` of element `i`), rounded to `E`.
fn data<E: Draw>(dims: &[usize], seed: u64, channels: usize, channel: impl Fn(usize) -> usize) -> ArrayD<E> {
    let mut normals = Normals::new(seed);
    let n: usize = dims.iter().product();
    let values = (0..n)
        .map(|i| {
            let c = channel(i) % channels.max(1);
            let s = 0.5 + (c % 7) as f64;
            let mu = ((c * 37 % 21) as f64 - 10.0) * s;
            E::from_f32((mu + s * normals.next()) as f32)
        })
        .collect();
    ArrayD::from_shape_vec(dims, values).unwrap_or_else(|_| unreachable!("{n} values for {dims:?}"))
}

/// `N(0, 1)` values, rounded to `E`: upstream gradients and residuals.
fn noise<E: Draw>(dims: &[usize], seed: u64) -> ArrayD<E> {
    let mut normals = Normals::new(seed);
    ArrayD::from_shape_simple_fn(dims, || E::from_f32(normals.next() as f32))
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

/// Batch norm's ops on one shape and dtype.
async fn batch_norm<E: Draw>(ctx: &GpuContext, report: &mut Report, dims: &[usize], layout: Layout) -> Result<()> {
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
    let out = ctx.norm(&op, x.view(), Some(&gamma[..]), Some(&beta[..]), Some(&mut running), &options).await?;
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
    let grads = ctx.norm_backward(&op, &inputs, out.stats(), Some(&gamma[..]), &options).await?;
    let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..]))?;
    report.tensor(&what, "dx", &grads.dx.view(), &wg.dx.view());
    let floor = dgamma_floor(&dy, &want.y, &gamma, Some(&beta), channel);
    report.values(&what, "dgamma", grads.dgamma.as_deref().unwrap_or_default(), &wg.dgamma, floor);
    report.values(&what, "dbeta", grads.dbeta.as_deref().unwrap_or_default(), &wg.dbeta, 0.0);

    let y = ctx.norm_inference(&op, x.view(), Some(&gamma[..]), Some(&beta[..]), &running, &options).await?;
    let wy = reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)?;
    report.tensor(&what, "inference y", &y.view(), &wy.view());
    let gi = ctx.norm_backward(&op, &inputs, running.backward_stats(), Some(&gamma[..]), &options).await?;
    let wi = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, Some(&gamma[..]), 1e-5)?;
    report.tensor(&what, "inference dx", &gi.dx.view(), &wi.dx.view());

    // The fused ResNet tail, relu(bn(x) + residual), forward and backward.
    let fused = Options { epilogue: Epilogue { activation: Activation::Relu, residual: true }, track_running_stats: false, ..options };
    let residual = noise::<E>(dims, 5);
    let fused_x = NormInputs { x: x.view(), residual: Some(residual.view()) };
    let z = ctx.norm(&op, fused_x, Some(&gamma[..]), Some(&beta[..]), None, &fused).await?;
    let wz = reference::epilogue(&want.y.view(), Some(&residual.view()), Activation::Relu)?;
    report.tensor(&what, "relu(bn + residual) z", &z.y.view(), &wz.view());
    let fused_inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: Some(z.y.view()) };
    let fg = ctx.norm_backward(&op, &fused_inputs, z.stats(), Some(&gamma[..]), &fused).await?;
    let masked = reference::epilogue_grad(&dy.view(), &z.y.view(), Activation::Relu)?;
    let wf =
        reference::backward_train(&shape, &masked.view(), &to_f64(&x.view()).view(), &want.save_mean, &want.save_invstd, Some(&gamma[..]))?;
    report.tensor(&what, "fused dx", &fg.dx.view(), &wf.dx.view());
    match &fg.dresidual {
        Some(dr) => report.tensor(&what, "fused dresidual", &dr.view(), &masked.view()),
        None => report.add(&what, "fused dresidual", f64::NAN),
    }
    Ok(())
}

/// One op of the family on its shape and dtype: forward and backward.
async fn family<E: Draw>(ctx: &GpuContext, report: &mut Report, op: Family) -> Result<()> {
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
    let beta = (!rms).then_some(&beta[..]);
    let out = ctx.norm(&norm, x.view(), Some(&gamma[..]), beta, None, &options).await?;
    let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
    let grads = ctx.norm_backward(&norm, &inputs, out.stats(), Some(&gamma[..]), &options).await?;
    // The reference at the options' own eps (RMS norm's is f32's epsilon).
    let want = reference::norm(&norm, &x.view(), Some(&gamma[..]), beta, f64::from(options.eps))?;
    let wg = reference::norm_backward(&norm, &dy.view(), &x.view(), &want.mean, &want.rstd, Some(&gamma64[..]))?;
    report.tensor(&what, "y", &out.y.view(), &want.y.view());
    if let Some(mean) = &out.mean {
        report.values(&what, "mean", mean, &want.mean, 0.0);
    }
    report.values(&what, "rstd", &out.rstd, &want.rstd, 0.0);
    report.tensor(&what, "dx", &grads.dx.view(), &wg.dx.view());
    let floor = dgamma_floor(&dy, &want.y, &gamma, beta, &channel);
    report.values(&what, "dgamma", grads.dgamma.as_deref().unwrap_or_default(), &wg.dgamma, floor);
    if !rms {
        report.values(&what, "dbeta", grads.dbeta.as_deref().unwrap_or_default(), &wg.dbeta, 0.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's first values are fixed (a native and a wasm build draw
    /// the same data), and its normals have the moments of a standard normal.
    #[test]
    fn normals_are_fixed_by_their_seed_and_standard() {
        let first: Vec<f64> = {
            let mut n = Normals::new(1);
            (0..3).map(|_| n.next()).collect()
        };
        let again: Vec<f64> = {
            let mut n = Normals::new(1);
            (0..3).map(|_| n.next()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, {
            let mut n = Normals::new(2);
            (0..3).map(|_| n.next()).collect::<Vec<_>>()
        });
        let mut n = Normals::new(7);
        let values: Vec<f64> = (0..200_000).map(|_| n.next()).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    /// A NaN, a length mismatch and an error past the bound all fail.
    #[test]
    fn the_report_fails_nan_wrong_length_and_excess() {
        let mut report = Report::default();
        report.values("t", "exact", &[1.0, 2.0], &[1.0, 2.0], 0.0);
        report.values("t", "nan", &[f32::NAN, 2.0], &[1.0, 2.0], 0.0);
        report.values("t", "short", &[1.0], &[1.0, 2.0], 0.0);
        report.values("t", "off", &[1.001, 2.0], &[1.0, 2.0], 0.0);
        // A NaN before a value within the bound still fails.
        let half = ndarray::arr1(&[f16::NAN, f16::from_f32(1.0)]).into_dyn();
        report.tensor("t", "half nan", &half.view(), &ndarray::arr1(&[1.0, 1.0]).into_dyn().view());
        let passed: Vec<bool> = report.outcomes.iter().map(Outcome::passed).collect();
        assert_eq!(passed, [true, false, false, false, false]);
        assert_eq!(report.failed(), 4);
        assert!(report.to_json().contains("\"of_bound\": null"));
    }
}
