//! The BatchNorm layer: train and eval modes, running statistics, backward of the last forward.

mod common;

use std::sync::Arc;

use common::*;
use wgpu_batchnorm::{reference, Affine, BatchNorm, Error, Layout, Momentum, Options, RunningStats, Shape};

#[test]
fn train_steps_then_eval_match_the_reference() {
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let dims = match layout {
            Layout::ChannelsFirst => [6, 8, 5, 7],
            Layout::ChannelsLast => [6, 5, 7, 8],
        };
        let shape = Shape::new(&dims, layout).unwrap();
        let mut bn = BatchNorm::new(ctx(), 8, Options::default()).unwrap();
        let (gamma, beta) = (vector(8, 1, 0.5, 1.5), vector(8, 2, -1.0, 1.0));
        bn.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
        let read = bn.affine_blocking().unwrap().unwrap();
        assert_eq!((read.gamma, read.beta), (gamma.clone(), Some(beta.clone())));
        assert_eq!(bn.saved_stats_blocking().unwrap(), None, "no forward pass yet");
        let mut want_running = RunningStats::<f64>::new(8);
        for step in 0..3 {
            let x = typical_data(&shape, 50 + step);
            let y = bn.forward_blocking(&x.view(), layout).unwrap();
            let want = reference::forward_train(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).unwrap();
            assert_rel("train y", y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
            let saved = bn.saved_stats_blocking().unwrap().unwrap();
            assert_rel("mean", saved.mean.as_deref().unwrap(), &want.save_mean, 1e-5);
            assert_rel("rstd", &saved.rstd, &want.save_invstd, 1e-5);
            let dy = channel_data(&shape, 60 + step, |_| (0.0, 1.0));
            let g = bn.backward_blocking(&dy.view()).unwrap();
            let wg =
                reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, Some(&gamma[..])).unwrap();
            let (dgamma, dbeta) = param_grads(&g);
            assert_rel("train dx", g.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 1e-5);
            assert_rel("train dgamma", dgamma, &wg.dgamma, 1e-5);
            assert_rel("train dbeta", dbeta, &wg.dbeta, 1e-5);
            let batch = reference::BatchStats { mean: want.save_mean, var: want.var };
            reference::update_running(&mut want_running, &batch, shape.per_channel(), &Options::default());
        }
        assert_eq!(bn.num_batches_tracked(), 3);
        let running = bn.running_stats_blocking().unwrap().unwrap();
        assert_rel("running_mean", &running.mean, &want_running.mean, 1e-5);
        assert_rel("running_var", &running.var, &want_running.var, 1e-5);

        bn.eval();
        let x = typical_data(&shape, 70);
        let y = bn.forward_blocking(&x.view(), layout).unwrap();
        let want =
            reference::forward_inference(&shape, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5).unwrap();
        assert_rel("eval y", y.as_slice().unwrap(), want.as_slice().unwrap(), 1e-5);
        let dy = channel_data(&shape, 71, |_| (0.0, 1.0));
        let g = bn.backward_blocking(&dy.view()).unwrap();
        let wg = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, Some(&gamma[..]), 1e-5).unwrap();
        assert_rel("eval dx", g.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 1e-5);
        assert_rel("eval dgamma", param_grads(&g).0, &wg.dgamma, 1e-5);
        assert_eq!(bn.saved_stats_blocking().unwrap(), None, "eval normalized with the running statistics");
        assert_eq!(bn.num_batches_tracked(), 3, "eval does not count batches");
    }
}

#[test]
fn untracked_statistics_normalize_with_the_batch_in_eval() {
    let options = Options { track_running_stats: false, affine: false, ..Options::default() };
    let mut bn = BatchNorm::new(ctx(), 3, options).unwrap();
    bn.eval();
    let shape = Shape::new(&[5, 3, 11], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 80);
    let y = bn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    let want = reference::forward_train(&shape, &x.view(), None::<&[f32]>, None, 1e-5).unwrap();
    assert_rel("y", y.as_slice().unwrap(), want.y.as_slice().unwrap(), 1e-5);
    assert_eq!(bn.running_stats_blocking().unwrap(), None);
    assert_eq!(bn.num_batches_tracked(), 0);
    let g = bn.backward_blocking(&x.view()).unwrap();
    assert_eq!((g.dgamma, g.dbeta), (None, None));
    assert_eq!(bn.affine_blocking().unwrap(), None);
    assert!(bn.saved_stats_blocking().unwrap().is_some(), "eval without running statistics used the batch's");
}

#[test]
fn cumulative_average_and_restored_statistics() {
    let options = Options { momentum: Momentum::CumulativeAverage, ..Options::default() };
    let mut bn = BatchNorm::new(ctx(), 4, options).unwrap();
    let start = RunningStats { mean: vec![1.0, 2.0, 3.0, 4.0], var: vec![2.0; 4], num_batches_tracked: 1 };
    bn.set_running_stats(&start).unwrap();
    let shape = Shape::new(&[9, 4, 3], Layout::ChannelsFirst).unwrap();
    let x = typical_data(&shape, 90);
    bn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    let mut want = RunningStats::<f64> { mean: vec![1.0, 2.0, 3.0, 4.0], var: vec![2.0; 4], num_batches_tracked: 1 };
    reference::update_running(&mut want, &reference::batch_stats(&shape, &x.view()).unwrap(), shape.per_channel(), &options);
    let got = bn.running_stats_blocking().unwrap().unwrap();
    assert_eq!(got.num_batches_tracked, 2);
    assert_rel("running_mean", &got.mean, &want.mean, 1e-5);
    assert_rel("running_var", &got.var, &want.var, 1e-5);
}

#[test]
fn wrong_channel_count_and_calls_out_of_order_are_errors() {
    let ctx = ctx();
    let mut bn = BatchNorm::new(Arc::clone(&ctx), 4, Options::default()).unwrap();
    let x = typical_data(&Shape::new(&[3, 5, 2], Layout::ChannelsFirst).unwrap(), 1);
    assert!(matches!(bn.backward_blocking(&x.view()), Err(Error::InvalidState(_))));
    assert!(matches!(bn.forward_blocking(&x.view(), Layout::ChannelsFirst), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(bn.set_affine(Affine { gamma: &[1.0; 3], beta: Some(&[0.0; 4]) }), Err(Error::ShapeMismatch { what: "gamma", .. })));
    let options = Options { affine: false, track_running_stats: false, ..Options::default() };
    let mut plain = BatchNorm::new(ctx, 4, options).unwrap();
    assert!(matches!(plain.set_affine(Affine { gamma: &[1.0; 4], beta: Some(&[0.0; 4]) }), Err(Error::InvalidState(_))));
    assert!(matches!(plain.set_running_stats(&RunningStats::new(4)), Err(Error::InvalidState(_))));
}
