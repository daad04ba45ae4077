//! Inference folding (fold_params.wgsl, apply.wgsl over the weights, scale_shift.wgsl):
//! a small convolution and a linear layer computed on the CPU followed by batch
//! norm in inference mode (the f64 reference) against the folded layer, the
//! GPU's folding against the CPU's, the exported (scale, shift), and errors.

mod common;

use common::*;
use ndarray::ArrayD;
use wgpu_batchnorm::fold::{self, FoldBuffers, ScaleShiftBuffers};
use wgpu_batchnorm::{reference, Affine, Error, Layout, Options, RunningStats, Shape};

/// A direct 2-D convolution in f64: stride 1, zero padding `pad`, `groups`
/// groups; `x` is `(N, C_in, H, W)`, `w` is `(C_out, C_in / groups, KH, KW)`.
fn conv2d(x: &ArrayD<f32>, w: &ArrayD<f32>, b: Option<&[f32]>, groups: usize, pad: usize) -> ArrayD<f64> {
    let (n, c_in, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (c_out, per_group, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    assert_eq!(per_group * groups, c_in);
    let (oh, ow) = (h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1);
    ArrayD::from_shape_fn(vec![n, c_out, oh, ow], |i| {
        let (s, o, y, xo) = (i[0], i[1], i[2], i[3]);
        let group = o / (c_out / groups);
        let mut acc = b.map_or(0.0, |b| f64::from(b[o]));
        for ci in 0..per_group {
            for dy in 0..kh {
                for dx in 0..kw {
                    let (yy, xx) = ((y + dy) as isize - pad as isize, (xo + dx) as isize - pad as isize);
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < wd {
                        let v = x[[s, group * per_group + ci, yy as usize, xx as usize]];
                        acc += f64::from(w[[o, ci, dy, dx]]) * f64::from(v);
                    }
                }
            }
        }
        acc
    })
}

fn data(dims: &[usize], seed: u64, lo: f32, hi: f32) -> ArrayD<f32> {
    ArrayD::from_shape_vec(dims.to_vec(), vector(dims.iter().product(), seed, lo, hi)).unwrap()
}

/// Running statistics near those of the layer's output, so that batch norm's
/// output is O(1) and the bound is relative to it (docs/SPEC.md, Inference folding).
fn running_like(y: &ArrayD<f64>, seed: u64) -> RunningStats {
    let shape = Shape::new(y.shape(), Layout::ChannelsFirst).unwrap();
    let s = reference::batch_stats(&shape, &y.view()).unwrap();
    let jitter = vector(shape.channels(), seed, 0.8, 1.25);
    RunningStats {
        mean: s.mean.iter().zip(&jitter).map(|(m, j)| (m * f64::from(*j)) as f32).collect(),
        var: s.var.iter().zip(&jitter).map(|(v, j)| (v * f64::from(*j)) as f32).collect(),
        num_batches_tracked: 10,
    }
}

#[test]
fn a_convolution_then_batch_norm_equals_the_folded_convolution() {
    let ctx = ctx();
    let x = data(&[2, 4, 7, 6], 1, -2.0, 2.0);
    for (groups, c_out) in [(1, 5), (2, 6), (4, 4)] {
        let w = data(&[c_out, 4 / groups, 3, 3], 2, -0.5, 0.5);
        let bias = vector(c_out, 3, -1.0, 1.0);
        let (gamma, beta) = (vector(c_out, 4, 0.5, 1.5), vector(c_out, 5, -1.0, 1.0));
        for b in [Some(&bias[..]), None] {
            let y = conv2d(&x, &w, b, groups, 1);
            let shape = Shape::new(y.shape(), Layout::ChannelsFirst).unwrap();
            let running = running_like(&y, 6);
            for affine in [true, false] {
                let a = affine.then_some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
                let (g, be) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
                let want = reference::forward_inference(&shape, &y.view(), g, be, &running.mean, &running.var, 1e-5).unwrap();
                let options = Options { affine, ..Options::default() };
                let cpu = fold::fold(&w.view(), b, a, &running, &options).unwrap();
                let gpu = ctx.fold_blocking(&w.view(), b, a, &running, &options).unwrap();
                let what = format!("groups {groups} bias {} affine {affine}", b.is_some());
                for (name, f) in [("cpu", &cpu), ("gpu", &gpu)] {
                    let got = conv2d(&x, &f.weight, Some(&f.bias), groups, 1).mapv(|v| v as f32);
                    assert_rel(&format!("{name} folded conv, {what}"), got.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
                }
                // The GPU's k is an f32 rounding: each folded weight within a few ulps of the CPU's.
                assert_rel(
                    &format!("weights {what}"),
                    gpu.weight.as_slice().unwrap(),
                    &cpu.weight.mapv(f64::from).into_raw_vec_and_offset().0,
                    1e-6,
                );
                assert_rel(&format!("bias {what}"), &gpu.bias, &cpu.bias.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), 1e-6);
            }
        }
    }
}

#[test]
fn a_linear_layer_then_batch_norm_equals_the_folded_layer() {
    let ctx = ctx();
    let (n, c_in, c_out) = (16, 24, 10);
    let x = data(&[n, c_in], 11, -1.0, 1.0);
    let w = data(&[c_out, c_in], 12, -0.3, 0.3);
    let bias = vector(c_out, 13, -1.0, 1.0);
    let linear = |w: &ArrayD<f32>, b: &[f32]| {
        ArrayD::from_shape_fn(vec![n, c_out], |i| {
            (0..c_in).map(|k| f64::from(w[[i[1], k]]) * f64::from(x[[i[0], k]])).sum::<f64>() + f64::from(b[i[1]])
        })
    };
    let y = linear(&w, &bias);
    let shape = Shape::new(&[n, c_out], Layout::ChannelsFirst).unwrap();
    let running = running_like(&y, 14);
    let (gamma, beta) = (vector(c_out, 15, 0.5, 1.5), vector(c_out, 16, -1.0, 1.0));
    let want =
        reference::forward_inference(&shape, &y.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5).unwrap();
    let a = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let f = ctx.fold_blocking(&w.view(), Some(&bias), a, &running, &Options::default()).unwrap();
    let got = linear(&f.weight, &f.bias).mapv(|v| v as f32);
    assert_rel("folded linear", got.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
}

/// The exported (scale, shift) on the GPU against the CPU's, and
/// `scale * x + shift` against batch norm in inference mode.
#[test]
fn scale_and_shift_match_inference_batch_norm() {
    let ctx = ctx();
    let shape = Shape::new(&[3, 40, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 21);
    let c = shape.channels();
    let running = RunningStats { mean: vector(c, 22, -20.0, 20.0), var: vector(c, 23, 0.25, 40.0), num_batches_tracked: 3 };
    let (gamma, beta) = (vector(c, 24, 0.5, 1.5), vector(c, 25, -1.0, 1.0));
    let a = Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let cpu = fold::scale_shift(a, &running, &Options::default()).unwrap();
    let gpu = ctx.scale_shift_blocking(a, &running, &Options::default()).unwrap();
    let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
    assert_rel("scale", &gpu.scale, &f64s(&cpu.scale), 1e-6);
    assert_rel("shift", &gpu.shift, &f64s(&cpu.shift), 1e-6);
    let want =
        reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5).unwrap();
    let got: Vec<f32> = x.indexed_iter().map(|(i, &v)| cpu.scale[i[1]] * v + cpu.shift[i[1]]).collect();
    assert_rel("scale * x + shift", &got, want.as_slice().unwrap(), 1e-5);
}

/// The low-level fold in place over slices of the caller's buffers.
#[test]
fn the_encoder_fold_runs_in_place() {
    let ctx = ctx();
    let w = data(&[8, 3, 3, 3], 31, -1.0, 1.0);
    let bias = vector(8, 32, -1.0, 1.0);
    let running = RunningStats { mean: vector(8, 33, -1.0, 1.0), var: vector(8, 34, 0.5, 2.0), num_batches_tracked: 1 };
    let options = Options { affine: false, ..Options::default() };
    let want = fold::fold(&w.view(), Some(&bias), None, &running, &options).unwrap();
    let wb = ctx.upload("w", w.as_slice().unwrap()).unwrap();
    let bb = ctx.upload("b", &bias).unwrap();
    let (mean, var) = (ctx.upload("mean", &running.mean).unwrap(), ctx.upload("var", &running.var).unwrap());
    let buffers = FoldBuffers {
        weight: wb.slice(..),
        bias: Some(bb.slice(..)),
        weight_out: wb.slice(..),
        bias_out: bb.slice(..),
        affine: None,
        running_mean: mean.slice(..),
        running_var: var.slice(..),
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.encode_fold(&mut encoder, w.shape(), &options, &buffers).unwrap();
    ctx.queue().submit([encoder.finish()]);
    let got = pollster::block_on(ctx.download(&[(&wb, w.len()), (&bb, 8)])).unwrap();
    assert_rel("weight", &got[0], &want.weight.mapv(f64::from).into_raw_vec_and_offset().0, 1e-6);
    assert_rel("bias", &got[1], &want.bias.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), 1e-6);
}

#[test]
fn mismatched_shapes_and_options_are_errors() {
    let ctx = ctx();
    let w = data(&[4, 2, 3], 41, -1.0, 1.0);
    let running = RunningStats::new(4);
    let options = Options { affine: false, ..Options::default() };
    let short = RunningStats::new(3);
    for e in [fold::fold(&w.view(), None, None, &short, &options), ctx.fold_blocking(&w.view(), None, None, &short, &options)] {
        assert!(matches!(&e, Err(Error::ShapeMismatch { what: "running_mean", .. })), "{e:?}");
    }
    let e = fold::fold(&w.view(), Some(&[1.0; 5]), None, &running, &options);
    assert!(matches!(&e, Err(Error::ShapeMismatch { what: "bias", .. })), "{e:?}");
    let flat = data(&[4], 42, -1.0, 1.0);
    let e = ctx.fold_blocking(&flat.view(), None, None, &running, &options);
    assert!(matches!(&e, Err(Error::ShapeMismatch { what: "weight", .. })), "{e:?}");
    let e = fold::fold(&w.view(), None, None, &running, &Options::default());
    assert!(matches!(&e, Err(Error::OptionsMismatch { .. })), "affine without gamma: {e:?}");
    let untracked = Options { track_running_stats: false, ..options };
    let e = ctx.scale_shift_blocking(None, &running, &untracked);
    assert!(matches!(&e, Err(Error::OptionsMismatch { .. })), "no running statistics: {e:?}");
    let g = [1.0f32; 3];
    let e = fold::scale_shift(Some(Affine { gamma: &g[..], beta: Some(&g[..]) }), &running, &Options::default());
    assert!(matches!(&e, Err(Error::ShapeMismatch { what: "gamma", .. })), "{e:?}");

    // Low level: a short output and an output over an input are refused before recording.
    let wb = ctx.upload("w", w.as_slice().unwrap()).unwrap();
    let short_out = ctx.storage("short", w.len() - 1).unwrap();
    let (b, mean, var) =
        (ctx.storage("b", 4).unwrap(), ctx.upload("mean", &running.mean).unwrap(), ctx.upload("var", &running.var).unwrap());
    let buffers = |weight_out| FoldBuffers {
        weight: wb.slice(..),
        bias: None,
        weight_out,
        bias_out: b.slice(..),
        affine: None,
        running_mean: mean.slice(..),
        running_var: var.slice(..),
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let e = ctx.encode_fold(&mut encoder, w.shape(), &options, &buffers(short_out.slice(..)));
    assert!(matches!(&e, Err(Error::BadBuffer { name: "weight_out", .. })), "{e:?}");
    let scale = ctx.storage("scale", 4).unwrap();
    let ss = ScaleShiftBuffers {
        affine: None,
        running_mean: mean.slice(..),
        running_var: var.slice(..),
        scale: scale.slice(..),
        shift: mean.slice(..),
    };
    let e = ctx.encode_scale_shift(&mut encoder, 4, &options, &ss);
    assert!(matches!(&e, Err(Error::BadBuffer { name: "shift", .. })), "{e:?}");
    ctx.queue().submit([encoder.finish()]);
}
