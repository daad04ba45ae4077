//! The GPU context: device, queue, cached pipelines, buffer helpers and readback.

use std::sync::{Arc, Mutex, OnceLock};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::liveness::Liveness;
use crate::options::{Dtype, Element};
use crate::pipelines::PipelineCache;
use crate::plan::{Plan, Tuning};
use crate::prepared::Prepared;
use crate::shaders::{Fusion, Variant};
use crate::shape::Shape;

/// Prepared ops the one-shot and high-level calls keep, most recent last.
const PREPARED_OPS: usize = 16;

/// What a cached prepared op was prepared for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PreparedKey {
    pub op: &'static str,
    pub dims: Vec<usize>,
    pub layout: Layout,
    /// The op's scalars (eps, momentum) as bits, and its flags.
    pub scalars: [u32; 2],
    pub flags: u32,
    /// The fused epilogue it was compiled with, and its LeakyReLU slope's bits
    /// (the uniform's, not compiled in).
    pub fusion: Fusion,
    pub slope: u32,
    /// The element type of its tensors.
    pub dtype: Dtype,
}

impl PreparedKey {
    pub fn new(op: &'static str, shape: &Shape, scalars: [u32; 2], flags: u32) -> Self {
        Self { op, dims: shape.dims().to_vec(), layout: shape.layout(), scalars, flags, fusion: Fusion::NONE, slope: 0, dtype: Dtype::F32 }
    }

    /// This key for tensors of `dtype`.
    pub fn typed(self, dtype: Dtype) -> Self {
        Self { dtype, ..self }
    }

    /// This key with the fused `epilogue`.
    pub fn fused(self, epilogue: &crate::options::Epilogue) -> Self {
        Self { fusion: Fusion::of(epilogue), slope: epilogue.activation.slope().to_bits(), ..self }
    }
}

/// One buffer binding of a dispatch the benchmark records itself.
#[cfg(any(test, feature = "bench"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    index: u32,
    buffer: &'a wgpu::Buffer,
    offset: u64,
    size: Option<u64>,
}

#[cfg(any(test, feature = "bench"))]
impl<'a> Binding<'a> {
    /// All of `buffer` at binding `index`.
    pub fn whole(index: u32, buffer: &'a wgpu::Buffer) -> Self {
        Self { index, buffer, offset: 0, size: None }
    }

    /// `size` bytes of `buffer` from `offset`, at binding `index`.
    pub fn range(index: u32, buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        Self { index, buffer, offset, size: Some(size) }
    }
}

/// One lock a context's high-level ops hold, shared by every context on one GL adapter.
type Serial = Arc<futures_intrusive::sync::Mutex<()>>;

/// An adapter the process's contexts share, and the lock their ops take on GL.
#[derive(Debug, Clone)]
struct SharedAdapter {
    adapter: wgpu::Adapter,
    serial: Serial,
}

/// The process's wgpu instance for `backends`, made on first use and shared
/// by every context this crate makes. wgpu numbers buffers per instance and
/// compares them by number, so a buffer of one instance passed to a device of
/// another could stand for an unrelated buffer of that device; within one
/// instance wgpu sees the mismatch, and a call over it is an error.
fn shared_instance(backends: wgpu::Backends) -> wgpu::Instance {
    static INSTANCES: OnceLock<Mutex<Vec<(wgpu::Backends, wgpu::Instance)>>> = OnceLock::new();
    let mut instances = INSTANCES.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, instance)) = instances.iter().find(|(b, _)| *b == backends) {
        return instance.clone();
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle_from_env() });
    instances.push((backends, instance.clone()));
    instance
}

