//! The same input on the same adapter gives bitwise the same output: no atomics,
//! a fixed reduction tree.

mod common;

use common::*;
use wgpu_batchnorm::{Affine, GpuContext, Layout, Momentum, RunningStats, Shape, Tuning};

/// y, save_mean, save_invstd, dx, dgamma, dbeta of one training step on `ctx`, as bits.
fn training_step_bits(ctx: &GpuContext, shape: &Shape, seed: u64) -> Vec<Vec<u32>> {
    let c = shape.channels();
    let x = typical_data(shape, seed);
    let dy = channel_data(shape, seed + 1, |_| (0.0, 1.0));
    let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
    let layout = shape.layout();
    let f = ctx
        .forward_train_blocking(&x.view(), layout, Some(Affine { gamma: &gamma[..], beta: &beta[..] }), None, Momentum::default(), 1e-5)
        .unwrap();
    let g = ctx.backward_train_blocking(&dy.view(), &x.view(), layout, &f.save_mean, &f.save_invstd, Some(&gamma[..])).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    vec![
        bits(f.y.as_slice().unwrap()),
        bits(&f.save_mean),
        bits(&f.save_invstd),
        bits(g.dx.as_slice().unwrap()),
        bits(&g.dgamma),
        bits(&g.dbeta),
    ]
}

/// Where the reductions use subgroup shuffles, they merge in the same order as
/// the tree through workgroup memory: the results are bitwise the same.
#[test]
fn subgroup_and_workgroup_memory_trees_agree_bitwise() {
    let ctx = ctx();
    if !ctx.subgroup_reductions() {
        eprintln!("{}: no subgroup reductions with {:?}; nothing to compare", ctx.describe(), ctx.tuning());
        return;
    }
    let without = GpuContext::new_blocking().unwrap().with_tuning(Tuning { subgroups: false, ..ctx.tuning() });
    assert!(!without.subgroup_reductions());
    for (dims, layout) in [
        (vec![8, 512, 7, 7], Layout::ChannelsFirst),
        (vec![16, 64, 32, 32], Layout::ChannelsFirst),
        (vec![16, 32, 32, 64], Layout::ChannelsLast),
        (vec![300, 6], Layout::ChannelsFirst),
    ] {
        let shape = Shape::new(&dims, layout).unwrap();
        let names = ["y", "save_mean", "save_invstd", "dx", "dgamma", "dbeta"];
        for ((a, b), name) in training_step_bits(&ctx, &shape, 51).iter().zip(training_step_bits(&without, &shape, 51)).zip(names) {
            assert!(*a == b, "{name} differs between the subgroup and workgroup-memory trees on {dims:?}");
        }
    }
}

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
