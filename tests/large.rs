//! A tensor larger than the adapter's max_storage_buffer_binding_size (128 MiB on
//! lavapipe and llvmpipe) is processed window by window, against the reference.

mod common;

use common::*;
use wgpu_batchnorm::{reference, Affine, Layout, Shape};

#[test]
fn tensors_over_200_mib_match_the_reference() {
    let ctx = ctx();
    for (dims, layout) in [([52, 64, 128, 128], Layout::ChannelsFirst), ([52, 128, 128, 64], Layout::ChannelsLast)] {
        let shape = Shape::new(&dims, layout).unwrap();
        assert!(shape.bytes(wgpu_batchnorm::Dtype::F32) >= 200 << 20);
        assert!(
            shape.bytes(wgpu_batchnorm::Dtype::F32) > ctx.max_binding_bytes(),
            "the test must pass the binding limit of {}",
            ctx.describe()
        );
        let x = typical_data(&shape, 61);
        let (gamma, beta) = (vector(64, 1, 0.5, 1.5), vector(64, 2, -1.0, 1.0));
        let (out, running) = train_momentum_one(&ctx, &x, layout, &gamma, &beta);
        let want = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
        let what = format!("{dims:?} {layout:?}");
        assert_rel(&format!("y {what}"), out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
        let (mean, rstd) = saved(&out);
        assert_rel(&format!("save_mean {what}"), mean, &want.save_mean, 1e-5);
        assert_rel(&format!("save_invstd {what}"), rstd, &want.save_invstd, 1e-5);
        let y = ctx.infer(&x.view(), layout, Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) }), &running, 1e-5).unwrap();
        let wy =
            reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5).unwrap();
        assert_rel(&format!("inference y {what}"), y.as_slice().unwrap(), wy.as_slice().unwrap(), 1e-5);
        drop((y, wy));
        let dy = channel_data(&shape, 62, |_| (0.0, 1.0));
        let g = ctx.grads_train(&dy.view(), &x.view(), layout, mean, rstd, Some(&gamma[..]), 1e-5).unwrap();
        let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..])).unwrap();
        assert_rel(&format!("dx {what}"), g.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 1e-5);
        let (dgamma, dbeta) = param_grads(&g);
        assert_rel(&format!("dgamma {what}"), dgamma, &wg.dgamma, 1e-5);
        assert_rel(&format!("dbeta {what}"), dbeta, &wg.dbeta, 1e-5);
    }
}
