//! The context across threads, a lost device, and grids past 65535 workgroups in a dimension.

mod common;

use std::sync::Arc;

use common::*;
use wgpu_batchnorm::{reference, Error, GpuContext, Layout, Momentum, Norm, RunningStats, Shape};

#[test]
fn context_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<GpuContext>();
    check::<wgpu_batchnorm::BatchNorm>();
}

/// Several threads run every op on one context at once; each gets its own correct answer.
#[test]
fn concurrent_ops_on_one_context() {
    let ctx = ctx();
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let ctx = Arc::clone(&ctx);
            std::thread::spawn(move || {
                let (dims, layout) = if k % 2 == 0 {
                    (vec![4, 3 + k as usize, 17, 9], Layout::ChannelsFirst)
                } else {
                    (vec![4, 17, 9, 8], Layout::ChannelsLast)
                };
                let shape = Shape::new(&dims, layout).unwrap();
                for step in 0..5 {
                    let x = typical_data(&shape, 100 * k + step);
                    let dy = channel_data(&shape, 100 * k + step + 50, |_| (0.0, 1.0));
                    let mut running = RunningStats::new(shape.channels());
                    let out = ctx.train(&x.view(), layout, None, Some(&mut running), Momentum::default(), 1e-5).unwrap();
                    let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
                    assert_rel("y", out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
                    let (save_mean, save_invstd) = saved(&out);
                    let g = ctx.grads_train(&dy.view(), &x.view(), layout, save_mean, save_invstd, None, 1e-5).unwrap();
                    let wg =
                        reference::backward_train::<_, _, f32>(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, None)
                            .unwrap();
                    assert_rel("dx", g.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 1e-5);
                    let y = ctx.infer(&x.view(), layout, None, &running, 1e-5).unwrap();
                    let wy = reference::forward_inference(&shape, &x.view(), None, None, &running.mean, &running.var, 1e-5).unwrap();
                    assert_rel("inference y", y.as_slice().unwrap(), wy.as_slice().unwrap(), 1e-5);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker thread failed");
    }
}

/// After `Device::destroy`, calls return `Error::DeviceLost` instead of hanging or panicking.
#[test]
fn lost_device_gives_errors() {
    let ctx = GpuContext::new_blocking().expect("adapter");
    let shape = Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 1);
    ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5).unwrap();
    ctx.device().destroy();
    for _ in 0..2 {
        let e = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5);
        assert!(matches!(e, Err(Error::DeviceLost(_))), "{e:?}");
        let e = ctx.infer(&x.view(), Layout::ChannelsFirst, None, &RunningStats::new(3), 1e-5);
        assert!(matches!(e, Err(Error::DeviceLost(_))), "{e:?}");
    }
    assert!(matches!(ctx.check_alive(), Err(Error::DeviceLost(_))));
}

/// More channels than one grid dimension of workgroups covers: the reduction
/// grid (70001 workgroups, one per channel) and the per-channel epilogue
/// (4.2 M channels / 64 = 65625 workgroups) fold into y.
#[test]
fn more_workgroups_than_one_dimension_holds() {
    let ctx = ctx();
    for dims in [vec![3, 70_001, 2], vec![2, 4_200_000]] {
        let shape = Shape::new(&dims, Layout::ChannelsFirst).unwrap();
        let x = typical_data(&shape, 3);
        let dy = channel_data(&shape, 4, |_| (0.0, 1.0));
        let out = ctx.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5).unwrap();
        let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
        assert_rel(&format!("y {dims:?}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
        let (save_mean, save_invstd) = saved(&out);
        assert_rel(&format!("save_mean {dims:?}"), save_mean, &want.save_mean, 1e-5);
        let gamma = vec![1.0f32; shape.channels()];
        let g = ctx.grads_train(&dy.view(), &x.view(), Layout::ChannelsFirst, save_mean, save_invstd, Some(&gamma), 1e-5).unwrap();
        let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma)).unwrap();
        assert_rel(&format!("dx {dims:?}"), g.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 1e-5);
        assert_rel(&format!("dbeta {dims:?}"), param_grads(&g).1, &wg.dbeta, 1e-5);
    }
}

/// A caller's device and queue, wrapped: same adapter, same tuning, correct results.
#[test]
fn wraps_a_callers_device() {
    let owned = GpuContext::new_blocking().expect("adapter");
    let wrapped = GpuContext::from_device(owned.device().clone(), owned.queue().clone()).unwrap();
    assert_eq!(wrapped.adapter_info().name, owned.adapter_info().name);
    assert_eq!(wrapped.tuning(), owned.tuning());
    let shape = Shape::new(&[6, 5, 4, 3], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 7);
    let out = wrapped.train(&x.view(), Layout::ChannelsFirst, None, None, Momentum::default(), 1e-5).unwrap();
    let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
    assert_rel("y", out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
}

/// A pipeline the device rejects is `Error::Wgpu` from `prepare` (which
/// compiles the op's pipelines) and from the one-shot call, each time, not a
/// dispatch that leaves the outputs unwritten. Here the caller's device allows
/// 64 invocations a workgroup and the context's tuning asks for 256; a context
/// on the same device with the CPU tuning's workgroups of 8 runs.
#[test]
fn a_rejected_pipeline_is_an_error() {
    let (device, queue) =
        device_with_limits(|limits| wgpu::Limits { max_compute_invocations_per_workgroup: 64, max_compute_workgroup_size_x: 64, ..limits });
    let wide = GpuContext::from_device(device.clone(), queue.clone()).unwrap().with_tuning(wgpu_batchnorm::Tuning::GPU);
    let shape = Shape::new(&[16, 8], Layout::ChannelsFirst).unwrap();
    let op = Norm::Layer { dims: shape.dims().to_vec(), normalized_shape: vec![8] };
    let options = op.default_options();
    for _ in 0..2 {
        let r = wide.prepare_norm(&op, &options);
        assert!(matches!(&r, Err(Error::Wgpu(m)) if m.contains("norm_forward")), "{r:?}");
    }
    let x = typical_data(&shape, 70);
    let (gamma, beta) = (vector(8, 1, 0.5, 1.5), vector(8, 2, -1.0, 1.0));
    let r = wide.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options);
    assert!(matches!(&r, Err(Error::Wgpu(m)) if m.contains("norm_forward")), "{r:?}");
    let narrow = GpuContext::from_device(device, queue).unwrap().with_tuning(wgpu_batchnorm::Tuning::CPU);
    let out = narrow.norm_blocking(&op, x.view(), Some(&gamma), Some(&beta), None, &options).unwrap();
    let want = reference::layer_norm(&x.view(), &[8], Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
    assert_rel("y", out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
}
