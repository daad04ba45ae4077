//! Synchronized batch norm with ranks as threads of one program, one
//! `GpuContext` each (several devices in one machine; here contexts on one
//! adapter): every rank's results against single-device batch norm over the
//! whole batch, and bitwise equal statistics on every rank.

mod sync_scenario;

use std::sync::Arc;

use ndarray::ArrayD;
use sync_scenario::{cases, run_case};
use wgpu_batchnorm::{in_process, Collective, Error, GpuContext, Layout, Options, SyncBatchNorm};

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
