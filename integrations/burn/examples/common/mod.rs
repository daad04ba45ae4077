//! What the member's examples share: their command line, the device they
//! run on, and the median they report.

use std::sync::Arc;

use burn::tensor::Device;
use wgpu_batchnorm::GpuContext;

/// The value after `name` on the command line, if given.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Burn's autodiff device on the shared wgpu device, and the crate's context
/// on it (its adapter printed); exits with status 2 where there is none.
pub fn autodiff_device() -> (Device, Arc<GpuContext>) {
    let (device, ctx) = wgpu_batchnorm_burn::shared_device().unwrap_or_else(|e| {
        eprintln!("no device: {e}");
        std::process::exit(2)
    });
    println!("adapter: {}", ctx.describe());
    (device.autodiff(), ctx)
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