/// The adapter `options` pick, from the adapters of [`shared_instance`],
/// enumerated once a process and kept: every device this crate requests is
/// of one instance, and of one adapter object per adapter. wgpu's GL backend
/// gives every adapter it enumerates the instance's one EGL context, each
/// enumeration's adapters with locks of their own, and makes the context
/// current outside them while it enumerates or drops an adapter: devices of
/// two enumerations used from two threads made it current on both (EGL's
/// `BadAccess`, a panic inside wgpu). The devices of one adapter object share
/// its lock, and the contexts on it [`Serial`]'s.
async fn shared_adapter(options: &ContextOptions) -> Result<SharedAdapter> {
    // Held across the enumeration, so that no two threads enumerate at once.
    type Enumerated = Vec<(wgpu::Backends, Vec<SharedAdapter>)>;
    static ADAPTERS: OnceLock<futures_intrusive::sync::Mutex<Enumerated>> = OnceLock::new();
    let mut enumerated = ADAPTERS.get_or_init(|| futures_intrusive::sync::Mutex::new(Vec::new(), true)).lock().await;
    if !enumerated.iter().any(|(b, _)| *b == options.backends) {
        let found = shared_instance(options.backends).enumerate_adapters(options.backends).await;
        let shared =
            found.into_iter().map(|adapter| SharedAdapter { adapter, serial: Arc::new(futures_intrusive::sync::Mutex::new((), true)) });
        enumerated.push((options.backends, shared.collect()));
    }
    let adapters = enumerated.iter().find(|(b, _)| *b == options.backends).map(|(_, a)| a.as_slice()).unwrap_or_default();
    let names = || adapters.iter().map(|a| a.adapter.get_info().name).collect::<Vec<_>>();
    let picked = match &options.adapter_name {
        Some(name) => {
            let wanted = name.to_lowercase();
            adapters.iter().find(|a| a.adapter.get_info().name.to_lowercase().contains(&wanted)).ok_or_else(|| {
                Error::NoAdapter(format!("none named like {name:?} among {:?} (backends {:?})", names(), options.backends))
            })?
        }
        None => {
            // wgpu's own choice: GPUs first, the preferred kind before the
            // other (without a preference, in order), then virtual, CPU, other.
            use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, VirtualGpu};
            let rank = |a: &SharedAdapter| match (a.adapter.get_info().device_type, options.power_preference) {
                (DiscreteGpu, wgpu::PowerPreference::LowPower) | (IntegratedGpu, wgpu::PowerPreference::HighPerformance) => 1,
                (DiscreteGpu | IntegratedGpu, _) => 0,
                (VirtualGpu, _) => 2,
                (Cpu, _) => 3,
                _ => 4,
            };
            adapters
                .iter()
                .min_by_key(|a| rank(a))
                .ok_or_else(|| Error::NoAdapter(format!("no adapter among the backends {:?}", options.backends)))?
        }
    };
    Ok(picked.clone())
}

/// How to pick an adapter. [`ContextOptions::from_env`] reads the variables
/// wgpu's own utilities read.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextOptions {
    /// Backends to consider (`WGPU_BACKEND`, e.g. `vulkan`, `gl`, `metal`, `dx12`).
    pub backends: wgpu::Backends,
    /// `WGPU_POWER_PREF`: `low` or `high`.
    pub power_preference: wgpu::PowerPreference,
    /// `WGPU_ADAPTER_NAME`: a case-insensitive part of the adapter's name.
    pub adapter_name: Option<String>,
    /// Ask for `wgpu::Features::SHADER_F16` where the adapter has it, so that
    /// f16 tensors run through WGSL's `f16` (by default `true`); without it
    /// they run through 32-bit words, as on adapters that lack the feature.
    pub shader_f16: bool,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self { backends: wgpu::Backends::all(), power_preference: wgpu::PowerPreference::default(), adapter_name: None, shader_f16: true }
    }
}

impl ContextOptions {
    /// Options from `WGPU_BACKEND`, `WGPU_POWER_PREF` and `WGPU_ADAPTER_NAME`,
    /// with defaults for what is unset.
    pub fn from_env() -> Self {
        Self {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME").ok().filter(|s| !s.is_empty()),
            shader_f16: true,
        }
    }
}

/// A device and queue with the batch-norm pipelines compiled for them.
///
/// Create one per device and share it (`Arc<GpuContext>`): it is `Send + Sync`
/// and every op takes `&self`. On the GL backend the high-level ops run one at a
/// time (wgpu's GL context lock panics when held too long by another thread);
/// callers recording low-level ops from several threads on GL must serialize
/// their submits and polls the same way.
///
/// ```no_run
/// let ctx = wgpu_batchnorm::GpuContext::new_blocking()?;
/// println!("running on {}", ctx.describe());
/// # Ok::<(), wgpu_batchnorm::Error>(())
/// ```
#[derive(Debug)]
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    pipelines: Arc<PipelineCache>,
    /// Bound where an optional buffer is absent; see [`Unused`](crate::device::Unused).
    unused: Arc<[wgpu::Buffer; 3]>,
    /// The 256 byte values a record copies its own running factor from.
    byte_values: wgpu::Buffer,
    prepared: Mutex<Vec<(PreparedKey, Arc<Prepared>)>>,
    liveness: Arc<Liveness>,
    tuning: Tuning,
    /// wgpu's GL backend guards its EGL context with a lock that panics after a
    /// timeout ("Could not lock adapter context"), so on GL one op holding it for
    /// long (a large tensor) made other threads' ops panic inside wgpu. There the
    /// contexts on one adapter run their high-level ops one at a time instead.
    serial: Option<Serial>,
}

