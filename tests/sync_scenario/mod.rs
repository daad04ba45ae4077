//! One synchronized training step on one rank, checked against single-device
//! batch norm (the f64 reference) over the batch of every rank put together,
//! and against the other ranks' statistics bit for bit. Shared by
//! `tests/sync.rs` (ranks as threads) and `examples/syncbn.rs` (MPI ranks).

use std::sync::Arc;

use ndarray::{ArrayD, Axis, Slice};
use wgpu_batchnorm::{reference, Affine, Collective, GpuContext, Layout, Momentum, Options, RunningStats, Shape, SyncBatchNorm};

/// A global batch split over ranks by its first dimension.
#[derive(Debug, Clone)]
pub struct Case {
    pub layout: Layout,
    /// The dims of one sample, channels included (`(C, ...)` or `(..., C)`).
    pub sample: Vec<usize>,
    /// Samples on each rank, in rank order.
    pub batches: Vec<usize>,
    pub momentum: Momentum,
    pub seed: u64,
}

impl Case {
    fn channels(&self) -> usize {
        match self.layout {
            Layout::ChannelsFirst => self.sample[0],
            Layout::ChannelsLast => self.sample[self.sample.len() - 1],
        }
    }

    fn dims(&self, n: usize) -> Vec<usize> {
        std::iter::once(n).chain(self.sample.iter().copied()).collect()
    }
}

/// The cases a job of `ranks` ranks runs: equal and uneven batches, a rank
/// holding one value per channel, a rank holding none (from three ranks), both layouts.
pub fn cases(ranks: usize) -> Vec<Case> {
    let spread = |batches: Vec<usize>| batches.into_iter().cycle().take(ranks).collect::<Vec<_>>();
    vec![
        Case { layout: Layout::ChannelsFirst, sample: vec![6], batches: spread(vec![1, 3, 2]), momentum: Momentum::default(), seed: 1 },
        Case {
            layout: Layout::ChannelsFirst,
            sample: vec![5, 3, 4],
            batches: spread(vec![2, 2, 2]),
            momentum: Momentum::CumulativeAverage,
            seed: 2,
        },
        Case {
            layout: Layout::ChannelsLast,
            sample: vec![4, 3, 8],
            batches: spread(vec![3, 1, 0]),
            momentum: Momentum::default(),
            seed: 3,
        },
        Case {
            layout: Layout::ChannelsLast,
            sample: vec![7, 5],
            batches: spread(vec![1, 4, 2]),
            momentum: Momentum::Exponential(0.3),
            seed: 4,
        },
    ]
}

/// A deterministic pseudo-random stream (splitmix64) in `[-1, 1)`.
fn noise(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (mut d, mut n) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        d += (f64::from(*g) - w).powi(2);
        n += w * w;
    }
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

fn check(what: &str, got: &[f32], want: &[f64]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let e = rel_err(got, want);
    if e > 1e-5 || e.is_nan() {
        return Err(format!("{what}: relative error {e:.3e} > 1e-5"));
    }
    Ok(())
}

/// Every rank's `values`, bit for bit, must be the same.
fn same_on_every_rank<C: Collective>(collective: &C, what: &str, values: &[f32]) -> Result<(), String> {
    let bits: Vec<f64> = values.iter().map(|v| f64::from(v.to_bits())).collect();
    let all = collective.all_gather(&bits).map_err(|e| e.to_string())?;
    if all.chunks_exact(bits.len().max(1)).any(|r| r != bits) {
        return Err(format!("{what} differs between ranks"));
    }
    Ok(())
}

