//! wgpu-batchnorm's ops for JavaScript, on the browser's (or Deno's) WebGPU:
//! built for `wasm32-unknown-unknown` and bound by wasm-bindgen (`web/build.sh`).
//!
//! ```js
//! import init, { Gpu } from "./pkg/wgpu_batchnorm_web.js";
//! await init();
//! const gpu = await Gpu.create();
//! const { y, mean, rstd } = await gpu.norm({ op: "layer", x, dims: [2, 3], gamma, beta });
//! const { dx, dgamma, dbeta } = await gpu.normBackward({ op: "layer", dy, x, dims: [2, 3], mean, rstd, gamma });
//! ```
//!
//! Every call takes one object: `op` (`"batch"`, `"group"`, `"instance"`,
//! `"layer"` or `"rms"`), `dims`, the tensors as `Float32Array`s, and the
//! op's settings (`layout`: `"channels_first"` (default) or
//! `"channels_last"`; `groups`; `normalizedDims`, how many trailing dims
//! layer and RMS norm normalize over, default 1; `eps`, default the op's
//! PyTorch default; `momentum`). `gamma` (and but for RMS norm `beta`)
//! given means affine; `runningMean` and `runningVar` given means running
//! statistics are tracked, and come back updated. Each returns a promise of
//! an object of `Float32Array`s, rejected with the crate's error message
//! where an argument is wrong.
//!
//! wasm32 only: on other targets the crate is empty.
#![cfg(target_arch = "wasm32")]

mod bench;

use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use wgpu_batchnorm::check::{self, Report, Shapes};
use wgpu_batchnorm::ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::{GpuContext, Layout, Momentum, Norm, NormBackwardInputs, Options, RunningStats, Shape};

/// A WebGPU device with the crate's pipelines: `await Gpu.create()`.
#[wasm_bindgen]
pub struct Gpu {
    ctx: Rc<GpuContext>,
}

#[wasm_bindgen]
impl Gpu {
    /// Requests `navigator.gpu`'s adapter and a device with its limits.
    pub async fn create() -> Result<Gpu, JsError> {
        let ctx = GpuContext::new().await.map_err(|e| JsError::new(&e.to_string()))?;
        Ok(Gpu { ctx: Rc::new(ctx) })
    }

    /// The adapter, as the crate describes it.
    pub fn adapter(&self) -> String {
        self.ctx.describe()
    }

    /// Whether f16 tensors run through WGSL's `f16` (`shader-f16`), else through 32-bit words.
    #[wasm_bindgen(js_name = shaderF16)]
    pub fn shader_f16(&self) -> bool {
        self.ctx.shader_f16()
    }