impl GpuContext {
    /// A context on the adapter chosen by [`ContextOptions::from_env`].
    pub async fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::from_env()).await
    }

    /// Blocking [`GpuContext::new`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Blocking [`GpuContext::with_options`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options_blocking(options: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options(options))
    }

    /// A context on the adapter `options` choose, with the adapter's own limits
    /// (not wgpu's defaults), and timestamp queries, subgroups and (as
    /// `options.shader_f16` says) `SHADER_F16` where the adapter has them.
    pub async fn with_options(options: &ContextOptions) -> Result<Self> {
        let SharedAdapter { adapter, serial } = shared_adapter(options).await?;
        // On GL, the adapter's other contexts wait while this one's device and
        // buffers are made: they share wgpu's GL lock (see `serial`).
        let gl = adapter.get_info().backend == wgpu::Backend::Gl;
        let _serial = match gl {
            true => Some(serial.lock().await),
            false => None,
        };
        let mut wanted_features =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS | wgpu::Features::SUBGROUP;
        wanted_features.set(wgpu::Features::SHADER_F16, options.shader_f16);
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-batchnorm"),
                required_features: adapter.features() & wanted_features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        // Errors are caught by error scopes around each call; one that escapes them
        // must not abort the caller's process from wgpu's default panicking handler.
        device.on_uncaptured_error(Arc::new(|e| eprintln!("wgpu-batchnorm: uncaptured wgpu error: {e}")));
        let mut ctx = Self::build(device, queue)?;
        if ctx.serial.is_some() {
            ctx.serial = Some(serial.clone());
        }
        let liveness = ctx.liveness.clone();
        ctx.device.set_device_lost_callback(move |reason, message| {
            liveness.mark(format!("{reason:?}: {message}"));
        });
        Ok(ctx)
    }

    /// Wraps a device and queue the caller already has, tuned for its adapter.
    /// Their error and device-lost handlers are left as they are: every call
    /// runs its work inside error scopes, and finds a loss by itself
    /// ([`GpuContext::check_alive`]), so that a lost device is
    /// [`Error::DeviceLost`], never a panic of wgpu's default handler.
    ///
    /// Every buffer passed to the context's calls must be of this device: one
    /// of another device of the same wgpu instance is [`Error::BadBuffer`],
    /// but wgpu cannot tell a buffer of another instance's device from one of
    /// this device's (contexts made by [`GpuContext::new`] share one instance).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Self::build(device, queue)
    }

    fn build(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        let adapter_info = device.adapter_info();
        let liveness = Arc::new(Liveness::default());
        let tuning = Tuning::for_device(adapter_info.device_type);
        let serial = (adapter_info.backend == wgpu::Backend::Gl).then(|| Arc::new(futures_intrusive::sync::Mutex::new((), true)));
        let (unused, byte_values) = liveness.scoped(&device, || {
            let unused = Arc::new(std::array::from_fn(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-batchnorm unused binding"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            }));
            let byte_values = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm byte values"),
                size: 256 * 4,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let words: Vec<u32> = (0..256).collect();
            queue.write_buffer(&byte_values, 0, bytemuck::cast_slice(&words));
            (unused, byte_values)
        })?;
        Ok(Self {
            device,
            queue,
            adapter_info,
            pipelines: Arc::default(),
            unused,
            byte_values,
            prepared: Mutex::new(Vec::new()),
            liveness,
            tuning,
            serial,
        })
    }

    /// What a prepared op keeps of this context.
    pub(crate) fn parts(&self) -> Device {
        Device {
            device: self.device.clone(),
            queue: self.queue.clone(),
            pipelines: self.pipelines.clone(),
            unused: self.unused.clone(),
            byte_values: self.byte_values.clone(),
            liveness: self.liveness.clone(),
        }
    }

    /// Whether one dispatch on this device may bind `buffers` storage buffers
    /// (WebGPU promises 8; the one-dispatch kernels with an epilogue bind more).
    pub(crate) fn binds_storage(&self, buffers: u32) -> bool {
        buffers <= self.device().limits().max_storage_buffers_per_shader_stage
    }

    /// The device's `min_storage_buffer_offset_alignment`: every slice passed
    /// to the low-level calls starts at a multiple of it.
    pub fn slice_alignment(&self) -> u64 {
        u64::from(self.device.limits().min_storage_buffer_offset_alignment)
    }

    /// The prepared op for `key`, from the context's cache or made and kept.
    pub(crate) fn cached(&self, key: PreparedKey, make: impl FnOnce() -> Result<Prepared>) -> Result<Arc<Prepared>> {
        let mut cache = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let entry = cache.remove(i);
            let prepared = entry.1.clone();
            cache.push(entry);
            return Ok(prepared);
        }
        let prepared = Arc::new(make()?);
        if cache.len() == PREPARED_OPS {
            cache.remove(0);
        }
        cache.push((key, prepared.clone()));
        Ok(prepared)
    }

    /// Whether the reduction kernels merge a workgroup's partial sums with
    /// subgroup shuffles rather than through workgroup memory: where the tuning
    /// allows it, the device has `wgpu::Features::SUBGROUP`, and its only
    /// subgroup size is the tuning's workgroup size (lavapipe's 8 with
    /// [`Tuning::CPU`]), so that a workgroup is exactly one full subgroup. The
    /// two trees merge in the same order and give bitwise the same results.
    pub fn subgroup_reductions(&self) -> bool {
        let (i, wg) = (&self.adapter_info, self.tuning.workgroup_size);
        self.tuning.subgroups
            && self.device.features().contains(wgpu::Features::SUBGROUP)
            && (i.subgroup_min_size, i.subgroup_max_size) == (wg, wg)
    }

    /// The shader variant of `plan`'s reduction passes (statistics, backward sums).
    pub(crate) fn reduction_variant(&self, plan: &Plan) -> Variant {
        Variant { subgroups: self.subgroup_reductions(), ..plan.variant() }
    }

    /// Whether f16 tensors run through WGSL's `f16` type: the device has
    /// `wgpu::Features::SHADER_F16`. Otherwise they run through 32-bit words
    /// converted with bit operations (round to nearest, ties to even); both
    /// meet the same accuracy bound (docs/SPEC.md, Half precision).
    pub fn shader_f16(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F16)
    }

    /// Replaces the tuning (by default [`Tuning::for_device`] of the adapter).
    /// Ops on a context whose tuning the kernels cannot run with return
    /// [`Error::InvalidTuning`].
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self.prepared = Mutex::new(Vec::new());
        self
    }

    /// The tuning in use.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter_info
    }

    /// `"name (backend, device type, driver)"`, for logs.
    pub fn describe(&self) -> String {
        let i = &self.adapter_info;
        format!("{} ({:?}, {:?}, driver {} {})", i.name, i.backend, i.device_type, i.driver, i.driver_info)
    }

    /// Held for the whole of a high-level op where the backend needs ops one at a
    /// time (GL, see the field); `None` elsewhere.
    pub(crate) async fn serialize(&self) -> Option<futures_intrusive::sync::MutexGuard<'_, ()>> {
        match &self.serial {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    /// [`Error::DeviceLost`] if the device has been lost (destroyed, reset or
    /// removed), also while work it was given is still in flight, and on a
    /// caller's device ([`GpuContext::from_device`]) whose lost callback is
    /// the caller's. Once lost, every later call of the context returns it.
    pub fn check_alive(&self) -> Result<()> {
        self.liveness.check(&self.device)
    }

    /// Marks the context lost; later calls fail with [`Error::DeviceLost`].
    fn mark_lost(&self, reason: String) -> Error {
        self.liveness.mark(reason)
    }

    /// [`Liveness::scoped`] on this context's device.
    pub(crate) fn scoped<T>(&self, make: impl FnOnce() -> T) -> Result<T> {
        self.liveness.scoped(&self.device, make)
    }

    /// The largest buffer binding the device allows, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.device.limits().max_storage_buffer_binding_size
    }

    pub(crate) fn max_groups_per_dim(&self) -> u32 {
        self.device.limits().max_compute_workgroups_per_dimension
    }

    /// An f32 storage buffer holding `data`, usable as copy source and destination.
    /// A device that refuses it (lost, out of memory) is an error, never a
    /// panic of the device's error handler.
    ///
    /// Written through the queue rather than mapped at creation, which panics
    /// inside wgpu when the device has been lost.
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.upload_tensor(label, data)
    }

    /// A storage buffer holding the tensor `data` as its [`Element::DTYPE`],
    /// [`Dtype::tensor_bytes`] long (padded to whole words): a slice the
    /// low-level calls take for a tensor of that dtype.
    ///
    /// ```no_run
    /// use wgpu_batchnorm::half::f16;
    /// let ctx = wgpu_batchnorm::GpuContext::new_blocking()?;
    /// let x = ctx.upload_tensor("x", &[f16::from_f32(1.5); 3])?;
    /// assert_eq!(x.size(), 16); // 6 bytes, padded; buffers are at least 16 bytes
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    pub fn upload_tensor<E: Element>(&self, label: &str, data: &[E]) -> Result<wgpu::Buffer> {
        self.scoped(|| {
            let buffer = self.new_buffer(label, E::DTYPE.tensor_bytes(data.len()));
            let bytes: &[u8] = bytemuck::cast_slice(data);
            // The queue writes whole words: an odd count of halves ends in a padded one.
            let whole = bytes.len() / 4 * 4;
            self.queue.write_buffer(&buffer, 0, &bytes[..whole]);
            if whole < bytes.len() {
                let mut last = [0u8; 4];
                last[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
                self.queue.write_buffer(&buffer, whole as u64, &last);
            }
            buffer
        })
    }

    /// An uninitialised storage buffer for a tensor of `numel` values of `dtype`.
    pub fn tensor_storage(&self, label: &str, dtype: Dtype, numel: usize) -> Result<wgpu::Buffer> {
        self.scratch(label, dtype.tensor_bytes(numel))
    }

    /// An uninitialised storage buffer of `len` f32s, usable as copy source and destination.
    pub fn storage(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        self.scratch(label, len as u64 * 4)
    }

    pub(crate) fn scratch(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.scoped(|| self.new_buffer(label, bytes))
    }

    /// Writes `data` into `buffer` from byte 0, inside error scopes.
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, data: &[f32]) -> Result<()> {
        self.scoped(|| self.queue.write_buffer(buffer, 0, bytemuck::cast_slice(data)))
    }

    fn new_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn uniform(&self, geometry: &crate::plan::Geometry) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-batchnorm geometry"),
            size: std::mem::size_of::<crate::plan::Geometry>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buffer, 0, bytemuck::bytes_of(geometry));
        buffer
    }

    /// The pipeline of `kernel` as `variant`, for the benchmark's own kernels.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn pipeline(&self, kernel: crate::shaders::Kernel, variant: Variant) -> Result<Arc<wgpu::ComputePipeline>> {
        self.pipelines.get(&self.device, &self.liveness, kernel, variant)
    }

    /// Records one dispatch of `pipeline` with `buffers` bound, for the
    /// benchmark's own kernels. Pipelines use automatic layouts, which keep
    /// only the bindings an entry point uses, under their declared numbers.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        grid: crate::plan::Grid,
        buffers: &[Binding<'_>],
    ) {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|b| wgpu::BindGroupEntry {
                binding: b.index,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: b.size.and_then(wgpu::BufferSize::new),
                }),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(grid.x, grid.y, 1);
    }

    /// Runs `record` inside validation and out-of-memory error scopes, submits
    /// what it recorded, and turns a captured wgpu error into [`Error::Wgpu`].
    pub(crate) async fn run<T>(&self, record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-batchnorm") });
        let recorded = record(&mut encoder);
        if recorded.is_ok() {
            self.queue.submit([encoder.finish()]);
        }
        let errors = [validation.pop().await, oom.pop().await];
        self.liveness.reported_late()?;
        let out = recorded?;
        if let Some(e) = errors.into_iter().flatten().next() {
            self.check_alive()?;
            return Err(Error::Wgpu(e.to_string()));
        }
        self.check_alive()?;
        Ok(out)
    }

    /// Waits for the device's work. On GL in short waits, each holding wgpu's
    /// GL lock for a few milliseconds, so that the other threads' calls on the
    /// adapter get it in between (wgpu panics after waiting 6 s for it).
    fn wait_idle(&self) -> Result<()> {
        let step = self.serial.as_ref().map(|_| std::time::Duration::from_millis(5));
        loop {
            match self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: step }) {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) if step.is_some() => std::thread::yield_now(),
                Err(e) => return Err(self.mark_lost(format!("poll failed while waiting for the device: {e}"))),
            }
        }
    }

    /// Copies each `(buffer, len)` of f32s back to the host, from each buffer's
    /// byte 0, in one staging buffer and one map.
    pub async fn download(&self, buffers: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let _serial = self.serialize().await;
        self.download_serialized(buffers).await
    }

    /// `numel` values of `E` from the start of `slice` (a tensor the low-level
    /// calls wrote, in its dtype), copied back to the host.
    ///
    /// ```no_run
    /// use wgpu_batchnorm::half::f16;
    /// let ctx = wgpu_batchnorm::GpuContext::new_blocking()?;
    /// let values = [1.5, -2.0, 0.25].map(f16::from_f32);
    /// let buffer = ctx.upload_tensor("x", &values)?;
    /// assert_eq!(ctx.download_tensor_blocking::<f16>(buffer.slice(..), 3)?, values);
    /// # Ok::<(), wgpu_batchnorm::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BadBuffer`] when the slice does not start on a 4-byte boundary,
    /// is shorter than the values, or its buffer cannot be copied from.
    pub async fn download_tensor<E: Element>(&self, slice: wgpu::BufferSlice<'_>, numel: usize) -> Result<Vec<E>> {
        let bytes = numel as u64 * E::DTYPE.size();
        let offset = slice.offset();
        let problem = if offset % wgpu::COPY_BUFFER_ALIGNMENT != 0 {
            Some(format!("starts at byte {offset}, not a multiple of {}", wgpu::COPY_BUFFER_ALIGNMENT))
        } else if bytes > slice.size() {
            Some(format!("{numel} values of {:?} ({bytes} bytes) asked from a slice of {} bytes", E::DTYPE, slice.size()))
        } else if !slice.buffer().usage().contains(wgpu::BufferUsages::COPY_SRC) {
            Some("its buffer was not made with COPY_SRC".into())
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(Error::BadBuffer { name: "download source", reason });
        }
        // Copies are whole words: an odd count of halves reads the rest of the
        // last word where the buffer has it, and drops it after.
        let words = bytes.div_ceil(4).min((slice.buffer().size() - offset) / 4);
        let _serial = self.serialize().await;
        let mut read = self.download_ranges::<u8>(&[(slice.buffer(), offset, words * 4)]).await?;
        let mut raw = read.pop().unwrap_or_default();
        raw.resize(bytes as usize, 0);
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    /// Blocking [`GpuContext::download_tensor`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_tensor_blocking<E: Element>(&self, slice: wgpu::BufferSlice<'_>, numel: usize) -> Result<Vec<E>> {
        pollster::block_on(self.download_tensor(slice, numel))
    }

    /// [`GpuContext::download`] for callers that already hold [`GpuContext::serialize`].
    pub(crate) async fn download_serialized(&self, buffers: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        for (buffer, n) in buffers {
            let bytes = *n as u64 * 4;
            if bytes > buffer.size() {
                return Err(Error::BadBuffer {
                    name: "download source",
                    reason: format!("{n} f32s ({bytes} bytes) asked from a buffer of {} bytes", buffer.size()),
                });
            }
        }
        let ranges: Vec<_> = buffers.iter().map(|(buffer, n)| (*buffer, 0, *n as u64 * 4)).collect();
        self.download_ranges(&ranges).await
    }

    /// Copies each `(buffer, offset, bytes)` (whole words, checked by the
    /// caller) back to the host as `T`s, in one staging buffer and one map.
    async fn download_ranges<T: bytemuck::Pod>(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<T>>> {
        let total: u64 = ranges.iter().map(|(_, _, bytes)| bytes).sum();
        let staging = self
            .run(|encoder| {
                let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-batchnorm readback"),
                    size: total.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut at = 0;
                for (buffer, offset, bytes) in ranges {
                    encoder.copy_buffer_to_buffer(buffer, *offset, &staging, at, *bytes);
                    at += bytes;
                }
                Ok(staging)
            })
            .await?;
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| sender.send(r).unwrap_or(()));
        self.wait_idle()?;
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.check_alive()?;
                return Err(Error::Readback(e.to_string()));
            }
            None => return Err(self.mark_lost("the map callback was dropped".into())),
        }
        let view = staging.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
        let mut out = Vec::with_capacity(ranges.len());
        let mut at = 0;
        for (_, _, bytes) in ranges {
            let range = &view[at as usize..(at + bytes) as usize];
            // Read in place where the mapping is aligned for `T` (wgpu maps at
            // 8-byte alignment and the ranges are whole words), else copied out.
            out.push(match bytemuck::try_cast_slice(range) {
                Ok(values) => values.to_vec(),
                Err(_) => bytemuck::pod_collect_to_vec(range),
            });
            at += bytes;
        }
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
