//! Half-precision tensors (docs/SPEC.md, Half precision): f16 and bf16 `x`,
//! `y`, `dy`, `dx` (and an epilogue's residual, `z`, `dresidual`) with f32
//! statistics and parameters, for batch norm and the normalization family,
//! both layouts and both item widths, through WGSL's `f16` where the adapter
//! has `SHADER_F16` and through 32-bit words everywhere.
//!
//! The reference runs in f64 on the same half-precision inputs; every output
//! value must be within one unit in the last place of its dtype plus the f32
//! bound (1e-5 of the output's root mean square).

mod common;

use std::sync::{Arc, OnceLock};

use common::{channel_data, ctx, rng, typical_data, vector};
use half::{bf16, f16};
use ndarray::ArrayD;
use rand::Rng;
use wgpu_batchnorm::{
    reference, Activation, BackwardStats, ContextOptions, Dtype, Epilogue, Error, GpuContext, Layout, Norm, NormBackwardBuffers,
    NormBackwardInputs, NormForwardBuffers, NormInferenceBuffers, NormInputs, NormParamGradBuffers, NormStats, Options, RunningBuffers,
    Shape,
};

const HALVES: [Dtype; 2] = [Dtype::F16, Dtype::Bf16];

/// The shared context, and where it stores f16 through `SHADER_F16`, one
/// without it, so that both f16 paths run on the adapter.
fn contexts() -> Vec<Arc<GpuContext>> {
    static WORDS: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    let words = WORDS.get_or_init(|| {
        ctx().shader_f16().then(|| {
            let options = ContextOptions { shader_f16: false, ..ContextOptions::from_env() };
            Arc::new(pollster::block_on(GpuContext::with_options(&options)).expect("adapter"))
        })
    });
    std::iter::once(ctx()).chain(words.iter().cloned()).collect()
}

/// `v` rounded to `dtype` (to nearest, ties to even), as f32.
fn round(dtype: Dtype, v: f32) -> f32 {
    match dtype {
        Dtype::F32 => v,
        Dtype::F16 => f16::from_f32(v).to_f32(),
        Dtype::Bf16 => bf16::from_f32(v).to_f32(),
    }
}

fn rounded(dtype: Dtype, a: &ArrayD<f32>) -> ArrayD<f32> {
    a.mapv(|v| round(dtype, v))
}

/// The spacing of `dtype`'s values at magnitude `v`.
fn ulp(dtype: Dtype, v: f64) -> f64 {
    let (mantissa, min_exp) = match dtype {
        Dtype::F32 => (23, -126),
        Dtype::F16 => (10, -14),
        Dtype::Bf16 => (7, -126),
    };
    let exp = if v == 0.0 { min_exp } else { (v.abs().log2().floor() as i32).max(min_exp) };
    2f64.powi(exp - mantissa)
}

/// The bytes of `data` stored as `dtype`, padded to whole words.
fn encode(dtype: Dtype, data: &[f32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = match dtype {
        Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => data.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        Dtype::Bf16 => data.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
    };
    bytes.resize(dtype.tensor_bytes(data.len()) as usize, 0);
    bytes
}

fn decode(dtype: Dtype, bytes: &[u8], n: usize) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes.chunks_exact(4).take(n).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).take(n).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::Bf16 => bytes.chunks_exact(2).take(n).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    }
}

fn buffer(ctx: &GpuContext, bytes: &[u8]) -> wgpu::Buffer {
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("half test"),
        size: bytes.len().max(4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(&buffer, 0, bytes);
    buffer
}

fn tensor(ctx: &GpuContext, dtype: Dtype, a: &ArrayD<f32>) -> wgpu::Buffer {
    buffer(ctx, &encode(dtype, a.as_slice().expect("standard layout")))
}

fn empty(ctx: &GpuContext, dtype: Dtype, numel: usize) -> wgpu::Buffer {
    buffer(ctx, &vec![0; dtype.tensor_bytes(numel) as usize])
}

fn bytes_of(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Vec<u8> {
    let words = (buffer.size() / 4) as usize;
    let values = pollster::block_on(ctx.download(&[(buffer, words)])).unwrap();
    values[0].iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()
}

fn read(ctx: &GpuContext, dtype: Dtype, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    decode(dtype, &bytes_of(ctx, buffer), n)
}

fn read_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    read(ctx, Dtype::F32, buffer, n)
}

fn submit(ctx: &GpuContext, record: impl FnOnce(&mut wgpu::CommandEncoder) -> wgpu_batchnorm::Result<()>) {
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    record(&mut encoder).unwrap();
    ctx.queue().submit([encoder.finish()]);
}

/// Each value within one unit in the last place of `dtype` plus 1e-5 of the
/// reference's root mean square.
fn assert_close(what: &str, dtype: Dtype, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len() as f64).sqrt();
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let allowed = ulp(dtype, w.abs().max(f64::from(g).abs())) + 1e-5 * rms;
        let excess = (f64::from(g) - w).abs() / allowed;
        assert!(!excess.is_nan(), "{what}[{i}]: got {g}, want {w}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let (excess, i) = worst;
    assert!(excess <= 1.0, "{what} ({dtype:?})[{i}]: got {}, want {}, {excess:.2} times the bound", got[i], want[i]);
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| f64::from(v)).collect()
}

fn f32_buffer(ctx: &GpuContext, v: &[f32]) -> wgpu::Buffer {
    tensor(ctx, Dtype::F32, &ArrayD::from_shape_vec(vec![v.len()], v.to_vec()).unwrap())
}

/// Both layouts and both item widths: odd `S` and `C` take scalar items (whose
/// stores share 32-bit words), multiples of four vec4 items.
fn shapes() -> Vec<Shape> {
    [
        (&[4, 6, 5, 7][..], Layout::ChannelsFirst),
        (&[4, 8, 4, 4][..], Layout::ChannelsFirst),
        (&[3, 5, 7, 5][..], Layout::ChannelsLast),
        (&[2, 3, 3, 8][..], Layout::ChannelsLast),
        (&[33, 12][..], Layout::ChannelsFirst),
    ]
    .into_iter()
    .map(|(d, l)| Shape::new(d, l).unwrap())
    .collect()
}

