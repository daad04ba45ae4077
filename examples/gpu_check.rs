//! The correctness check a GPU run trusts, in one binary: every op against the
//! f64 reference on the adapter it finds, at docs/SPEC.md's bounds
//! ([`wgpu_batchnorm::check`], which says which ops and bounds), exiting
//! non-zero on any miss. The web package runs the same check inside wasm.
//!
//! `cargo run --release --example gpu_check [-- --quick] [--json FILE]`
//! (`--adapter`: print the adapter it would run on, and stop)
//!
//! The benchmark's shapes, or with `--quick` small shapes that still reach
//! both item widths and both reduction strategies, as CI runs it on the
//! software adapters.

use std::process::ExitCode;
use std::time::Instant;

use wgpu_batchnorm::check::{self, Report, Shapes};
use wgpu_batchnorm::GpuContext;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shapes = if args.iter().any(|a| a == "--quick") { Shapes::Quick } else { Shapes::Benchmark };
    let json = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let ctx = match GpuContext::new_blocking() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("gpu_check: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.iter().any(|a| a == "--adapter") {
        println!("{}", ctx.describe());
        return ExitCode::SUCCESS;
    }
    let f16_path = if ctx.shader_f16() { "SHADER_F16" } else { "32-bit words" };
    let quick = if shapes == Shapes::Quick { ", quick shapes" } else { "" };
    println!("gpu_check on {} (f16 through {f16_path}){quick}", ctx.describe());
    let start = Instant::now();
    let mut report = Report::default();
    let ran = pollster::block_on(check::run(&ctx, shapes, &mut report));
    for line in report.lines() {
        println!("{line}");
    }
    if let Some(path) = json {
        if let Err(e) = std::fs::write(&path, report.to_json()) {
            eprintln!("gpu_check: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (checked, failed) = (report.outcomes.len(), report.failed());
    match ran {
        Err(e) => {
            eprintln!("gpu_check: FAILED: an op returned {e} ({checked} checks before it, {failed} failed)");
            ExitCode::FAILURE
        }
        Ok(()) if failed > 0 => {
            for line in report.lines().iter().filter(|l| l.starts_with("FAILED")) {
                eprintln!("{line}");
            }
            eprintln!("gpu_check: FAILED: {failed} of {checked} checks past their bounds ({seconds:.1} s)");
            ExitCode::FAILURE
        }
        Ok(()) => {
            println!("gpu_check: all {checked} checks within their bounds ({seconds:.1} s)");
            ExitCode::SUCCESS
        }
    }
}