    /// The forward with the input's own statistics (training mode):
    /// `{ y, mean, rstd, runningMean, runningVar }` (`mean` absent for RMS
    /// norm, the running statistics where tracked).
    pub fn norm(&self, args: JsValue) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let call = Call::read(&args)?;
            let x = call.tensor("x")?;
            let (gamma, beta) = (call.floats("gamma")?, call.floats("beta")?);
            let mut running = call.running()?;
            let options = call.options(gamma.is_some(), running.is_some())?;
            let out =
                ctx.norm(&call.norm, x.view(), gamma.as_deref(), beta.as_deref(), running.as_mut(), &options).await.map_err(crate_error)?;
            object([
                ("y", Some(tensor(&out.y))),
                ("mean", out.mean.as_deref().map(float_array)),
                ("rstd", Some(float_array(&out.rstd))),
                ("runningMean", running.as_ref().map(|r| float_array(&r.mean))),
                ("runningVar", running.as_ref().map(|r| float_array(&r.var))),
            ])
        })
    }

    /// The backward: `{ dx, dgamma, dbeta }` (the last two where `gamma` is
    /// given; no `dbeta` for RMS norm). At the forward's saved `mean` and
    /// `rstd`, or, for batch and instance norm, at `runningMean` and
    /// `runningVar` (the backward of [`Gpu::norm_inference`]).
    #[wasm_bindgen(js_name = normBackward)]
    pub fn norm_backward(&self, args: JsValue) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let call = Call::read(&args)?;
            let (dy, x) = (call.tensor("dy")?, call.tensor("x")?);
            let gamma = call.floats("gamma")?;
            let running = call.running()?;
            let options = call.options(gamma.is_some(), running.is_some())?;
            let inputs = NormBackwardInputs { dy: dy.view(), x: x.view(), z: None };
            let grads = match &running {
                Some(running) => ctx.norm_backward(&call.norm, &inputs, running.backward_stats(), gamma.as_deref(), &options).await,
                None => {
                    let (mean, rstd) = (call.floats("mean")?, call.floats("rstd")?.ok_or_else(|| missing("rstd"))?);
                    let stats = wgpu_batchnorm::NormStats { mean: mean.as_deref(), rstd: &rstd[..] };
                    ctx.norm_backward(&call.norm, &inputs, stats, gamma.as_deref(), &options).await
                }
            }
            .map_err(crate_error)?;
            object([
                ("dx", Some(tensor(&grads.dx))),
                ("dgamma", grads.dgamma.as_deref().map(float_array)),
                ("dbeta", grads.dbeta.as_deref().map(float_array)),
            ])
        })
    }

    /// Batch or instance norm's inference forward at `runningMean` and `runningVar`: `{ y }`.
    #[wasm_bindgen(js_name = normInference)]
    pub fn norm_inference(&self, args: JsValue) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let call = Call::read(&args)?;
            let x = call.tensor("x")?;
            let (gamma, beta) = (call.floats("gamma")?, call.floats("beta")?);
            let running = call.running()?.ok_or_else(|| missing("runningMean and runningVar"))?;
            let options = call.options(gamma.is_some(), true)?;
            let y = ctx
                .norm_inference(&call.norm, x.view(), gamma.as_deref(), beta.as_deref(), &running, &options)
                .await
                .map_err(crate_error)?;
            object([("y", Some(tensor(&y)))])
        })
    }

    /// The crate's check (`wgpu_batchnorm::check`): every op, dtype and
    /// layout against the f64 reference computed here in wasm, at
    /// docs/SPEC.md's bounds, on small shapes (`quick`) or the benchmark's.
    /// `{ checks, failed, lines, json }`, or rejected where an op returned an
    /// error (its message says how many checks came before it).
    #[wasm_bindgen(js_name = selfCheck)]
    pub fn self_check(&self, quick: bool) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let shapes = if quick { Shapes::Quick } else { Shapes::Benchmark };
            let mut report = Report::default();
            if let Err(e) = check::run(&ctx, shapes, &mut report).await {
                let done = report.outcomes.len();
                return Err(JsError::new(&format!("an op returned {e} ({done} checks before it)")).into());
            }
            object([
                ("checks", Some(report.outcomes.len().into())),
                ("failed", Some(report.failed().into())),
                ("lines", Some(report.lines().into_iter().map(JsValue::from).collect::<Array>().into())),
                ("json", Some(report.to_json().into())),
            ])
        })
    }

    /// The page's benchmark (see `bench`): one row per op and shape,
    /// `{ op, shape, ms, gbps, timer }`, `reps` timed submissions each.
    pub fn benchmark(&self, reps: u32) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let rows = bench::run(&ctx, reps.max(1)).await.map_err(crate_error)?;
            let out = Array::new();
            for row in rows {
                out.push(&object([
                    ("op", Some(row.op.into())),
                    ("shape", Some(row.shape.into())),
                    ("ms", Some(row.ms.into())),
                    ("gbps", Some(row.gbps.into())),
                    ("timer", Some(row.timer.into())),
                ])?);
            }
            Ok(out.into())
        })
    }
}

/// One call's arguments, read from its object.
struct Call {
    args: JsValue,
    norm: Norm,
}

