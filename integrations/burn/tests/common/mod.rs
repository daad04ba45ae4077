//! What the member's test files share: Burn's device with the kernels
//! registered, seeded data, tensors in and out, and the error measure.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use wgpu_batchnorm::GpuContext;
use wgpu_batchnorm_burn::shared_device;

/// Burn's device with the kernels registered, and their context, shared by
/// every test of a file. Fails (never skips) without an adapter.
pub fn shared() -> &'static (Device, Arc<GpuContext>) {
    static SHARED: OnceLock<(Device, Arc<GpuContext>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (device, ctx) = shared_device().unwrap_or_else(|e| panic!("the tests need an adapter: {e}"));
        eprintln!("Burn and the kernels on {}", ctx.describe());
        (device, ctx)
    })
}

/// Seeded `N(mean, sd^2)` values.
pub fn normal(n: usize, seed: u64, mean: f64, sd: f64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dist = Normal::new(mean, sd).expect("finite parameters");
    (0..n).map(|_| dist.sample(&mut rng) as f32).collect()
}

pub fn tensor<const D: usize>(values: &[f32], dims: &[usize], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims.to_vec()), device)
}

/// A tensor's values as f32, whatever its float dtype.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor")
}

/// docs/SPEC.md's error measure: `||out - ref|| / ||ref||`.
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let num: f64 = out.iter().zip(reference).map(|(&o, &r)| (f64::from(o) - r).powi(2)).sum();
    let den: f64 = reference.iter().map(|r| r * r).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}