/// Every f16 and bf16 word unpacks exactly and f32 values pack as the `half`
/// crate rounds them (to nearest, ties to even): values of the dtype, ties
/// between neighbours and their f32 neighbours, subnormals, overflow, inf and
/// NaN, and random bit patterns.
#[test]
fn word_conversions_match_the_half_crate() {
    let ctx = ctx();
    for (dtype, module) in
        [(Dtype::F16, include_str!("../shaders/storage_f16_words.wgsl")), (Dtype::Bf16, include_str!("../shaders/storage_bf16_words.wgsl"))]
    {
        let from_bits = |b: u16| match dtype {
            Dtype::F16 => f16::from_bits(b).to_f32(),
            _ => bf16::from_bits(b).to_f32(),
        };
        let to_bits = |v: f32| match dtype {
            Dtype::F16 => f16::from_f32(v).to_bits(),
            _ => bf16::from_f32(v).to_bits(),
        };
        let mut floats: Vec<f32> = Vec::new();
        for b in 0..=u16::MAX {
            let v = from_bits(b);
            let next = from_bits(b.wrapping_add(1));
            floats.push(v);
            if v.is_finite() && next.is_finite() && (next > v) == (v >= 0.0) && b & 0x7fff != 0x7fff {
                let tie = ((f64::from(v) + f64::from(next)) / 2.0) as f32;
                floats.extend([tie, f32::from_bits(tie.to_bits() - 1), f32::from_bits(tie.to_bits() + 1)]);
            }
        }
        floats.extend([65504.0, 65519.99, 65520.0, -65520.0, 1e6, f32::MAX, -f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        floats.extend([1e-30, -1e-30, 5.9604645e-8, 2.9802322e-8, 2.9802326e-8, 8.940697e-8]);
        let mut r = rng(7);
        floats.extend((0..20_000).map(|_| f32::from_bits(r.random())));
        if floats.len() % 2 == 1 {
            floats.push(0.0);
        }
        let words: Vec<u32> = (0..=u16::MAX as u32 / 2).map(|i| (2 * i) | ((2 * i + 1) << 16)).collect();
        let source = format!(
            "{module}
            @group(0) @binding(0) var<storage, read> words: array<u32>;
            @group(0) @binding(1) var<storage, read_write> unpacked: array<vec2<f32>>;
            @group(0) @binding(2) var<storage, read> floats: array<vec2<f32>>;
            @group(0) @binding(3) var<storage, read_write> packed: array<u32>;
            @compute @workgroup_size(64)
            fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {{
                let i = id.x + id.y * n.x * 64u;
                if (i < arrayLength(&words)) {{ unpacked[i] = unpack_word(words[i]); }}
                if (i < arrayLength(&packed)) {{ packed[i] = pack_word(floats[i]); }}
            }}"
        );
        let device = ctx.device();
        let module =
            device.create_shader_module(wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let word_bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let float_bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let (w, u, f, p) = (
            buffer(&ctx, &word_bytes),
            buffer(&ctx, &vec![0; words.len() * 8]),
            buffer(&ctx, &float_bytes),
            buffer(&ctx, &vec![0; floats.len() * 2]),
        );
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: w.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: u.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: f.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: p.as_entire_binding() },
            ],
        });
        let items = words.len().max(floats.len() / 2) as u32;
        submit(&ctx, |encoder| {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(items.div_ceil(64), 1, 1);
            Ok(())
        });
        let unpacked = read_f32(&ctx, &u, words.len() * 2);
        for (b, got) in unpacked.iter().enumerate() {
            let want = from_bits(b as u16);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{dtype:?} {b:#06x}: unpacked {got:e}, want {want:e}"
            );
        }
        let packed = bytes_of(&ctx, &p);
        for (i, v) in floats.iter().enumerate() {
            let got = u16::from_le_bytes([packed[2 * i], packed[2 * i + 1]]);
            let want = to_bits(*v);
            let both_nan = from_bits(got).is_nan() && from_bits(want).is_nan();
            assert!(got == want || both_nan, "{dtype:?} {v:e} ({:#010x}): packed {got:#06x}, want {want:#06x}", v.to_bits());
        }
    }
}

/// Training forward (running statistics updated), inference forward and
/// backward with parameter gradients, each dtype, both f16 paths.
#[test]
fn batch_norm_matches_the_reference_on_half_inputs() {
    for ctx in contexts() {
        for dtype in HALVES {
            for shape in shapes() {
                let (c, n) = (shape.channels(), shape.numel());
                let label = |what: &str| format!("{what} {:?} {:?} f16 {}", shape.dims(), shape.layout(), ctx.shader_f16());
                let x = rounded(dtype, &typical_data(&shape, 11));
                let dy = rounded(dtype, &channel_data(&shape, 12, |_| (0.0, 1.0)));
                let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
                let options = Options { dtype, momentum: wgpu_batchnorm::Momentum::Exponential(1.0), ..Options::default() };
                let (xb, yb, dyb, dxb) = (tensor(&ctx, dtype, &x), empty(&ctx, dtype, n), tensor(&ctx, dtype, &dy), empty(&ctx, dtype, n));
                let (gb, bb) = (f32_buffer(&ctx, &gamma), f32_buffer(&ctx, &beta));
                let (mean, invstd, rm, rv) = (
                    f32_buffer(&ctx, &vec![0.0; c]),
                    f32_buffer(&ctx, &vec![0.0; c]),
                    f32_buffer(&ctx, &vec![0.0; c]),
                    f32_buffer(&ctx, &vec![1.0; c]),
                );
                let op = Norm::Batch(shape.clone());
                submit(&ctx, |e| {
                    let running = Some(RunningBuffers { mean: rm.slice(..), var: rv.slice(..), num_batches_tracked: 0 });
                    let b = NormForwardBuffers {
                        x: xb.slice(..),
                        y: yb.slice(..),
                        stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
                        gamma: Some(gb.slice(..)),
                        beta: Some(bb.slice(..)),
                        running,
                        residual: None,
                        workspace: None,
                    };
                    ctx.encode_norm(e, &op, &options, &b)
                });
                let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                assert_close(&label("y"), dtype, &read(&ctx, dtype, &yb, n), f.y.as_slice().unwrap());
                common::assert_rel(&label("save_mean"), &read_f32(&ctx, &mean, c), &f.save_mean, 1e-5);
                common::assert_rel(&label("save_invstd"), &read_f32(&ctx, &invstd, c), &f.save_invstd, 1e-5);
                let stats = reference::batch_stats(&shape, &x.view()).unwrap();
                let m = shape.per_channel() as f64;
                let unbiased: Vec<f64> = stats.var.iter().map(|v| v * m / (m - 1.0)).collect();
                common::assert_rel(&label("running_var"), &read_f32(&ctx, &rv, c), &unbiased, 1e-5);

                let (running_mean, running_var) = (f32s(&stats.mean), f32s(&unbiased));
                let inferred =
                    reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running_mean, &running_var, 1e-5)
                        .unwrap();
                let (rm, rv) = (f32_buffer(&ctx, &running_mean), f32_buffer(&ctx, &running_var));
                submit(&ctx, |e| {
                    let b = NormInferenceBuffers {
                        x: xb.slice(..),
                        y: yb.slice(..),
                        gamma: Some(gb.slice(..)),
                        beta: Some(bb.slice(..)),
                        running_mean: rm.slice(..),
                        running_var: rv.slice(..),
                        residual: None,
                        workspace: None,
                    };
                    ctx.encode_norm_inference(e, &op, &options, &b)
                });
                assert_close(&label("inference y"), dtype, &read(&ctx, dtype, &yb, n), inferred.as_slice().unwrap());

                // The backward at the reference's statistics from the raw data.
                let (mean, invstd) = (f32_buffer(&ctx, &f32s(&f.save_mean)), f32_buffer(&ctx, &f32s(&f.save_invstd)));
                let (dgamma, dbeta) = (f32_buffer(&ctx, &vec![0.0; c]), f32_buffer(&ctx, &vec![0.0; c]));
                submit(&ctx, |e| {
                    let b = NormBackwardBuffers {
                        dy: dyb.slice(..),
                        x: xb.slice(..),
                        dx: dxb.slice(..),
                        stats: BackwardStats::Saved(NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) }),
                        gamma: Some(gb.slice(..)),
                        param_grads: Some(NormParamGradBuffers { dgamma: dgamma.slice(..), dbeta: Some(dbeta.slice(..)) }),
                        z: None,
                        dresidual: None,
                        workspace: None,
                    };
                    ctx.encode_norm_backward(e, &op, &options, &b)
                });
                let g = reference::backward_train(&shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
                assert_close(&label("dx"), dtype, &read(&ctx, dtype, &dxb, n), g.dx.as_slice().unwrap());
                common::assert_rel(&label("dgamma"), &read_f32(&ctx, &dgamma, c), &g.dgamma, 1e-5);
                common::assert_rel(&label("dbeta"), &read_f32(&ctx, &dbeta, c), &g.dbeta, 1e-5);
            }
        }
    }
}

