//! One `wgpu::Device` for Burn and for this crate's kernels.
//!
//! Burn's wgpu runtime owns its device; the kernels need the same
//! `wgpu::Device` and `wgpu::Queue` to bind Burn's buffers. Both are reached
//! through a [`WgpuSetup`]: [`shared_device`] brings one up the way Burn would
//! and [`attach`] takes the caller's own. Either registers a
//! [`GpuContext`] over it, which the backend finds again by Burn's device.

use std::sync::{Arc, Mutex};

use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, WgpuSetup};
use burn::tensor::Device;
use burn_cubecl::CubeDevice;
use cubecl_wgpu::{AutoGraphicsApi, WgpuBackend};
use wgpu_batchnorm::GpuContext;

use crate::{Error, Result};

/// The contexts registered so far, by Burn's device. A handful at most, so a
/// list beats a map.
static CONTEXTS: Mutex<Vec<(CubeDevice, Arc<GpuContext>)>> = Mutex::new(Vec::new());

/// Brings up Burn's wgpu runtime on the adapter `WGPU_BACKEND` names (any,
/// when unset), as Burn's own device selection would, and registers this
/// crate's kernels on the same `wgpu::Device`. Returns Burn's device (use
/// [`Device::autodiff`] for training) and the kernels' context.
///
/// Fails with [`Error::Burn`] where Burn's runtime already runs on that device
/// (it was used before this call): Burn configures a device once.
///
/// ```no_run
/// let (device, ctx) = wgpu_batchnorm_burn::shared_device()?;
/// println!("Burn and the kernels share {}", ctx.describe());
/// let _training = device.autodiff();
/// # Ok::<(), wgpu_batchnorm_burn::Error>(())
/// ```
pub fn shared_device() -> Result<(Device, Arc<GpuContext>)> {
    let selector = WgpuDevice::default().on(backend_from_env());
    let setup = cubecl_wgpu::try_init_setup::<AutoGraphicsApi>(&selector, RuntimeOptions::default())
        .map_err(|e| Error::Burn(format!("bringing up {selector:?}: {e}")))?;
    let ctx = Arc::new(GpuContext::from_device(setup.device, setup.queue)?);
    register(CubeDevice::Wgpu(selector.clone()), ctx.clone());
    Ok((Device::new(selector), ctx))
}

/// Registers a device the caller created (`setup`) with Burn and with this
/// crate, so that both run on it: the same `wgpu::Device`, queue and buffers.
/// Register a setup once.
pub fn attach(setup: WgpuSetup) -> Result<(Device, Arc<GpuContext>)> {
    let ctx = Arc::new(GpuContext::from_device(setup.device.clone(), setup.queue.clone())?);
    let device = cubecl_wgpu::try_init_device(setup, RuntimeOptions::default())
        .map_err(|e| Error::Burn(format!("registering the setup with Burn: {e}")))?;
    register(CubeDevice::Wgpu(device.clone()), ctx.clone());
    Ok((Device::new(device), ctx))
}

fn register(device: CubeDevice, ctx: Arc<GpuContext>) {
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    contexts.retain(|(d, _)| *d != device);
    contexts.push((device, ctx));
}

/// The context registered for `device`.
pub(crate) fn context(device: &CubeDevice) -> Result<Arc<GpuContext>> {
    let contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    contexts.iter().find(|(d, _)| d == device).map(|(_, ctx)| ctx.clone()).ok_or_else(|| Error::UnregisteredDevice(format!("{device:?}")))
}

/// The graphics API `WGPU_BACKEND` names, as this crate's own
/// [`ContextOptions::from_env`](wgpu_batchnorm::ContextOptions::from_env) reads it.
fn backend_from_env() -> WgpuBackend {
    match wgpu::Backends::from_env() {
        Some(b) if b == wgpu::Backends::VULKAN => WgpuBackend::Vulkan,
        Some(b) if b == wgpu::Backends::GL => WgpuBackend::Gl,
        Some(b) if b == wgpu::Backends::METAL => WgpuBackend::Metal,
        Some(b) if b == wgpu::Backends::DX12 => WgpuBackend::Dx12,
        _ => WgpuBackend::Auto,
    }
}
