//! The same input on the same adapter gives bitwise the same output: no atomics,
//! a fixed reduction tree.

mod common;

use common::*;
use wgpu_batchnorm::{Affine, Layout, Momentum, RunningStats, Shape};

#[test]
fn repeated_runs_are_bitwise_equal() {
    let ctx = ctx();
    for (dims, layout) in [
        (vec![8, 3, 200, 171], Layout::ChannelsFirst),
        (vec![16, 64, 32, 32], Layout::ChannelsFirst),
        (vec![16, 32, 32, 64], Layout::ChannelsLast),
        (vec![4096, 1000], Layout::ChannelsFirst),
    ] {
        let shape = Shape::new(&dims, layout).unwrap();
        let c = shape.channels();
        let x = typical_data(&shape, 41);
        let dy = channel_data(&shape, 42, |_| (0.0, 1.0));
        let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
        let run = || {
            let mut running = RunningStats::new(c);
            let f = ctx
                .forward_train_blocking(
                    &x.view(),
                    layout,
                    Some(Affine { gamma: &gamma[..], beta: &beta[..] }),
                    Some(&mut running),
                    Momentum::default(),
                    1e-5,
                )
                .unwrap();
            let g = ctx.backward_train_blocking(&dy.view(), &x.view(), layout, &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
            let y = ctx.forward_inference_blocking(&x.view(), layout, None, &running, 1e-5).unwrap();
            (f, g, running, y)
        };
        let (a, b) = (run(), run());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.0.y.as_slice().unwrap()), bits(b.0.y.as_slice().unwrap()), "y {dims:?}");
        assert_eq!(bits(&a.0.save_mean), bits(&b.0.save_mean));
        assert_eq!(bits(&a.0.save_invstd), bits(&b.0.save_invstd));
        assert_eq!(bits(a.1.dx.as_slice().unwrap()), bits(b.1.dx.as_slice().unwrap()), "dx {dims:?}");
        assert_eq!(bits(&a.1.dgamma), bits(&b.1.dgamma));
        assert_eq!(bits(&a.1.dbeta), bits(&b.1.dbeta));
        assert_eq!(bits(&a.2.var), bits(&b.2.var));
        assert_eq!(bits(a.3.as_slice().unwrap()), bits(b.3.as_slice().unwrap()));
    }
}