/// The fused ReLU with a residual, forward and backward (`dresidual`
/// written), in half precision: ResNet's block tail in mixed precision.
#[test]
fn fused_relu_with_residual_matches_the_reference_on_half_inputs() {
    for ctx in contexts() {
        for dtype in HALVES {
            for shape in shapes() {
                let (c, n) = (shape.channels(), shape.numel());
                let x = rounded(dtype, &typical_data(&shape, 21));
                let r = rounded(dtype, &channel_data(&shape, 22, |_| (0.0, 1.0)));
                let dz = rounded(dtype, &channel_data(&shape, 23, |_| (0.0, 1.0)));
                let (gamma, beta) = (vector(c, 3, 0.5, 1.5), vector(c, 4, -1.0, 1.0));
                let epilogue = Epilogue { activation: Activation::Relu, residual: true };
                let options = Options { dtype, epilogue, track_running_stats: false, ..Options::default() };
                let (xb, rb, zb, dzb) = (tensor(&ctx, dtype, &x), tensor(&ctx, dtype, &r), empty(&ctx, dtype, n), tensor(&ctx, dtype, &dz));
                let (dxb, drb) = (empty(&ctx, dtype, n), empty(&ctx, dtype, n));
                let (gb, bb) = (f32_buffer(&ctx, &gamma), f32_buffer(&ctx, &beta));
                let (mean, invstd) = (f32_buffer(&ctx, &vec![0.0; c]), f32_buffer(&ctx, &vec![0.0; c]));
                let op = Norm::Batch(shape.clone());
                submit(&ctx, |e| {
                    let b = NormForwardBuffers {
                        x: xb.slice(..),
                        y: zb.slice(..),
                        stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
                        gamma: Some(gb.slice(..)),
                        beta: Some(bb.slice(..)),
                        running: None,
                        residual: Some(rb.slice(..)),
                        workspace: None,
                    };
                    ctx.encode_norm(e, &op, &options, &b)
                });
                let f = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                let want = reference::epilogue(&f.y.view(), Some(&r.view()), Activation::Relu).unwrap();
                let z = read(&ctx, dtype, &zb, n);
                assert_close(&format!("z {:?}", shape.dims()), dtype, &z, want.as_slice().unwrap());
                let (mean, invstd) = (f32_buffer(&ctx, &f32s(&f.save_mean)), f32_buffer(&ctx, &f32s(&f.save_invstd)));
                submit(&ctx, |e| {
                    let b = NormBackwardBuffers {
                        dy: dzb.slice(..),
                        x: xb.slice(..),
                        dx: dxb.slice(..),
                        stats: BackwardStats::Saved(NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) }),
                        gamma: Some(gb.slice(..)),
                        param_grads: None,
                        z: Some(zb.slice(..)),
                        dresidual: Some(drb.slice(..)),
                        workspace: None,
                    };
                    ctx.encode_norm_backward(e, &op, &options, &b)
                });
                // The mask is the GPU's z, the backward's input.
                let z = ArrayD::from_shape_vec(shape.dims(), z).unwrap();
                let dy = reference::epilogue_grad(&dz.view(), &z.view(), Activation::Relu).unwrap();
                let x64 = x.mapv(f64::from);
                let g = reference::backward_train(&shape, &dy.view(), &x64.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
                assert_close(&format!("dx {:?}", shape.dims()), dtype, &read(&ctx, dtype, &dxb, n), g.dx.as_slice().unwrap());
                assert_close(&format!("dresidual {:?}", shape.dims()), dtype, &read(&ctx, dtype, &drb, n), dy.as_slice().unwrap());
            }
        }
    }
}

