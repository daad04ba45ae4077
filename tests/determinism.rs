//! The same input on the same adapter gives bitwise the same output: no atomics,
//! a fixed reduction tree.

mod common;

use common::*;
use wgpu_batchnorm::{Affine, GpuContext, Layout, Momentum, Norm, RunningStats, Shape, Tuning};

/// Every output of a training step on `ctx` (forward with running statistics,
/// backward, then inference and its backward with those statistics), each as
/// bits and named.
fn training_step_bits(ctx: &GpuContext, shape: &Shape, seed: u64) -> Vec<(&'static str, Vec<u32>)> {
    let c = shape.channels();
    let x = typical_data(shape, seed);
    let dy = channel_data(shape, seed + 1, |_| (0.0, 1.0));
    let (gamma, beta) = (vector(c, 1, 0.5, 1.5), vector(c, 2, -1.0, 1.0));
    let layout = shape.layout();
    let mut running = RunningStats::new(c);
    let f = ctx
        .train(&x.view(), layout, Some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) }), Some(&mut running), Momentum::default(), 1e-5)
        .unwrap();
    let (mean, rstd) = saved(&f);
    let g = ctx.grads_train(&dy.view(), &x.view(), layout, mean, rstd, Some(&gamma[..]), 1e-5).unwrap();
    let y = ctx.infer(&x.view(), layout, None, &running, 1e-5).unwrap();
    let gi = ctx.grads_inference(&dy.view(), &x.view(), layout, &running, Some(&gamma[..]), 1e-5).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    vec![
        ("y", bits(f.y.as_slice().unwrap())),
        ("save_mean", bits(mean)),
        ("save_invstd", bits(rstd)),
        ("dx", bits(g.dx.as_slice().unwrap())),
        ("dgamma", bits(param_grads(&g).0)),
        ("dbeta", bits(param_grads(&g).1)),
        ("running_var", bits(&running.var)),
        ("inference y", bits(y.as_slice().unwrap())),
        ("inference dx", bits(gi.dx.as_slice().unwrap())),
        ("inference dgamma", bits(param_grads(&gi).0)),
    ]
}

fn assert_same_bits(a: &[(&str, Vec<u32>)], b: &[(&str, Vec<u32>)], what: &str) {
    for ((name, a), (_, b)) in a.iter().zip(b) {
        assert!(a == b, "{name} differs: {what}");
    }
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
        let what = format!("subgroup and workgroup-memory trees on {dims:?}");
        assert_same_bits(&training_step_bits(&ctx, &shape, 51), &training_step_bits(&without, &shape, 51), &what);
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
        let what = format!("two runs on {dims:?}");
        assert_same_bits(&training_step_bits(&ctx, &shape, 41), &training_step_bits(&ctx, &shape, 41), &what);
    }
}

/// Short channels in one dispatch each way (`Tuning::one_dispatch`) reduce a
/// channel item in the same blocks and merges as the passes they replace do
/// with one chunk a channel, finish it with the same code and write the same
/// outputs: bitwise the same as those passes, along S (scalar and vec4 items)
/// and along C (four channels an item, and one).
#[test]
fn one_dispatch_and_passes_agree_bitwise_on_short_channels() {
    let one_chunk = Tuning { reduce_groups: 1, ..Tuning::CPU };
    let lanes = GpuContext::new_blocking().unwrap().with_tuning(Tuning { one_dispatch: true, ..one_chunk });
    let passes = GpuContext::new_blocking().unwrap().with_tuning(Tuning { one_dispatch: false, ..one_chunk });
    for (dims, layout) in [
        (vec![8, 512, 7, 7], Layout::ChannelsFirst),
        (vec![4, 128, 6, 6], Layout::ChannelsFirst),
        (vec![256, 1024], Layout::ChannelsFirst),
        (vec![96, 130], Layout::ChannelsFirst),
        (vec![2, 3, 5, 256], Layout::ChannelsLast),
    ] {
        let shape = Shape::new(&dims, layout).unwrap();
        // The one dispatch needs no scratch; the passes share partials and parameters.
        let op = Norm::Batch(shape.clone());
        let scratch = |ctx: &GpuContext| {
            let options = op.default_options();
            let forward = ctx.prepare_norm(&op, &options).unwrap().workspace_bytes();
            (forward, ctx.prepare_norm_backward(&op, &options, true).unwrap().workspace_bytes())
        };
        assert_eq!(scratch(&lanes), (0, 0), "{dims:?}: not one dispatch each way");
        assert!(scratch(&passes).0 > 0 && scratch(&passes).1 > 0, "{dims:?}: one dispatch without one_dispatch");
        let what = format!("one dispatch and passes on {dims:?} {layout:?}");
        assert_same_bits(&training_step_bits(&lanes, &shape, 61), &training_step_bits(&passes, &shape, 61), &what);
    }
}
