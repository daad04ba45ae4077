//! The page's benchmark: each op's forward and backward over buffers bound
//! once ([`wgpu_batchnorm::Bound`]), recorded `RECORDS` times into one
//! encoder per timed submission; the median of the submissions.
//!
//! The clock: where the device grants `timestamp-query`, the GPU's, read from
//! two empty compute passes that bracket the records (WebGPU writes
//! timestamps only at pass boundaries); otherwise `performance.now()` around
//! the submission and its `onSubmittedWorkDone`.

use js_sys::{Function, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wgpu_batchnorm::{
    BackwardStats, Bound, Error, GpuContext, Layout, Norm, NormBackwardBuffers, NormForwardBuffers, NormParamGradBuffers, NormStats,
    Options, Result, Shape,
};

/// Records per timed submission: enough that a submission's own cost is small beside them.
const RECORDS: usize = 10;

/// One measured op on one shape.
pub struct Row {
    pub op: String,
    pub shape: String,
    /// Milliseconds per record, median over the submissions.
    pub ms: f64,
    /// The tensors it reads and writes (`x`, `y`; `dy`, `x`, `dx`), each
    /// counted once, over the time: the least traffic an op can have.
    pub gbps: f64,
    /// `"timestamp"` or `"wall"`.
    pub timer: &'static str,
}

/// Every case: batch norm in both layouts, layer, RMS and group norm.
pub async fn run(ctx: &GpuContext, reps: u32) -> Result<Vec<Row>> {
    let cases = [
        ("batch norm", Norm::Batch(Shape::new(&[8, 64, 28, 28], Layout::ChannelsFirst)?)),
        ("batch norm", Norm::Batch(Shape::new(&[8, 28, 28, 64], Layout::ChannelsLast)?)),
        ("layer norm", Norm::Layer { dims: vec![1024, 768], normalized_shape: vec![768] }),
        ("RMS norm", Norm::Rms { dims: vec![1024, 768], normalized_shape: vec![768] }),
        ("group norm G=8", Norm::Group { shape: Shape::new(&[2, 64, 32, 32], Layout::ChannelsFirst)?, groups: 8 }),
    ];
    let timer = Timer::new(ctx);
    let mut rows = Vec::new();
    for (name, norm) in cases {
        let shape = match &norm {
            Norm::Batch(s) | Norm::Group { shape: s, .. } | Norm::Instance(s) => format!("{:?} {:?}", s.dims(), s.layout()),
            Norm::Layer { dims, .. } | Norm::Rms { dims, .. } => format!("{dims:?}"),
        };
        let numel: usize = norm.dims().iter().product();
        let (forward, backward) = Case::new(ctx, &norm)?.bind(ctx, &norm)?;
        for (pass, bound, tensors) in [("forward", forward, 2), ("backward", backward, 3)] {
            let ms = timer.median_ms(ctx, &bound, reps).await?;
            let gbps = (tensors * numel * 4) as f64 / (ms * 1e6);
            rows.push(Row { op: format!("{name} {pass}"), shape: shape.clone(), ms, gbps, timer: timer.kind() });
        }
    }
    Ok(rows)
}

/// The buffers of one op's forward and backward, filled once.
struct Case {
    x: wgpu::Buffer,
    y: wgpu::Buffer,
    dy: wgpu::Buffer,
    dx: wgpu::Buffer,
    mean: wgpu::Buffer,
    rstd: wgpu::Buffer,
    gamma: wgpu::Buffer,
    beta: wgpu::Buffer,
    dgamma: wgpu::Buffer,
    dbeta: wgpu::Buffer,
}

impl Case {
    fn new(ctx: &GpuContext, norm: &Norm) -> Result<Self> {
        let numel: usize = norm.dims().iter().product();
        let (rows, params) = (norm.rows()?, norm.params()?);
        // Values of a spread like the tests': deterministic, any order of magnitude is fine for timing.
        let wave = |i: usize, k: f32| (i as f32 * k).sin() * 3.0 + (i % 7) as f32 * 0.1;
        let x: Vec<f32> = (0..numel).map(|i| wave(i, 0.37)).collect();
        let dy: Vec<f32> = (0..numel).map(|i| wave(i, 0.11) / 3.0).collect();
        Ok(Self {
            x: ctx.upload("x", &x)?,
            y: ctx.storage("y", numel)?,
            dy: ctx.upload("dy", &dy)?,
            dx: ctx.storage("dx", numel)?,
            mean: ctx.storage("mean", rows)?,
            rstd: ctx.storage("rstd", rows)?,
            gamma: ctx.upload("gamma", &vec![1.0; params])?,
            beta: ctx.upload("beta", &vec![0.0; params])?,
            dgamma: ctx.storage("dgamma", params)?,
            dbeta: ctx.storage("dbeta", params)?,
        })
    }

    /// The forward and the backward, each prepared and bound once (the
    /// backward at the statistics the forward writes).
    fn bind(&self, ctx: &GpuContext, norm: &Norm) -> Result<(Bound, Bound)> {
        let options = Options { affine: true, track_running_stats: false, ..norm.default_options() };
        let rms = matches!(norm, Norm::Rms { .. });
        let mean = (!rms).then(|| self.mean.slice(..));
        let forward = ctx.prepare_norm(norm, &options)?.bind(&NormForwardBuffers {
            x: self.x.slice(..),
            y: self.y.slice(..),
            stats: NormStats { mean, rstd: self.rstd.slice(..) },
            gamma: Some(self.gamma.slice(..)),
            beta: (!rms).then(|| self.beta.slice(..)),
            running: None,
            residual: None,
            workspace: None,
        })?;
        let backward = ctx.prepare_norm_backward(norm, &options, true)?.bind(&NormBackwardBuffers {
            dy: self.dy.slice(..),
            x: self.x.slice(..),
            dx: self.dx.slice(..),
            stats: BackwardStats::Saved(NormStats { mean, rstd: self.rstd.slice(..) }),
            gamma: Some(self.gamma.slice(..)),
            param_grads: Some(NormParamGradBuffers { dgamma: self.dgamma.slice(..), dbeta: (!rms).then(|| self.dbeta.slice(..)) }),
            z: None,
            dresidual: None,
            workspace: None,
        })?;
        Ok((forward, backward))
    }
}

/// Two timestamps and the buffers they travel back through.
struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

struct Timer {
    queries: Option<Queries>,
}

impl Timer {
    fn new(ctx: &GpuContext) -> Self {
        let device = ctx.device();
        let queries = device.features().contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let buffer = |usage| {
                device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps"), size: 16, usage, mapped_at_creation: false })
            };
            Queries {
                set: device.create_query_set(&wgpu::QuerySetDescriptor { label: None, ty: wgpu::QueryType::Timestamp, count: 2 }),
                resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                read: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            }
        });
        Self { queries }
    }

    fn kind(&self) -> &'static str {
        if self.queries.is_some() {
            "timestamp"
        } else {
            "wall"
        }
    }

    /// The median over `reps` submissions, after one untimed, of milliseconds per record.
    async fn median_ms(&self, ctx: &GpuContext, bound: &Bound, reps: u32) -> Result<f64> {
        self.submission_ms(ctx, bound).await?;
        let mut times = Vec::new();
        for _ in 0..reps {
            times.push(self.submission_ms(ctx, bound).await? / RECORDS as f64);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    async fn submission_ms(&self, ctx: &GpuContext, bound: &Bound) -> Result<f64> {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        let bracket = |encoder: &mut wgpu::CommandEncoder, index: u32| {
            if let Some(q) = &self.queries {
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: &q.set,
                    beginning_of_pass_write_index: Some(index),
                    end_of_pass_write_index: None,
                };
                drop(encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) }));
            }
        };
        bracket(&mut encoder, 0);
        for _ in 0..RECORDS {
            bound.record(&mut encoder)?;
        }
        bracket(&mut encoder, 1);
        if let Some(q) = &self.queries {
            encoder.resolve_query_set(&q.set, 0..2, &q.resolve, 0);
            encoder.copy_buffer_to_buffer(&q.resolve, 0, &q.read, 0, 16);
        }
        let start = now();
        ctx.queue().submit([encoder.finish()]);
        let queue = ctx.queue().clone();
        settled(move |done| queue.on_submitted_work_done(done)).await;
        let wall_ms = now() - start;
        let Some(q) = &self.queries else {
            return Ok(wall_ms);
        };
        let read = q.read.clone();
        settled(move |done| read.slice(..).map_async(wgpu::MapMode::Read, move |_| done())).await;
        let ticks: [u64; 2] = {
            let view = q.read.slice(..).get_mapped_range().map_err(|e| Error::Readback(e.to_string()))?;
            [0, 8].map(|at| u64::from_le_bytes(view[at..at + 8].try_into().unwrap_or_default()))
        };
        q.read.unmap();
        // WebGPU's timestamps are nanoseconds.
        Ok(ticks[1].saturating_sub(ticks[0]) as f64 / 1e6)
    }
}

/// Waits, on the event loop, for the callback `register` hands to wgpu.
async fn settled(register: impl FnOnce(Box<dyn FnOnce() + Send>)) {
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    register(Box::new(move || drop(sender.send(()))));
    receiver.receive().await;
}

/// `performance.now()`, in milliseconds.
fn now() -> f64 {
    let performance = Reflect::get(&js_sys::global(), &"performance".into()).unwrap_or(JsValue::UNDEFINED);
    let call = Reflect::get(&performance, &"now".into()).ok().and_then(|f| f.dyn_into::<Function>().ok());
    call.and_then(|f| f.call0(&performance).ok()).and_then(|t| t.as_f64()).unwrap_or(f64::NAN)
}