/// Two training steps and an eval step of `case` on this rank; `Err` says what failed.
pub fn run_case<C: Collective>(ctx: Arc<GpuContext>, collective: C, case: &Case) -> Result<(), String> {
    let rank = collective.rank();
    let (c, total) = (case.channels(), case.batches.iter().sum::<usize>());
    let full = Shape::new(&case.dims(total), case.layout).map_err(|e| e.to_string())?;
    let start: usize = case.batches[..rank].iter().sum();
    let mine = start..start + case.batches[rank];
    let options = Options { momentum: case.momentum, ..Options::default() };
    let mut rand = noise(case.seed);
    let gamma: Vec<f32> = (0..c).map(|_| (1.0 + 0.5 * rand()) as f32).collect();
    let beta: Vec<f32> = (0..c).map(|_| (0.5 * rand()) as f32).collect();
    let mut bn = SyncBatchNorm::new(ctx, collective, c, options).map_err(|e| e.to_string())?;
    bn.set_affine(Affine { gamma: &gamma, beta: Some(&beta) }).map_err(|e| e.to_string())?;
    let mut want_running = RunningStats::<f64>::new(c);
    let part = |a: &ArrayD<f32>| a.slice_axis(Axis(0), Slice::from(mine.clone())).to_owned();
    let rows = |a: &ArrayD<f64>| a.slice_axis(Axis(0), Slice::from(mine.clone())).iter().copied().collect::<Vec<f64>>();
    for step in 0..2 {
        let what = format!("rank {rank}, {case:?}, step {step}");
        let x = ArrayD::from_shape_fn(full.dims(), |i| {
            let ch = match case.layout {
                Layout::ChannelsFirst => i[1],
                Layout::ChannelsLast => i[full.dims().len() - 1],
            };
            (ch as f64 * 3.0 - 5.0 + (1.0 + ch as f64 % 3.0) * rand()) as f32
        });
        let dy = ArrayD::from_shape_fn(full.dims(), |_| rand() as f32);
        let y = bn.forward_blocking(&part(&x).view(), case.layout).map_err(|e| format!("{what}: forward: {e}"))?;
        let f = reference::forward_train(&full, &x.view(), Some(&gamma[..]), Some(&beta[..]), 1e-5).map_err(|e| e.to_string())?;
        check(&format!("{what}: y"), y.as_slice().unwrap_or(&[]), &rows(&f.y))?;
        let batch = reference::BatchStats { mean: f.save_mean.clone(), var: f.var.clone() };
        reference::update_running(&mut want_running, &batch, full.per_channel(), &options);
        let saved = bn.saved_stats_blocking().map_err(|e| e.to_string())?.ok_or("no saved statistics")?;
        let (save_mean, save_invstd) = (saved.mean.ok_or("no saved mean")?, saved.rstd);
        check(&format!("{what}: save_mean"), &save_mean, &f.save_mean)?;
        check(&format!("{what}: save_invstd"), &save_invstd, &f.save_invstd)?;
        let running = bn.running_stats_blocking().map_err(|e| e.to_string())?.ok_or("no running statistics")?;
        check(&format!("{what}: running_mean"), &running.mean, &want_running.mean)?;
        check(&format!("{what}: running_var"), &running.var, &want_running.var)?;
        let g = bn.backward_blocking(&part(&dy).view()).map_err(|e| format!("{what}: backward: {e}"))?;
        let wg = reference::backward_train(&full, &dy.view(), &x.view(), &f.save_mean, &f.save_invstd, Some(&gamma[..]))
            .map_err(|e| e.to_string())?;
        check(&format!("{what}: dx"), g.dx.as_slice().unwrap_or(&[]), &rows(&wg.dx))?;
        let (dgamma, dbeta) = (g.dgamma.ok_or("no dgamma")?, g.dbeta.ok_or("no dbeta")?);
        check(&format!("{what}: dgamma"), &dgamma, &wg.dgamma)?;
        check(&format!("{what}: dbeta"), &dbeta, &wg.dbeta)?;
        for (name, values) in [
            ("save_mean", &save_mean),
            ("save_invstd", &save_invstd),
            ("running_mean", &running.mean),
            ("running_var", &running.var),
            ("dgamma", &dgamma),
            ("dbeta", &dbeta),
        ] {
            same_on_every_rank(bn.collective(), &format!("{what}: {name}"), values)?;
        }
    }
    // Eval: the running statistics, rank by rank.
    bn.eval();
    if !mine.is_empty() {
        let x = ArrayD::from_shape_fn(full.dims(), |_| (2.0 * rand()) as f32);
        let y = bn.forward_blocking(&part(&x).view(), case.layout).map_err(|e| e.to_string())?;
        let running = bn.running_stats_blocking().map_err(|e| e.to_string())?.ok_or("no running statistics")?;
        let want = reference::forward_inference(&full, &x.view(), Some(&gamma[..]), Some(&beta[..]), &running.mean, &running.var, 1e-5)
            .map_err(|e| e.to_string())?;
        check(&format!("rank {rank}, {case:?}, eval: y"), y.as_slice().unwrap_or(&[]), &rows(&want))?;
    }
    Ok(())
}
