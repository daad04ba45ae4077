//! Synchronized batch norm across MPI ranks: each rank takes its part of one
//! global batch (uneven parts, a rank with a single value per channel, from
//! three ranks one with none, both layouts), runs two training steps and an
//! eval step of `SyncBatchNorm` on its GPU, and checks its outputs against
//! single-device batch norm over the whole batch (the f64 reference) and its
//! statistics against every other rank's, bit for bit.
//!
//! `cargo build --release --features mpi --example syncbn`, then
//! `mpirun -np 2 target/release/examples/syncbn` (README: across machines).
//!
//! With `--late-rank`, the check of a collective's timeout instead: the last
//! rank comes to the first synchronized forward after the others' collectives
//! timed out (after 3 s), and every other rank must have returned
//! `Error::Collective` by then, within the timeout and a margin.

#[path = "../tests/sync_scenario/mod.rs"]
mod sync_scenario;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::ArrayD;
use wgpu_batchnorm::{Collective, Error, GpuContext, Layout, Mpi, Options, SyncBatchNorm};

/// The collectives' timeout of the `--late-rank` check.
const TIMEOUT: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--late-rank") {
        return late_rank();
    }
    let mpi = match Mpi::new() {
        Ok(mpi) => mpi,
        Err(e) => {
            eprintln!("syncbn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rank, ranks) = (mpi.rank(), mpi.size());
    let ctx = match GpuContext::new_blocking() {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("syncbn rank {rank}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("syncbn rank {rank} of {ranks} on {}", ctx.describe());
    let mut failed = false;
    for (i, case) in sync_scenario::cases(ranks).iter().enumerate() {
        match sync_scenario::run_case(ctx.clone(), &mpi, case) {
            Ok(()) => println!(
                "syncbn rank {rank}: case {i} ({:?}, batches {:?}) matches one device over the whole batch",
                case.layout, case.batches
            ),
            Err(e) => {
                eprintln!("syncbn rank {rank}: case {i} FAILED: {e}");
                failed = true;
                // The other ranks wait in the collective for this one: stop them all.
                break;
            }
        }
    }
    // Every rank learns whether any failed.
    let verdicts = mpi.all_gather(&[f64::from(u8::from(failed))]).unwrap_or_else(|_| vec![1.0]);
    if verdicts.iter().any(|&v| v != 0.0) {
        if rank == 0 {
            eprintln!(
                "syncbn: FAILED on ranks {:?}",
                verdicts.iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(r, _)| r).collect::<Vec<_>>()
            );
        }
        return ExitCode::FAILURE;
    }
    if rank == 0 {
        println!("syncbn: {ranks} ranks, every case matches one device, statistics bitwise equal on every rank");
    }
    ExitCode::SUCCESS
}

/// The `--late-rank` check: every rank but the last gets `Error::Collective`
/// from its synchronized forward within [`TIMEOUT`] and a margin, instead of
/// waiting for the last one; the last comes after that, so that the pending
/// collectives complete and MPI finalizes cleanly.
fn late_rank() -> ExitCode {
    let mpi = match Mpi::with_timeout(TIMEOUT) {
        Ok(mpi) => mpi,
        Err(e) => {
            eprintln!("syncbn --late-rank: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (rank, ranks) = (mpi.rank(), mpi.size());
    let late = rank + 1 == ranks;
    // The forward's outcome and how long it took.
    let run = || -> Result<(Result<(), Error>, Duration), Error> {
        let ctx = Arc::new(GpuContext::new_blocking()?);
        let mut bn = SyncBatchNorm::new(ctx, &mpi, 3, Options::default())?;
        let x = ArrayD::from_shape_fn(vec![4, 3, 5], |i| (i[0] * 5 + i[2]) as f32);
        if late {
            std::thread::sleep(TIMEOUT * 2);
        }
        let start = Instant::now();
        let out = bn.forward_blocking(&x.view(), Layout::ChannelsFirst).map(|_| ());
        Ok((out, start.elapsed()))
    };
    match run() {
        Ok((Err(Error::Collective(e)), waited)) if !late && waited < TIMEOUT * 2 => {
            println!("syncbn --late-rank: rank {rank} of {ranks}: Error::Collective after {waited:.1?} ({e})");
            ExitCode::SUCCESS
        }
        Ok((out, _)) if late => {
            println!("syncbn --late-rank: rank {rank} of {ranks} came late: {out:?}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("syncbn --late-rank: rank {rank}: FAILED: {other:?}; Error::Collective within {:?} wanted", TIMEOUT * 2);
            ExitCode::FAILURE
        }
    }
}
