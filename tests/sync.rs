//! Synchronized batch norm with ranks as threads of one program, one
//! `GpuContext` each (several devices in one machine; here contexts on one
//! adapter): every rank's results against single-device batch norm over the
//! whole batch, and bitwise equal statistics on every rank.

mod sync_scenario;

use std::sync::Arc;

use ndarray::ArrayD;
use sync_scenario::{cases, run_case};
use wgpu_batchnorm::{in_process, reference, Affine, Collective, Error, GpuContext, Layout, Options, RunningStats, Shape, SyncBatchNorm};

fn run_on_threads(ranks: usize) {
    for case in cases(ranks) {
        let threads: Vec<_> = in_process(ranks)
            .into_iter()
            .map(|rank| {
                let case = case.clone();
                std::thread::spawn(move || {
                    let ctx = Arc::new(GpuContext::new_blocking().map_err(|e| e.to_string())?);
                    run_case(ctx, rank, &case)
                })
            })
            .collect();
        for t in threads {
            if let Err(e) = t.join().expect("a rank's thread panicked") {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn two_ranks_match_one_device_over_the_whole_batch() {
    run_on_threads(2);
}

#[test]
fn three_ranks_with_uneven_and_empty_batches_match_one_device() {
    run_on_threads(3);
}

/// Statistics over one value per channel in all are an error on every rank.
#[test]
fn one_value_per_channel_over_all_ranks_cannot_train() {
    let threads: Vec<_> = in_process(2)
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                let ctx = Arc::new(GpuContext::new_blocking().expect("adapter"));
                let n = if rank.rank() == 0 { 1 } else { 0 };
                let mut bn = SyncBatchNorm::new(ctx, rank, 3, Options::default()).expect("layer");
                bn.forward_blocking(&ArrayD::<f32>::zeros(vec![n, 3]).view(), Layout::ChannelsFirst)
            })
        })
        .collect();
    for t in threads {
        let e = t.join().expect("rank");
        assert!(matches!(e, Err(Error::TooFewValuesPerChannel { count: 1, .. })), "{e:?}");
    }
}

/// The layer surface `BatchNorm` has: a checkpoint's running statistics and
/// parameters loaded, read back, used in eval mode (forward against the
/// reference's inference, backward `dx = dy * gamma / sqrt(var + eps)`), and
/// the backward through a shared reference.
#[test]
fn a_checkpoint_loads_for_eval() {
    let mut ranks = in_process(1);
    let ctx = Arc::new(GpuContext::new_blocking().expect("adapter"));
    let options = Options { eps: 1e-3, ..Options::default() };
    let mut bn = SyncBatchNorm::new(ctx, ranks.remove(0), 3, options).expect("layer");
    assert!(bn.is_training());
    assert_eq!(bn.options().eps, 1e-3);
    let stats = RunningStats { mean: vec![1.0, -2.0, 0.5], var: vec![4.0, 0.25, 1.5], num_batches_tracked: 17 };
    let (gamma, beta) = (vec![2.0f32, -1.0, 0.5], vec![0.25f32, 3.0, -1.0]);
    bn.set_running_stats(&stats).unwrap();
    bn.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).unwrap();
    assert_eq!(bn.running_stats_blocking().unwrap(), Some(stats.clone()));
    assert_eq!(bn.num_batches_tracked(), 17);
    assert_eq!(bn.affine_blocking().unwrap(), Some(Affine { gamma: gamma.clone(), beta: Some(beta.clone()) }));
    assert_eq!(bn.affine_buffers().map(|a| a.gamma.size()), Some(16));
    bn.eval();
    assert!(!bn.is_training());

    let x = ArrayD::from_shape_fn(vec![2, 3, 5], |i| (i[0] * 15 + i[1] * 5 + i[2]) as f32 * 0.37 - 4.0);
    let y = bn.forward_blocking(&x.view(), Layout::ChannelsFirst).unwrap();
    let shape = Shape::new(&[2, 3, 5], Layout::ChannelsFirst).unwrap();
    let want = reference::forward_inference(&shape, &x.view(), Some(&gamma), Some(&beta), &stats.mean, &stats.var, 1e-3).unwrap();
    for (g, w) in y.iter().zip(want.iter()) {
        assert!((f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0), "y {g} want {w}");
    }
    assert_eq!(bn.saved_stats_blocking().unwrap(), None, "eval mode saves no batch statistics");
    let dy = ArrayD::from_shape_fn(vec![2, 3, 5], |i| (i[2] as f32 - 2.0) * 0.5 + i[0] as f32);
    let shared = &bn;
    let dx = shared.backward_blocking(&dy.view()).unwrap().dx;
    for ((i, g), d) in dx.indexed_iter().zip(dy.iter()) {
        let c = i[1];
        let want = f64::from(*d) * f64::from(gamma[c]) / (f64::from(stats.var[c]) + 1e-3).sqrt();
        assert!((f64::from(*g) - want).abs() <= 1e-6 * want.abs().max(1.0), "dx{i:?} {g} want {want}");
    }
}