impl Call {
    fn read(args: &JsValue) -> Result<Self, JsValue> {
        let get = |key: &str| Reflect::get(args, &key.into());
        let op = get("op")?.as_string().ok_or_else(|| missing("op"))?;
        let dims: Vec<usize> = match get("dims")? {
            v if Array::is_array(&v) => Array::from(&v).iter().map(|d| d.as_f64().map(|d| d as usize)).collect::<Option<_>>(),
            _ => None,
        }
        .ok_or_else(|| missing("dims (an array of numbers)"))?;
        let layout = match get("layout")?.as_string().as_deref() {
            None | Some("channels_first") => Layout::ChannelsFirst,
            Some("channels_last") => Layout::ChannelsLast,
            Some(other) => return Err(bad(&format!("layout {other:?}: \"channels_first\" or \"channels_last\""))),
        };
        let shape = || Shape::new(&dims, layout).map_err(crate_error);
        let trailing = || {
            let k = get("normalizedDims").ok().and_then(|v| v.as_f64()).map_or(1, |k| k as usize);
            dims[dims.len().saturating_sub(k)..].to_vec()
        };
        let norm = match op.as_str() {
            "batch" => Norm::Batch(shape()?),
            "instance" => Norm::Instance(shape()?),
            "group" => {
                let groups = get("groups")?.as_f64().ok_or_else(|| missing("groups"))? as usize;
                Norm::Group { shape: shape()?, groups }
            }
            "layer" => Norm::Layer { normalized_shape: trailing(), dims: dims.clone() },
            "rms" => Norm::Rms { normalized_shape: trailing(), dims: dims.clone() },
            other => return Err(bad(&format!("op {other:?}: one of batch, group, instance, layer, rms"))),
        };
        Ok(Self { args: args.clone(), norm })
    }

    /// The `Float32Array` (or array of numbers) at `key`, if given.
    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>, JsValue> {
        match Reflect::get(&self.args, &key.into())? {
            v if v.is_undefined() || v.is_null() => Ok(None),
            v if v.is_instance_of::<Float32Array>() => Ok(Some(Float32Array::from(v).to_vec())),
            v if Array::is_array(&v) => {
                let values = Array::from(&v).iter().map(|e| e.as_f64().map(|e| e as f32)).collect::<Option<Vec<f32>>>();
                values.map(Some).ok_or_else(|| bad(&format!("{key}: not all numbers")))
            }
            _ => Err(bad(&format!("{key}: a Float32Array or an array of numbers"))),
        }
    }

    /// The tensor at `key` in the call's dims.
    fn tensor(&self, key: &str) -> Result<ArrayD<f32>, JsValue> {
        let values = self.floats(key)?.ok_or_else(|| missing(key))?;
        let dims = self.norm.dims();
        let len = values.len();
        ArrayD::from_shape_vec(IxDyn(dims), values).map_err(|_| bad(&format!("{key}: {len} values for dims {dims:?}")))
    }

    /// `runningMean` and `runningVar`, both or neither.
    fn running(&self) -> Result<Option<RunningStats>, JsValue> {
        match (self.floats("runningMean")?, self.floats("runningVar")?) {
            (Some(mean), Some(var)) => Ok(Some(RunningStats { mean, var, num_batches_tracked: 0 })),
            (None, None) => Ok(None),
            _ => Err(bad("runningMean and runningVar: both or neither")),
        }
    }

    /// The op's PyTorch defaults with the call's affine, tracking, `eps` and `momentum`.
    fn options(&self, affine: bool, track_running_stats: bool) -> Result<Options, JsValue> {
        let number = |key: &str| Reflect::get(&self.args, &key.into()).map(|v| v.as_f64());
        let defaults = self.norm.default_options();
        Ok(Options {
            affine,
            track_running_stats,
            eps: number("eps")?.map_or(defaults.eps, |e| e as f32),
            momentum: number("momentum")?.map_or(defaults.momentum, |m| Momentum::Exponential(m as f32)),
            ..defaults
        })
    }
}

fn float_array(values: &[f32]) -> JsValue {
    Float32Array::from(values).into()
}

/// A tensor's values in its logical (row-major) order.
fn tensor(a: &ArrayD<f32>) -> JsValue {
    match a.as_slice() {
        Some(values) => float_array(values),
        None => float_array(&a.iter().copied().collect::<Vec<f32>>()),
    }
}

/// An object of the fields given (`Some`).
fn object<const N: usize>(fields: [(&str, Option<JsValue>); N]) -> Result<JsValue, JsValue> {
    let object = Object::new();
    for (key, value) in fields {
        if let Some(value) = value {
            Reflect::set(&object, &key.into(), &value)?;
        }
    }
    Ok(object.into())
}

fn crate_error(e: wgpu_batchnorm::Error) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn missing(what: &str) -> JsValue {
    JsError::new(&format!("missing argument: {what}")).into()
}

fn bad(what: &str) -> JsValue {
    JsError::new(&format!("bad argument: {what}")).into()
}