/// Runs a family op's forward on `x` and its backward on `dy` at the
/// reference's statistics `want`, through the slice calls, and checks what
/// they wrote against `want` and `grads`. `beta` is given exactly for the ops
/// that center (all but RMS norm).
#[allow(clippy::too_many_arguments)]
fn check_norm(
    ctx: &GpuContext,
    what: &str,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    (gamma, beta): (&[f32], Option<&[f32]>),
    (want, grads): (&reference::NormForward, &reference::NormGrads),
    dtype: Dtype,
    forward: impl FnOnce(&mut wgpu::CommandEncoder, &NormForwardBuffers<'_>) -> wgpu_batchnorm::Result<()>,
    backward: impl FnOnce(&mut wgpu::CommandEncoder, &NormBackwardBuffers<'_>) -> wgpu_batchnorm::Result<()>,
) {
    let (n, p, rows, centered) = (x.len(), gamma.len(), want.rstd.len(), beta.is_some());
    let (xb, yb, dyb, dxb) = (tensor(ctx, dtype, x), empty(ctx, dtype, n), tensor(ctx, dtype, dy), empty(ctx, dtype, n));
    let (mean, rstd) = (f32_buffer(ctx, &vec![0.0; rows]), f32_buffer(ctx, &vec![0.0; rows]));
    let (gb, bb) = (f32_buffer(ctx, gamma), beta.map(|b| f32_buffer(ctx, b)));
    let (dgamma, dbeta) = (f32_buffer(ctx, &vec![0.0; p]), f32_buffer(ctx, &vec![0.0; p]));
    submit(ctx, |e| {
        let b = NormForwardBuffers {
            x: xb.slice(..),
            y: yb.slice(..),
            stats: NormStats { mean: centered.then(|| mean.slice(..)), rstd: rstd.slice(..) },
            gamma: Some(gb.slice(..)),
            beta: bb.as_ref().map(|b| b.slice(..)),
            running: None,
            residual: None,
            workspace: None,
        };
        forward(e, &b)
    });
    assert_close(&format!("{what} y"), dtype, &read(ctx, dtype, &yb, n), want.y.as_slice().unwrap());
    if centered {
        common::assert_rel(&format!("{what} mean"), &read_f32(ctx, &mean, rows), &want.mean, 1e-5);
    }
    common::assert_rel(&format!("{what} rstd"), &read_f32(ctx, &rstd, rows), &want.rstd, 1e-5);
    let (ref_mean, ref_rstd) = (f32_buffer(ctx, &f32s(&want.mean)), f32_buffer(ctx, &f32s(&want.rstd)));
    submit(ctx, |e| {
        let b = NormBackwardBuffers {
            dy: dyb.slice(..),
            x: xb.slice(..),
            dx: dxb.slice(..),
            stats: NormStats { mean: centered.then(|| ref_mean.slice(..)), rstd: ref_rstd.slice(..) }.into(),
            gamma: Some(gb.slice(..)),
            param_grads: Some(NormParamGradBuffers { dgamma: dgamma.slice(..), dbeta: centered.then(|| dbeta.slice(..)) }),
            z: None,
            dresidual: None,
            workspace: None,
        };
        backward(e, &b)
    });
    assert_close(&format!("{what} dx"), dtype, &read(ctx, dtype, &dxb, n), grads.dx.as_slice().unwrap());
    common::assert_rel(&format!("{what} dgamma"), &read_f32(ctx, &dgamma, p), &grads.dgamma, 1e-5);
    if centered {
        common::assert_rel(&format!("{what} dbeta"), &read_f32(ctx, &dbeta, p), &grads.dbeta, 1e-5);
    }
}

/// Group norm (both layouts, both widths), instance norm, layer norm and RMS
/// norm, forward and backward, on half inputs.
#[test]
fn the_normalization_family_matches_the_reference_on_half_inputs() {
    for ctx in contexts() {
        for dtype in HALVES {
            for shape in [
                Shape::new(&[3, 6, 5, 3], Layout::ChannelsFirst).unwrap(),
                Shape::new(&[2, 8, 4, 4], Layout::ChannelsFirst).unwrap(),
                Shape::new(&[3, 5, 3, 6], Layout::ChannelsLast).unwrap(),
                Shape::new(&[2, 4, 4, 8], Layout::ChannelsLast).unwrap(),
            ] {
                let c = shape.channels();
                let x = rounded(dtype, &typical_data(&shape, 31));
                let dy = rounded(dtype, &channel_data(&shape, 32, |_| (0.0, 1.0)));
                let (gamma, beta) = (vector(c, 5, 0.5, 1.5), vector(c, 6, -1.0, 1.0));
                let what = format!("{:?} {:?} {dtype:?} f16 {}", shape.dims(), shape.layout(), ctx.shader_f16());
                let groups = 2;
                let g64 = f64s(&gamma);
                let want = reference::group_norm(&shape, &x.view(), groups, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                let grads = reference::group_norm_backward(&shape, &dy.view(), &x.view(), groups, &want.mean, &want.rstd, Some(&g64[..]));
                let op = Norm::Group { shape: shape.clone(), groups };
                let options = Options { dtype, ..op.default_options() };
                check_norm(
                    &ctx,
                    &format!("group norm {what}"),
                    &x,
                    &dy,
                    (&gamma, Some(&beta)),
                    (&want, &grads.unwrap()),
                    dtype,
                    |e, b| ctx.encode_norm(e, &op, &options, b),
                    |e, b| ctx.encode_norm_backward(e, &op, &options, b),
                );

                let want = reference::instance_norm(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                let grads = reference::instance_norm_backward(&shape, &dy.view(), &x.view(), &want.mean, &want.rstd, Some(&g64[..]));
                let op = Norm::Instance(shape.clone());
                let options = Options { dtype, affine: true, ..op.default_options() };
                check_norm(
                    &ctx,
                    &format!("instance norm {what}"),
                    &x,
                    &dy,
                    (&gamma, Some(&beta)),
                    (&want, &grads.unwrap()),
                    dtype,
                    |e, b| ctx.encode_norm(e, &op, &options, b),
                    |e, b| ctx.encode_norm_backward(e, &op, &options, b),
                );

                // Layer and RMS norm over the trailing two dims.
                let dims = shape.dims();
                let normalized = &dims[2..];
                let p: usize = normalized.iter().product();
                let (gamma, beta) = (vector(p, 7, 0.5, 1.5), vector(p, 8, -1.0, 1.0));
                let g64 = f64s(&gamma);
                let want = reference::layer_norm(&x.view(), normalized, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
                let grads = reference::layer_norm_backward(&dy.view(), &x.view(), normalized, &want.mean, &want.rstd, Some(&g64[..]));
                let op = Norm::Layer { dims: dims.to_vec(), normalized_shape: normalized.to_vec() };
                let options = Options { dtype, ..op.default_options() };
                check_norm(
                    &ctx,
                    &format!("layer norm {what}"),
                    &x,
                    &dy,
                    (&gamma, Some(&beta)),
                    (&want, &grads.unwrap()),
                    dtype,
                    |e, b| ctx.encode_norm(e, &op, &options, b),
                    |e, b| ctx.encode_norm_backward(e, &op, &options, b),
                );

                let want = reference::rms_norm(&x.view(), normalized, Some(&gamma[..]), f64::from(f32::EPSILON)).unwrap();
                let grads = reference::rms_norm_backward(&dy.view(), &x.view(), normalized, &want.rstd, Some(&g64[..]));
                let op = Norm::Rms { dims: dims.to_vec(), normalized_shape: normalized.to_vec() };
                let options = Options { dtype, ..op.default_options() };
                check_norm(
                    &ctx,
                    &format!("RMS norm {what}"),
                    &x,
                    &dy,
                    (&gamma, None),
                    (&want, &grads.unwrap()),
                    dtype,
                    |e, b| ctx.encode_norm(e, &op, &options, b),
                    |e, b| ctx.encode_norm_backward(e, &op, &options, b),
                );
            }
        }
    }
}

/// f16 inputs near f16's largest value (65504), whose squares overflow f16
/// many times over, and bf16 inputs at a large offset: the f32 statistics
/// hold them, and `y` is as accurate as anywhere.
#[test]
fn statistics_do_not_overflow_near_the_half_range() {
    let ctx = ctx();
    for (dtype, stats) in
        [(Dtype::F16, (62000.0, 1500.0)), (Dtype::F16, (-30000.0, 20000.0)), (Dtype::Bf16, (1e6, 1e3)), (Dtype::Bf16, (2e4, 300.0))]
    {
        let limit = if dtype == Dtype::F16 { 65504.0 } else { f32::MAX };
        for shape in [Shape::new(&[8, 3, 9, 7], Layout::ChannelsFirst).unwrap(), Shape::new(&[4, 6, 6, 4], Layout::ChannelsLast).unwrap()] {
            let (c, n) = (shape.channels(), shape.numel());
            let x = channel_data(&shape, 41, |_| stats).mapv(|v| round(dtype, v.clamp(-limit, limit)));
            let options = Options { dtype, affine: false, track_running_stats: false, ..Options::default() };
            let (xb, yb) = (tensor(&ctx, dtype, &x), empty(&ctx, dtype, n));
            let (mean, invstd) = (f32_buffer(&ctx, &vec![0.0; c]), f32_buffer(&ctx, &vec![0.0; c]));
            let op = Norm::Batch(shape.clone());
            submit(&ctx, |e| {
                let b = NormForwardBuffers {
                    x: xb.slice(..),
                    y: yb.slice(..),
                    stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
                    gamma: None,
                    beta: None,
                    running: None,
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm(e, &op, &options, &b)
            });
            let f = reference::forward_train::<f32, f32>(&shape, &x.view(), None, None, 1e-5).unwrap();
            let what = format!("{dtype:?} {stats:?} {:?}", shape.layout());
            assert_close(&format!("y {what}"), dtype, &read(&ctx, dtype, &yb, n), f.y.as_slice().unwrap());
            common::assert_rel(&format!("save_mean {what}"), &read_f32(&ctx, &mean, c), &f.save_mean, 1e-5);
            common::assert_rel(&format!("save_invstd {what}"), &read_f32(&ctx, &invstd, c), &f.save_invstd, 1e-5);
        }
    }
}

/// Scalar items of an odd-sized half tensor share their last word with the
/// padding: a kernel writes its own halves and leaves the rest of the word,
/// and the words after the slice, as they were.
#[test]
fn an_odd_tensor_keeps_the_half_word_after_it() {
    for ctx in contexts() {
        for dtype in HALVES {
            let shape = Shape::new(&[3, 3, 5], Layout::ChannelsFirst).unwrap();
            let n = shape.numel();
            let x = rounded(dtype, &typical_data(&shape, 61));
            let xb = tensor(&ctx, dtype, &x);
            // y: the tensor's 45 halves, then a sentinel half and a sentinel word.
            let sentinel = 0xabcd_u16;
            let mut init = encode(dtype, &vec![0.0; n]);
            init[2 * n..2 * n + 2].copy_from_slice(&sentinel.to_le_bytes());
            init.extend(0xdead_beef_u32.to_le_bytes());
            let yb = buffer(&ctx, &init);
            let options = Options { dtype, affine: false, track_running_stats: false, ..Options::default() };
            let (mean, invstd) = (f32_buffer(&ctx, &[0.0; 3]), f32_buffer(&ctx, &[0.0; 3]));
            let op = Norm::Batch(shape.clone());
            submit(&ctx, |e| {
                let b = NormForwardBuffers {
                    x: xb.slice(..),
                    y: yb.slice(..dtype.tensor_bytes(n)),
                    stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
                    gamma: None,
                    beta: None,
                    running: None,
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm(e, &op, &options, &b)
            });
            let bytes = bytes_of(&ctx, &yb);
            assert_eq!(u16::from_le_bytes([bytes[2 * n], bytes[2 * n + 1]]), sentinel, "{dtype:?}: the padding half");
            assert_eq!(&bytes[2 * n + 2..], &0xdead_beef_u32.to_le_bytes(), "{dtype:?}: the word after");
            let f = reference::forward_train::<f32, f32>(&shape, &x.view(), None, None, 1e-5).unwrap();
            assert_close(&format!("y {dtype:?}"), dtype, &decode(dtype, &bytes, n), f.y.as_slice().unwrap());
        }
    }
}

/// A half tensor's slice holds its values rounded up to whole words, and
/// the options must name the arrays' dtype: in the calls and in the layers.
#[test]
fn half_slices_are_checked_and_the_arrays_must_match_the_dtype() {
    let ctx = ctx();
    let shape = Shape::new(&[2, 3, 5], Layout::ChannelsFirst).unwrap();
    let options = Options { dtype: Dtype::F16, affine: false, track_running_stats: false, ..Options::default() };
    // 30 halves: 60 bytes.
    let short = buffer(&ctx, &[0; 56]);
    let (xb, mean, invstd) = (buffer(&ctx, &[0; 60]), f32_buffer(&ctx, &[0.0; 3]), f32_buffer(&ctx, &[0.0; 3]));
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let b = NormForwardBuffers {
        x: xb.slice(..),
        y: short.slice(..),
        stats: NormStats { mean: Some(mean.slice(..)), rstd: invstd.slice(..) },
        gamma: None,
        beta: None,
        running: None,
        residual: None,
        workspace: None,
    };
    let batch = Norm::Batch(shape.clone());
    let err = ctx.encode_norm(&mut encoder, &batch, &options, &b).unwrap_err();
    assert!(matches!(err, Error::BadBuffer { name: "y", .. }), "{err}");
    let x = ArrayD::<f32>::zeros(shape.dims());
    let err = ctx.norm_blocking(&batch, x.view(), None, None, None, &options).unwrap_err();
    assert!(matches!(err, Error::OptionsMismatch { what: "dtype", .. }), "{err}");
    let mut bn = wgpu_batchnorm::BatchNorm::new(ctx.clone(), 3, options).unwrap();
    let err = bn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap_err();
    assert!(matches!(err, Error::OptionsMismatch { what: "dtype", .. }), "{err}");
    let op = Norm::Layer { dims: x.shape().to_vec(), normalized_shape: vec![5] };
    let ln = Options { dtype: Dtype::Bf16, affine: false, ..op.default_options() };
    let err = ctx.norm_blocking(&op, x.view(), None, None, None, &ln).unwrap_err();
    assert!(matches!(err, Error::OptionsMismatch { what: "dtype", .. }), "{err}");
    let mut layer = wgpu_batchnorm::LayerNorm::new(ctx.clone(), &[5], ln).unwrap();
    let err = layer.forward_blocking(&x.view()).unwrap_err();
    assert!(matches!(err, Error::OptionsMismatch { what: "dtype", .. }), "{err}");
}

fn to_f32<E: wgpu_batchnorm::Element>(a: &ArrayD<E>) -> Vec<f32> {
    a.iter().map(|&v| Into::<f64>::into(v) as f32).collect()
}

/// Batch norm's `ndarray` calls on f16 and bf16 arrays: training forward
/// (running statistics), inference, backward, and the fused ReLU with a
/// residual forward and backward, against the reference on the same values.
#[test]
fn ndarray_calls_take_half_arrays() {
    fn run<E: wgpu_batchnorm::Element>(ctx: &GpuContext, from: fn(f32) -> E) {
        let dtype = E::DTYPE;
        for shape in [Shape::new(&[4, 6, 5, 7], Layout::ChannelsFirst).unwrap(), Shape::new(&[2, 3, 3, 8], Layout::ChannelsLast).unwrap()] {
            let c = shape.channels();
            let (xf, dyf) = (typical_data(&shape, 71), channel_data(&shape, 72, |_| (0.0, 1.0)));
            let (x, dy) = (xf.mapv(from), dyf.mapv(from));
            let (xr, dyr) = (rounded(dtype, &xf), rounded(dtype, &dyf));
            let (gamma, beta) = (vector(c, 9, 0.5, 1.5), vector(c, 10, -1.0, 1.0));
            let op = Norm::Batch(shape.clone());
            let options = Options { dtype, momentum: wgpu_batchnorm::Momentum::Exponential(1.0), ..Options::default() };
            let mut running = wgpu_batchnorm::RunningStats::new(c);
            let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), Some(&mut running), &options).unwrap();
            let f = reference::forward_train(&shape, &xr.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            let what = format!("{dtype:?} {:?} {:?}", shape.dims(), shape.layout());
            assert_close(&format!("y {what}"), dtype, &to_f32(&out.y), f.y.as_slice().unwrap());
            common::assert_rel(&format!("save_mean {what}"), out.mean.as_deref().unwrap(), &f.save_mean, 1e-5);

            let y = ctx.norm_inference_blocking(&op, x.view(), Some(&gamma), Some(&beta), &running, &options).unwrap();
            let want =
                reference::forward_inference(&shape, &xr.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)
                    .unwrap();
            assert_close(&format!("inference y {what}"), dtype, &to_f32(&y), want.as_slice().unwrap());

            let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
            let (mean, invstd) = (f32s(&f.save_mean), f32s(&f.save_invstd));
            let stats = BackwardStats::Saved(NormStats { mean: Some(&mean[..]), rstd: &invstd[..] });
            let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
            let want = reference::backward_train(&shape, &dyr.view(), &xr.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
            assert_close(&format!("dx {what}"), dtype, &to_f32(&g.dx), want.dx.as_slice().unwrap());
            common::assert_rel(&format!("dgamma {what}"), g.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);

            let epilogue = Epilogue { activation: Activation::Relu, residual: true };
            let options = Options { epilogue, track_running_stats: false, ..options };
            let residual = dy.clone();
            let inputs = NormInputs { x: x.view(), residual: Some(residual.view()) };
            let z = ctx.norm_blocking(&op, inputs, Some(&gamma), Some(&beta), None, &options).unwrap().y;
            let want = reference::epilogue(&f.y.view(), Some(&dyr.view()), Activation::Relu).unwrap();
            assert_close(&format!("z {what}"), dtype, &to_f32(&z), want.as_slice().unwrap());
            let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: Some(z.view()) };
            let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
            let zf = ArrayD::from_shape_vec(shape.dims(), to_f32(&z)).unwrap();
            let masked = reference::epilogue_grad(&dyr.view(), &zf.view(), Activation::Relu).unwrap();
            let x64 = xr.mapv(f64::from);
            let want =
                reference::backward_train(&shape, &masked.view(), &x64.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
            assert_close(&format!("epilogue dx {what}"), dtype, &to_f32(&g.dx), want.dx.as_slice().unwrap());
            assert_close(&format!("dresidual {what}"), dtype, &to_f32(g.dresidual.as_ref().unwrap()), masked.as_slice().unwrap());
        }
        // The options must say the arrays' dtype.
        let x = ArrayD::from_elem(vec![2, 3, 4], from(1.0));
        let wrong = Options { dtype: Dtype::F32, affine: false, track_running_stats: false, ..Options::default() };
        let op = Norm::Batch(Shape::new(x.shape(), Layout::ChannelsFirst).unwrap());
        let err = ctx.norm_blocking(&op, x.view(), None, None, None, &wrong).unwrap_err();
        assert!(matches!(err, Error::OptionsMismatch { what: "dtype", .. }), "{err}");
    }
    for ctx in contexts() {
        run(&ctx, f16::from_f32);
        run(&ctx, bf16::from_f32);
    }
}

/// The normalization family's `ndarray` calls on f16 and bf16 arrays: group
/// norm (channels-last), instance norm, layer norm and RMS norm, forward and
/// backward, against the reference on the same values.
#[test]
fn the_familys_ndarray_calls_take_half_arrays() {
    fn run<E: wgpu_batchnorm::Element>(ctx: &GpuContext, from: fn(f32) -> E) {
        let dtype = E::DTYPE;
        let shape = Shape::new(&[3, 5, 3, 6], Layout::ChannelsLast).unwrap();
        let (xf, dyf) = (typical_data(&shape, 81), channel_data(&shape, 82, |_| (0.0, 1.0)));
        let (x, dy) = (xf.mapv(from), dyf.mapv(from));
        let (xr, dyr) = (rounded(dtype, &xf), rounded(dtype, &dyf));
        let c = shape.channels();
        let (gamma, beta) = (vector(c, 11, 0.5, 1.5), vector(c, 12, -1.0, 1.0));
        let g64 = f64s(&gamma);
        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
        let check = |what: &str, out: &wgpu_batchnorm::NormOutput<E>, want: &reference::NormForward| {
            assert_close(&format!("{what} {dtype:?} y"), dtype, &to_f32(&out.y), want.y.as_slice().unwrap());
            common::assert_rel(&format!("{what} {dtype:?} rstd"), &out.rstd, &want.rstd, 1e-5);
        };
        let check_grads = |what: &str, got: &wgpu_batchnorm::Gradients<E>, want: &reference::NormGrads| {
            assert_close(&format!("{what} {dtype:?} dx"), dtype, &to_f32(&got.dx), want.dx.as_slice().unwrap());
            common::assert_rel(&format!("{what} {dtype:?} dgamma"), got.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
        };

        let op = Norm::Group { shape: shape.clone(), groups: 3 };
        let options = Options { dtype, ..op.default_options() };
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let want = reference::group_norm(&shape, &xr.view(), 3, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        check("group norm", &out, &want);
        // The backwards at the reference's statistics from the raw data.
        let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
        let stats = NormStats { mean: Some(&mean[..]), rstd: &rstd[..] };
        let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
        let want = reference::group_norm_backward(&shape, &dyr.view(), &xr.view(), 3, &want.mean, &want.rstd, Some(&g64[..])).unwrap();
        check_grads("group norm", &g, &want);

        let op = Norm::Instance(shape.clone());
        let options = Options { dtype, affine: true, ..op.default_options() };
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let want = reference::instance_norm(&shape, &xr.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        check("instance norm", &out, &want);
        let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
        let stats = NormStats { mean: Some(&mean[..]), rstd: &rstd[..] };
        let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
        let want = reference::instance_norm_backward(&shape, &dyr.view(), &xr.view(), &want.mean, &want.rstd, Some(&g64[..])).unwrap();
        check_grads("instance norm", &g, &want);

        let normalized = &shape.dims()[2..];
        let p: usize = normalized.iter().product();
        let (gamma, beta) = (vector(p, 13, 0.5, 1.5), vector(p, 14, -1.0, 1.0));
        let g64 = f64s(&gamma);
        let op = Norm::Layer { dims: shape.dims().to_vec(), normalized_shape: normalized.to_vec() };
        let options = Options { dtype, ..op.default_options() };
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
        let want = reference::layer_norm(&xr.view(), normalized, Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        check("layer norm", &out, &want);
        let (mean, rstd) = (f32s(&want.mean), f32s(&want.rstd));
        let stats = NormStats { mean: Some(&mean[..]), rstd: &rstd[..] };
        let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
        let want = reference::layer_norm_backward(&dyr.view(), &xr.view(), normalized, &want.mean, &want.rstd, Some(&g64[..])).unwrap();
        check_grads("layer norm", &g, &want);

        let op = Norm::Rms { dims: shape.dims().to_vec(), normalized_shape: normalized.to_vec() };
        let options = Options { dtype, ..op.default_options() };
        let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), None, None, &options).unwrap();
        let want = reference::rms_norm(&xr.view(), normalized, Some(&gamma[..]), f64::from(f32::EPSILON)).unwrap();
        check("RMS norm", &out, &want);
        let rstd = f32s(&want.rstd);
        let stats = NormStats { mean: None, rstd: &rstd[..] };
        let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
        let want = reference::rms_norm_backward(&dyr.view(), &xr.view(), normalized, &want.rstd, Some(&g64[..])).unwrap();
        check_grads("RMS norm", &g, &want);
    }
    for ctx in contexts() {
        run(&ctx, f16::from_f32);
        run(&ctx, bf16::from_f32);
    }
}

/// Half tensors past the device's `max_storage_buffer_binding_size` (a device
/// asked for 64 KiB) run in windows of whole rows: rows of an odd number of
/// halves (222 bytes, 6 bytes, 202 bytes), an odd total, scalar items whose
/// words the atomics share; batch norm forward and backward, and layer norm.
#[test]
fn half_tensors_past_the_binding_limit_run_in_windows() {
    let (device, queue) = common::limited_device(1 << 16);
    let ctx = GpuContext::from_device(device, queue).unwrap();
    fn run<E: wgpu_batchnorm::Element>(ctx: &GpuContext, from: fn(f32) -> E) {
        let dtype = E::DTYPE;
        for shape in [Shape::new(&[301, 3, 37], Layout::ChannelsFirst).unwrap(), Shape::new(&[300, 7, 7, 3], Layout::ChannelsLast).unwrap()]
        {
            assert!(dtype.tensor_bytes(shape.numel()) > 1 << 16, "{:?} fits one binding", shape.dims());
            let c = shape.channels();
            let (xf, dyf) = (typical_data(&shape, 91), channel_data(&shape, 92, |_| (0.0, 1.0)));
            let (x, dy) = (xf.mapv(from), dyf.mapv(from));
            let (xr, dyr) = (rounded(dtype, &xf), rounded(dtype, &dyf));
            let gamma = vector(c, 15, 0.5, 1.5);
            let beta = vector(c, 16, -1.0, 1.0);
            let options = Options { dtype, track_running_stats: false, ..Options::default() };
            let op = Norm::Batch(shape.clone());
            let out = ctx.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options);
            let out = out.unwrap();
            let f = reference::forward_train(&shape, &xr.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            let what = format!("{dtype:?} {:?} {:?}", shape.dims(), shape.layout());
            assert_close(&format!("y {what}"), dtype, &to_f32(&out.y), f.y.as_slice().unwrap());
            let (mean, invstd) = (f32s(&f.save_mean), f32s(&f.save_invstd));
            let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
            let stats = BackwardStats::Saved(NormStats { mean: Some(&mean[..]), rstd: &invstd[..] });
            let g = ctx.norm_backward_blocking(&op, &inputs, stats, Some(&gamma), &options).unwrap();
            let want = reference::backward_train(&shape, &dyr.view(), &xr.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
            assert_close(&format!("dx {what}"), dtype, &to_f32(&g.dx), want.dx.as_slice().unwrap());
            common::assert_rel(&format!("dgamma {what}"), g.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
        }
        let x = typical_data(&Shape::new(&[400, 101], Layout::ChannelsFirst).unwrap(), 93);
        let op = Norm::Layer { dims: x.shape().to_vec(), normalized_shape: vec![101] };
        let options = Options { dtype, affine: false, ..op.default_options() };
        let out = ctx.norm_blocking(&op, x.mapv(from).view(), None, None, None, &options).unwrap();
        let want = reference::layer_norm::<f32, f32>(&rounded(dtype, &x).view(), &[101], None, None, 1e-5).unwrap();
        assert_close(&format!("layer norm y {dtype:?}"), dtype, &to_f32(&out.y), want.y.as_slice().unwrap());
    }
    run(&ctx, f16::from_f32);
    run(&ctx, bf16::from_f32);
}

/// Synchronized batch norm over three ranks (threads, a context each) on f16
/// and bf16 arrays, with uneven batches and a rank without samples: each
/// rank's `y` and `dx` against the reference over the whole (rounded) batch,
/// and `dgamma` the same.
#[test]
fn synchronized_batch_norm_takes_half_arrays() {
    use ndarray::{Axis, Slice};
    use wgpu_batchnorm::Collective;
    fn rank_step<E: wgpu_batchnorm::Element>(rank: wgpu_batchnorm::InProcessRank, from: fn(f32) -> E, shape: Shape, batches: [usize; 3]) {
        let dtype = E::DTYPE;
        let ctx = Arc::new(GpuContext::new_blocking().expect("adapter"));
        let r = rank.rank();
        let c = shape.channels();
        let (xf, dyf) = (typical_data(&shape, 101), channel_data(&shape, 102, |_| (0.0, 1.0)));
        let (xr, dyr) = (rounded(dtype, &xf), rounded(dtype, &dyf));
        let start: usize = batches[..r].iter().sum();
        let mine = Slice::from(start..start + batches[r]);
        let part = |a: &ArrayD<f32>| a.slice_axis(Axis(0), mine).mapv(from);
        let options = Options { dtype, ..Options::default() };
        let mut bn = wgpu_batchnorm::SyncBatchNorm::new(ctx, rank, c, options).unwrap();
        let y = bn.forward_blocking(&part(&xf).view(), shape.layout()).unwrap();
        let g = bn.backward_blocking(&part(&dyf).view()).unwrap();
        let f = reference::forward_train::<f32, f32>(&shape, &xr.view(), None, None, 1e-5).unwrap();
        let want = reference::backward_train::<f32, f64, f32>(&shape, &dyr.view(), &xr.view(), &f.save_mean, &f.save_invstd, None).unwrap();
        let rows = |a: &ArrayD<f64>| a.slice_axis(Axis(0), mine).iter().copied().collect::<Vec<f64>>();
        let what = format!("rank {r} {dtype:?} {:?} {:?}", shape.dims(), shape.layout());
        if batches[r] > 0 {
            assert_close(&format!("y {what}"), dtype, &to_f32(&y), &rows(&f.y));
            assert_close(&format!("dx {what}"), dtype, &to_f32(&g.dx), &rows(&want.dx));
        }
        common::assert_rel(&format!("dgamma {what}"), g.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
    }
    for (dims, layout) in [(vec![6, 5, 7], Layout::ChannelsFirst), (vec![6, 3, 3, 8], Layout::ChannelsLast)] {
        let shape = Shape::new(&dims, layout).unwrap();
        let batches = [4, 0, 2];
        for half in [Dtype::F16, Dtype::Bf16] {
            let threads: Vec<_> = wgpu_batchnorm::in_process(3)
                .into_iter()
                .map(|rank| {
                    let shape = shape.clone();
                    std::thread::spawn(move || match half {
                        Dtype::F16 => rank_step(rank, f16::from_f32, shape, batches),
                        _ => rank_step(rank, bf16::from_f32, shape, batches),
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("a rank's thread panicked");
            }
        }
    }
}

/// The layer types on f16 and bf16 arrays: batch norm (training step with
/// running statistics, then eval), group norm and RMS norm, forward and
/// backward, against the reference on the same values.
#[test]
fn layers_take_half_arrays() {
    fn run<E: wgpu_batchnorm::Element>(ctx: &Arc<GpuContext>, from: fn(f32) -> E) {
        let dtype = E::DTYPE;
        let shape = Shape::new(&[4, 6, 5, 3], Layout::ChannelsFirst).unwrap();
        let c = shape.channels();
        let (xf, dyf) = (typical_data(&shape, 111), channel_data(&shape, 112, |_| (0.0, 1.0)));
        let (x, dy) = (xf.mapv(from), dyf.mapv(from));
        let (xr, dyr) = (rounded(dtype, &xf), rounded(dtype, &dyf));
        let what = format!("{dtype:?}");

        let mut bn = wgpu_batchnorm::BatchNorm::new(ctx.clone(), c, Options { dtype, ..Options::default() }).unwrap();
        let y = bn.forward_blocking(&x.view(), shape.layout()).unwrap();
        let f = reference::forward_train::<f32, f32>(&shape, &xr.view(), None, None, 1e-5).unwrap();
        assert_close(&format!("BatchNorm y {what}"), dtype, &to_f32(&y), f.y.as_slice().unwrap());
        let g = bn.backward_blocking(&dy.view()).unwrap();
        let ones = vec![1.0f32; c];
        let want = reference::backward_train(&shape, &dyr.view(), &xr.view(), &f.save_mean, &f.save_invstd, Some(&ones[..])).unwrap();
        assert_close(&format!("BatchNorm dx {what}"), dtype, &to_f32(&g.dx), want.dx.as_slice().unwrap());
        common::assert_rel(&format!("BatchNorm dgamma {what}"), g.dgamma.as_deref().unwrap(), &want.dgamma, 1e-5);
        bn.eval();
        let running = bn.running_stats_blocking().unwrap().unwrap();
        let y = bn.forward_blocking(&x.view(), shape.layout()).unwrap();
        let want = reference::forward_inference::<f32, f32>(&shape, &xr.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
        assert_close(&format!("BatchNorm eval y {what}"), dtype, &to_f32(&y), want.as_slice().unwrap());

        let options = Options { dtype, ..Norm::Group { shape: shape.clone(), groups: 3 }.default_options() };
        let mut gn = wgpu_batchnorm::GroupNorm::new(ctx.clone(), 3, c, options).unwrap();
        let y = gn.forward_blocking(&x.view(), shape.layout()).unwrap();
        let want = reference::group_norm::<f32, f32>(&shape, &xr.view(), 3, Some(&ones[..]), Some(&vec![0.0; c][..]), 1e-5).unwrap();
        assert_close(&format!("GroupNorm y {what}"), dtype, &to_f32(&y), want.y.as_slice().unwrap());
        let g = gn.backward_blocking(&dy.view()).unwrap();
        let grads =
            reference::group_norm_backward(&shape, &dyr.view(), &xr.view(), 3, &want.mean, &want.rstd, Some(&f64s(&ones)[..])).unwrap();
        assert_close(&format!("GroupNorm dx {what}"), dtype, &to_f32(&g.dx), grads.dx.as_slice().unwrap());

        let normalized = &shape.dims()[2..];
        let options =
            Options { dtype, ..Norm::Rms { dims: shape.dims().to_vec(), normalized_shape: normalized.to_vec() }.default_options() };
        let mut rms = wgpu_batchnorm::RmsNorm::new(ctx.clone(), normalized, options).unwrap();
        let y = rms.forward_blocking(&x.view()).unwrap();
        let p: usize = normalized.iter().product();
        let ones = vec![1.0f32; p];
        let want = reference::rms_norm(&xr.view(), normalized, Some(&ones[..]), f64::from(f32::EPSILON)).unwrap();
        assert_close(&format!("RmsNorm y {what}"), dtype, &to_f32(&y), want.y.as_slice().unwrap());
        let g = rms.backward_blocking(&dy.view()).unwrap();
        let grads = reference::rms_norm_backward(&dyr.view(), &xr.view(), normalized, &want.rstd, Some(&f64s(&ones)[..])).unwrap();
        assert_close(&format!("RmsNorm dx {what}"), dtype, &to_f32(&g.dx), grads.dx.as_slice().unwrap());
    }
    for ctx in contexts() {
        run(&ctx, f16::from_f32);
        run(&ctx, bf16::from_f32);
    }
}

/// Stores past f16's range round as rounding to nearest does, through both f16
/// paths: below 65520 in magnitude to ±65504, from there on to ±inf, and a NaN
/// stays a NaN; bf16 past f32's range gives ±inf. Inference forward with
/// `running_var + eps = 1`, so that `y = gamma * x` exactly before the store.
#[test]
fn out_of_range_outputs_round_to_inf_and_nan_stays_nan() {
    for ctx in contexts() {
        for (dtype, x, gamma, want) in [
            (
                Dtype::F16,
                [1.0, -1.0, 65504.0, 65504.0, -65504.0, f32::NAN],
                [1e5, 1e5, 1.0001, 1.0003, 1.0003, 1.0],
                [f32::INFINITY, f32::NEG_INFINITY, 65504.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN],
            ),
            (
                Dtype::Bf16,
                [1e38, -1e38, 1.0, 2.0, -3.0, f32::NAN],
                [10.0, 10.0, 1.0, 1.0, 1.0, 1.0],
                [f32::INFINITY, f32::NEG_INFINITY, 1.0, 2.0, -3.0, f32::NAN],
            ),
        ] {
            // One sample of six channels, each a single value.
            let shape = Shape::new(&[1, 6], Layout::ChannelsFirst).unwrap();
            let xa = ArrayD::from_shape_vec(vec![1, 6], x.to_vec()).unwrap();
            let (xb, yb) = (tensor(&ctx, dtype, &xa), empty(&ctx, dtype, 6));
            let (gb, bb) = (f32_buffer(&ctx, &gamma), f32_buffer(&ctx, &[0.0; 6]));
            let eps = 1e-5f32;
            let (rm, rv) = (f32_buffer(&ctx, &[0.0; 6]), f32_buffer(&ctx, &[1.0 - eps; 6]));
            let options = Options { dtype, eps, ..Options::default() };
            let op = Norm::Batch(shape.clone());
            submit(&ctx, |e| {
                let b = NormInferenceBuffers {
                    x: xb.slice(..),
                    y: yb.slice(..),
                    gamma: Some(gb.slice(..)),
                    beta: Some(bb.slice(..)),
                    running_mean: rm.slice(..),
                    running_var: rv.slice(..),
                    residual: None,
                    workspace: None,
                };
                ctx.encode_norm_inference(e, &op, &options, &b)
            });
            let got = read(&ctx, dtype, &yb, 6);
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let ok = if w.is_nan() { g.is_nan() } else { *g == w };
                assert!(ok, "{dtype:?} shader-f16 {}: channel {i}: got {g}, want {w}", ctx.shader_f16());
            }
        }
    }
}

/// A segment of one item at an even index, whose word it shares with the span
/// after it, is stored: the streaming passes (apply, backward dx) split a row
/// of `S` values into segments of whole workgroups, and `S = k * WG + 1` left
/// a last segment of one item that no rule stored (it read 0) until gpu_check
/// found it. Rows of 5 to 33 values under workgroups of 2, 8 and 256, in bf16
/// and f16 through words (as every adapter runs bf16).
#[test]
fn a_one_item_segment_at_an_odd_end_is_stored() {
    let tunings = [2, 8, 256].map(|wg| wgpu_batchnorm::Tuning { workgroup_size: wg, subgroups: false, ..wgpu_batchnorm::Tuning::CPU });
    let words = ContextOptions { shader_f16: false, ..ContextOptions::from_env() };
    for tuning in tunings {
        let ctx = pollster::block_on(GpuContext::with_options(&words)).expect("adapter").with_tuning(tuning);
        for s in [5, 9, 17, 33, 257] {
            let shape = Shape::new(&[2, 3, s], Layout::ChannelsFirst).unwrap();
            let (xf, dyf) = (typical_data(&shape, 81), channel_data(&shape, 82, |_| (0.0, 1.0)));
            for dtype in HALVES {
                let (x, dy) = (rounded(dtype, &xf), rounded(dtype, &dyf));
                let what = format!("{dtype:?} {:?} workgroups of {}", shape.dims(), tuning.workgroup_size);
                let options = Options { dtype, affine: false, track_running_stats: false, ..Options::default() };
                let op = Norm::Batch(shape.clone());
                let f = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
                let g = reference::backward_train(&shape, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, None::<&[f32]>).unwrap();
                let (y, dx) = match dtype {
                    Dtype::F16 => {
                        let (x, dy) = (x.mapv(f16::from_f32), dy.mapv(f16::from_f32));
                        let out = ctx.norm_blocking(&op, x.view(), None, None, None, &options).unwrap();
                        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
                        let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), None, &options).unwrap();
                        (to_f32(&out.y), to_f32(&grads.dx))
                    }
                    _ => {
                        let (x, dy) = (x.mapv(bf16::from_f32), dy.mapv(bf16::from_f32));
                        let out = ctx.norm_blocking(&op, x.view(), None, None, None, &options).unwrap();
                        let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
                        let grads = ctx.norm_backward_blocking(&op, &inputs, out.stats(), None, &options).unwrap();
                        (to_f32(&out.y), to_f32(&grads.dx))
                    }
                };
                assert_close(&format!("y {what}"), dtype, &y, f.y.as_slice().unwrap());
                assert_close(&format!("dx {what}"), dtype, &dx, g.dx.as_slice().unwrap());
            }
        }
    }
}

/// `download_tensor` reads a slice in its dtype: from an offset inside the
/// buffer, an odd count of halves (the last word half read), and refuses a
/// slice it cannot copy.
#[test]
fn a_slice_downloads_in_its_dtype() {
    let ctx = ctx();
    let mut r = rng(11);
    let bits: Vec<u16> = (0..64).map(|_| r.random()).collect();
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let halves = buffer(&ctx, &bytes);
    // Values 6 to 6 + 37 (byte 12 on): an odd count, ending mid-word.
    let f16s = ctx.download_tensor_blocking::<f16>(halves.slice(12..), 37).unwrap();
    assert_eq!(f16s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits[6..43]);
    let bf16s = ctx.download_tensor_blocking::<bf16>(halves.slice(12..88), 37).unwrap();
    assert_eq!(bf16s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits[6..43]);
    let words: Vec<u32> = bits.chunks(2).map(|p| u32::from(p[0]) | u32::from(p[1]) << 16).collect();
    let f32s = ctx.download_tensor_blocking::<f32>(halves.slice(8..), 5).unwrap();
    assert_eq!(f32s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), words[2..7]);

    let refused = |result: wgpu_batchnorm::Result<Vec<f16>>, why: &str| match result {
        Err(Error::BadBuffer { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("{why}: {other:?}"),
    };
    refused(ctx.download_tensor_blocking::<f16>(halves.slice(2..), 3), "not a multiple of 4");
    refused(ctx.download_tensor_blocking::<f16>(halves.slice(120..), 5), "from a slice of 8 bytes");
    let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    refused(ctx.download_tensor_blocking::<f16>(uniform.slice(..), 2), "COPY_SRC");
}
