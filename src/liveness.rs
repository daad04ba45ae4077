//! Whether a device is lost, and the error scopes every device call runs in.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Whether the device is lost: what the device-lost callback, a failed poll
/// or a probe found, once found kept.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    lost: Mutex<Option<String>>,
    /// The first error a browser's error scope reported after [`Liveness::scoped`]
    /// returned, until an async call reports it ([`Liveness::reported_late`]).
    #[cfg(target_arch = "wasm32")]
    late: Arc<Mutex<Option<String>>>,
}

impl Liveness {
    /// The loss already found, if any: what every record checks.
    pub fn known(&self) -> Result<()> {
        match &*self.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(reason) => Err(Error::DeviceLost(reason.clone())),
            None => Ok(()),
        }
    }

    /// Marks the device lost; every later call fails with [`Error::DeviceLost`].
    pub fn mark(&self, reason: String) -> Error {
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        Error::DeviceLost(lost.get_or_insert(reason).clone())
    }

    /// Looks: a non-blocking poll (which runs the device-lost callback where
    /// the queue is empty), then a map request on a new 4-byte buffer, which
    /// wgpu refuses at once, calling back with an error, on a device that is
    /// no longer valid, even while its work is still in flight (its callback
    /// comes only once the queue is empty). The buffer is this call's alone,
    /// so that no other thread's poll settles its request meanwhile; dropping
    /// it cancels a pending one.
    pub fn check(&self, device: &wgpu::Device) -> Result<()> {
        self.known()?;
        if let Err(e) = device.poll(wgpu::PollType::Poll) {
            return Err(self.mark(format!("poll failed: {e}")));
        }
        self.known()?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let probe = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-batchnorm liveness probe"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let refused = Arc::new(Mutex::new(None));
        let answer = refused.clone();
        probe.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            *answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.is_err());
        });
        let at_once = *refused.lock().unwrap_or_else(|e| e.into_inner());
        drop(probe);
        drop((oom.pop(), scope.pop()));
        match at_once {
            Some(true) => Err(self.mark("the device is no longer valid (destroyed or lost)".into())),
            _ => Ok(()),
        }
    }

    /// Runs `make` (buffers, writes, pipelines, bind groups) on `device` inside
    /// validation and out-of-memory error scopes: an error it raises is
    /// returned, as [`Error::DeviceLost`] where the device is gone, never left
    /// to the device's uncaptured-error handler (which panics on a caller's
    /// device by default).
    ///
    /// On wasm32 the browser answers error scopes only after the thread
    /// returns to its event loop, which this synchronous call cannot wait for:
    /// there the error is kept and the context's next async call returns it
    /// ([`Liveness::reported_late`]).
    pub fn scoped<T>(&self, device: &wgpu::Device, make: impl FnOnce() -> T) -> Result<T> {
        self.known()?;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let made = make();
        #[cfg(target_arch = "wasm32")]
        {
            // Popped now, innermost first, so that later scopes nest as on native.
            let popped = [validation.pop(), oom.pop()];
            let late = self.late.clone();
            wasm_bindgen_futures::spawn_local(async move {
                for scope in popped {
                    if let Some(e) = scope.await {
                        late.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e.to_string());
                    }
                }
            });
            Ok(made)
        }
        #[cfg(not(target_arch = "wasm32"))]
        // wgpu's native backends validate as they record, so these futures are
        // ready when polled: this does not wait on the GPU.
        match [pollster::block_on(validation.pop()), pollster::block_on(oom.pop())].into_iter().flatten().next() {
            None => Ok(made),
            Some(e) => {
                self.check(device)?;
                Err(Error::Wgpu(e.to_string()))
            }
        }
    }

    /// An error a browser's error scope reported after [`Liveness::scoped`]
    /// returned, taken: the context's async calls check it once their own
    /// scopes, popped later, have answered. Always `Ok` on native targets,
    /// where `scoped` returns its errors itself.
    pub fn reported_late(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        if let Some(e) = self.late.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(Error::Wgpu(e));
        }
        Ok(())
    }
}
