//! Synchronized batch norm across MPI ranks: each rank takes its part of one
//! global batch (uneven parts, a rank with a single value per channel, from
//! three ranks one with none, both layouts), runs two training steps and an
//! eval step of `SyncBatchNorm` on its GPU, and checks its outputs against
//! single-device batch norm over the whole batch (the f64 reference) and its
//! statistics against every other rank's, bit for bit.
//!
//! `cargo build --release --features mpi --example syncbn`, then
//! `mpirun -np 2 target/release/examples/syncbn` (README: across machines).

#[path = "../tests/sync_scenario/mod.rs"]
mod sync_scenario;

use std::process::ExitCode;
use std::sync::Arc;

use wgpu_batchnorm::{Collective, GpuContext, Mpi};

fn main() -> ExitCode {
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
