//! Property tests: random rank, layout, shape (with 1s and odd primes), eps,
//! momentum, affine, tracked statistics, data scale and offset. Every case runs
//! training forward, backward and inference on the GPU against the reference at
//! docs/SPEC.md's tolerances; a failure shrinks to a small reproducer.
//!
//! The cases come from a fixed seed, so that every run (CI's) checks the same
//! 128 and a failure is a real defect, not a draw; cases that once failed are
//! kept as `recorded_cases`. A wider random run:
//! `PROPTEST_RNG_SEED=$RANDOM PROPTEST_CASES=2000 cargo test --release --test properties`.

mod common;

use common::*;
use ndarray::ArrayD;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use wgpu_batchnorm::{reference, Affine, Layout, Momentum, RunningStats, Shape};

#[derive(Debug, Clone)]
struct Case {
    dims: Vec<usize>,
    layout: Layout,
    eps: f32,
    momentum: Momentum,
    affine: bool,
    tracked: bool,
    scale: f64,
    offset: f64,
    seed: u64,
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(5), Just(7), Just(8), Just(13), Just(16), Just(31)]
}

fn case() -> impl Strategy<Value = Case> {
    let layout = prop_oneof![Just(Layout::ChannelsFirst), Just(Layout::ChannelsLast)];
    let momentum = prop_oneof![(0.0f32..=1.0).prop_map(Momentum::Exponential), Just(Momentum::CumulativeAverage)];
    (
        layout,
        2usize..=5,
        proptest::collection::vec(dim(), 5),
        1e-6f32..1e-1,
        momentum,
        any::<bool>(),
        any::<bool>(),
        -3.0f64..3.0,
        -10.0f64..10.0,
        any::<u64>(),
    )
        .prop_filter_map(
            "channels-last needs rank 3; training needs 2 values per channel",
            |(layout, rank, d, eps, momentum, affine, tracked, log_scale, offset, seed)| {
                let rank = if layout == Layout::ChannelsLast { rank.max(3) } else { rank };
                let dims = d[..rank].to_vec();
                let shape = Shape::new(&dims, layout).ok()?;
                (shape.per_channel() >= 2).then_some(Case {
                    dims,
                    layout,
                    eps,
                    momentum,
                    affine,
                    tracked,
                    scale: 10f64.powf(log_scale),
                    offset,
                    seed,
                })
            },
        )
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let ctx = ctx();
    let shape = Shape::new(&case.dims, case.layout).unwrap();
    let c = shape.channels();
    let x: ArrayD<f32> = channel_data(&shape, case.seed, |ch| (case.offset * case.scale * (1.0 + ch as f64 * 0.1), case.scale));
    let dy: ArrayD<f32> = channel_data(&shape, case.seed ^ 1, |_| (0.0, 1.0));
    let (gamma, beta) = (vector(c, case.seed, 0.5, 1.5), vector(c, case.seed ^ 2, -1.0, 1.0));
    let affine = case.affine.then_some(Affine { gamma: &gamma[..], beta: Some(&beta[..]) });
    let (g, b) = if case.affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
    let mut running = RunningStats::new(c);

    let out = ctx
        .train(&x.view(), case.layout, affine, case.tracked.then_some(&mut running), case.momentum, case.eps)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = reference::forward_train(&shape, &x.view(), g, b, case.eps as f64).unwrap();
    let close = |what: &str, got: &[f32], want: &[f64], floor: f64| {
        let e = rel_err_floor(got, want, floor);
        prop_assert!(e <= 1e-5, "{what}: relative error {e:.3e}");
        Ok(())
    };
    close("y", out.y.as_slice().unwrap(), want.y.as_slice().unwrap(), 0.0)?;
    close("save_mean", out.mean.as_deref().unwrap(), &want.save_mean, 0.0)?;
    close("save_invstd", &out.rstd, &want.save_invstd, 0.0)?;
    if case.tracked {
        let mut want_running = RunningStats::<f64>::new(c);
        let batch = reference::BatchStats { mean: want.save_mean.clone(), var: want.var.clone() };
        reference::update_running(&mut want_running, &batch, shape.per_channel(), &options_for(case.affine, true, case.momentum, case.eps));
        close("running_mean", &running.mean, &want_running.mean, 0.0)?;
        close("running_var", &running.var, &want_running.var, 0.0)?;
    }

    let grads = ctx
        .grads_train(&dy.view(), &x.view(), case.layout, out.mean.as_deref().unwrap(), &out.rstd, g, case.eps)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // The gradients of the true batch statistics, from the raw data.
    let wg = reference::backward_train(&shape, &dy.view(), &x.view(), &want.save_mean, &want.save_invstd, g).unwrap();
    close("dx", grads.dx.as_slice().unwrap(), wg.dx.as_slice().unwrap(), 0.0)?;
    // dgamma sums rounded products where fma is not fused (llvmpipe): its error is
    // about eps * sqrt(sum (dy * xhat)^2), which bounds it when the sum cancels
    // (docs/SPEC.md), in training and in inference mode alike.
    let (c_count, s) = (shape.channels(), shape.inner());
    let dgamma_floor = |mean: &[f64], invstd: &dyn Fn(usize) -> f64| {
        let terms = dy.iter().zip(x.iter()).enumerate().map(|(i, (&d, &v))| {
            let c = (i / s) % c_count;
            (d as f64 * (v as f64 - mean[c]) * invstd(c)).powi(2)
        });
        terms.sum::<f64>().sqrt()
    };
    if case.affine {
        let (dgamma, dbeta) = param_grads(&grads);
        close("dgamma", dgamma, &wg.dgamma, dgamma_floor(&want.save_mean, &|c| want.save_invstd[c]))?;
        close("dbeta", dbeta, &wg.dbeta, 0.0)?;
    } else {
        prop_assert!(grads.dgamma.is_none() && grads.dbeta.is_none());
    }

    if case.tracked {
        let y = ctx.infer(&x.view(), case.layout, affine, &running, case.eps).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let wy = reference::forward_inference(&shape, &x.view(), g, b, &running.mean, &running.var, case.eps as f64).unwrap();
        close("inference y", y.as_slice().unwrap(), wy.as_slice().unwrap(), 0.0)?;
        let gi = ctx
            .grads_inference(&dy.view(), &x.view(), case.layout, &running, g, case.eps)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let wi = reference::backward_inference(&shape, &dy.view(), &x.view(), &running.mean, &running.var, g, case.eps as f64).unwrap();
        close("inference dx", gi.dx.as_slice().unwrap(), wi.dx.as_slice().unwrap(), 0.0)?;
        if case.affine {
            let mean: Vec<f64> = running.mean.iter().map(|&m| m.into()).collect();
            let invstd = |c: usize| 1.0 / (f64::from(running.var[c]) + f64::from(case.eps)).sqrt();
            close("inference dgamma", param_grads(&gi).0, &wi.dgamma, dgamma_floor(&mean, &invstd))?;
        }
    }
    Ok(())
}

/// The seed of the cases every run checks, unless `PROPTEST_RNG_SEED` names another.
const FIXED_SEED: u64 = 0x5eed_0b47_c4a0_2026;

/// 128 cases from [`FIXED_SEED`], unless `PROPTEST_CASES` and `PROPTEST_RNG_SEED` say otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(FIXED_SEED);
    }
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 128;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gpu_matches_reference(case in case()) {
        run(&case)?;
    }
}

/// Cases that random runs once failed, each with what it showed.
#[test]
fn recorded_cases() {
    let cases = [
        // Inference dgamma off by 1.164e-5 against |dgamma| on llvmpipe, where
        // its 8 products cancel: within eps * sqrt(sum (dy * xhat)^2), as in training.
        Case {
            dims: vec![1, 4, 2, 1],
            layout: Layout::ChannelsLast,
            eps: 1e-6,
            momentum: Momentum::Exponential(0.8415446),
            affine: true,
            tracked: true,
            scale: 0.8405,
            offset: 3.1466,
            seed: 5269561589806953026,
        },
    ];
    for case in &cases {
        if let Err(e) = run(case) {
            panic!("{case:?}: {e}");
        }
    }
}
