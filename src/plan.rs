//! How a shape maps onto the kernels: item width, reduction strategy,
//! chunking and grids. The [`Geometry`] uniform carries the result to WGSL
//! (`shaders/common.wgsl` declares the same struct; a test in
//! `src/shaders.rs` compares the two layouts).

use crate::error::{Error, Result};
use crate::options::Dtype;
use crate::shaders::{Kernel, Variant, Width, EPILOGUE_WG, FUSED_ITEMS, PARAM_ROWS, PARTIAL_FLOATS};
use crate::shape::Shape;

/// The largest workgroup a tuning may ask for: WebGPU's default
/// `max_compute_invocations_per_workgroup`, which every adapter offers.
pub(crate) const MAX_WORKGROUP_SIZE: u32 = 256;
/// How the kernels split work: how many workgroups they aim for (enough to
/// fill the device, few enough that each invocation has work to amortize its
/// set-up and the workgroup's reduction tree) and how many invocations a
/// workgroup has (`WG` in WGSL, compiled into each pipeline).
///
/// ```
/// use wgpu_batchnorm::Tuning;
/// let fewer_groups = Tuning { reduce_groups: 256, ..Tuning::GPU };
/// assert_eq!(fewer_groups.workgroup_size, 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Workgroups of a reduction pass (stats, backward sums).
    pub reduce_groups: u32,
    /// Workgroups of a streaming pass (apply, dx).
    pub stream_groups: u32,
    /// Invocations per workgroup of every pass over the tensor: a power of two
    /// from 1 to 256 ([`Error::InvalidTuning`] otherwise).
    pub workgroup_size: u32,
    /// Run training forward in one pass (x read once, `forward_fused.wgsl`)
    /// where every channel's values fit in the registers of one workgroup.
    pub fuse_small_channels: bool,
    /// Run training forward and backward each in one dispatch where workgroups
    /// are narrow (fewer than 256 invocations) and channels many and short:
    /// an invocation takes a channel item (one channel, or four channels of a
    /// row where `S == 1`) whole, reducing it and then writing its output
    /// while its values are still in the host's caches (`forward_lanes.wgsl`,
    /// `backward_lanes.wgsl`). That needs at least 8 workgroups of channel
    /// items of at most 512 items each. `fuse_small_channels` takes
    /// precedence for the forward.
    pub one_dispatch: bool,
    /// Merge a workgroup's partial sums with subgroup shuffles instead of a
    /// tree through workgroup memory, where the device allows it (see
    /// [`GpuContext::subgroup_reductions`](crate::GpuContext::subgroup_reductions));
    /// both give bitwise the same results.
    pub subgroups: bool,
}

impl Tuning {
    /// For GPUs: a few channels still fill the device, and 256-invocation
    /// workgroups hide memory latency.
    pub const GPU: Tuning = Tuning {
        reduce_groups: 1024,
        stream_groups: 4096,
        workgroup_size: 256,
        fuse_small_channels: true,
        one_dispatch: false,
        subgroups: true,
    };
    /// For CPU adapters (llvmpipe, lavapipe, WARP), where a workgroup runs on one
    /// host thread, its invocations as SIMD lanes: one 8-lane workgroup needs no
    /// barrier to speak of, where a 256-invocation tree of barriers cost more than
    /// the data it reduced, and fewer, longer-running workgroups measure faster.
    /// The one-pass forward measured slower there than three passes: its
    /// per-invocation arrays live in memory on a CPU (BENCHMARKS.md). With
    /// lavapipe's subgroups of 8, a workgroup is one subgroup and its trees
    /// need no workgroup memory. Short channels take one dispatch each way
    /// (`one_dispatch`): on lavapipe, 256x1024's training forward took 0.58
    /// to 0.59 ms instead of 0.72 to 0.78, its backward 0.87 instead of 0.99
    /// (BENCHMARKS.md).
    pub const CPU: Tuning = Tuning {
        reduce_groups: REDUCE_CPU,
        stream_groups: STREAM_CPU,
        workgroup_size: 8,
        fuse_small_channels: false,
        one_dispatch: true,
        subgroups: true,
    };

    /// The tuning for an adapter of `device_type`.
    pub fn for_device(device_type: wgpu::DeviceType) -> Self {
        match device_type {
            wgpu::DeviceType::Cpu => Tuning::CPU,
            _ => Tuning::GPU,
        }
    }
}

const REDUCE_CPU: u32 = 64;
const STREAM_CPU: u32 = 64;
/// No loop in a kernel runs more iterations than this per invocation: Mesa's
/// llvmpipe and lavapipe silently end any shader loop after 65535 iterations
/// (gallivm's loop limiter), which truncated results before the planner bounded
/// every loop (tests run with one-workgroup tunings to keep it so).
pub(crate) const MAX_LOOP_ITERATIONS: u64 = 8192;
/// Rows of fewer items than this, and at least a workgroup, are streamed an
/// invocation a row (`Geometry::row_lanes`), not a workgroup a row: a short
/// row cost the workgroup about as much as a long one (its set-up, its
/// coefficients, its last partly idle step). Only workgroups of fewer
/// invocations than this take that path, so a GPU's wide workgroups keep
/// reading rows together.
const ROW_LANES_BELOW: u64 = 256;
/// The one-dispatch kernels (`Tuning::one_dispatch`) take channel items of
/// at most this many items: on lavapipe, 1024x1024 (rows of 1024 items) ran
/// both ways about a tenth slower than in passes, 512x1024 about as fast.
const LANES_MAX_ITEMS: u64 = 512;
/// ... and at least this many workgroups of channel items, to spread over the
/// host's threads.
const LANES_MIN_GROUPS: u64 = 8;
/// Reductions give each invocation at least this many items before adding chunks.
const MIN_ITEMS_PER_THREAD: u64 = 8;
/// Widest channel tile of the rows strategy, in items (and at most the workgroup).
pub(crate) const MAX_TILE_X: u32 = 64;

/// Which reduction kernels a shape uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// `S > 1`: a workgroup reduces one chunk of one channel.
    Inner,
    /// `S == 1`: a workgroup reduces a chunk of rows for a tile of channels.
    Rows,
}

/// Declares the uniform struct and the list of its fields' names, offsets and
/// types, which a test compares with naga's view of the WGSL declaration.
macro_rules! uniform {
    ($(#[$meta:meta])* struct $name:ident { $($field:ident: $ty:ident,)* }) => {
        $(#[$meta])*
        pub(crate) struct $name {
            $(pub $field: $ty,)*
        }

        impl $name {
            /// Each field's name, byte offset and type.
            #[cfg(test)]
            pub const FIELDS: &'static [(&'static str, usize, &'static str)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field), stringify!($ty))),*];
        }
    };
}

uniform! {
    /// The uniform every kernel reads; `shaders/common.wgsl` explains the fields.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    struct Geometry {
        channels: u32,
        inner: u32,
        outer: u32,
        inner_v: u32,
        channels_v: u32,
        items: u32,
        numel_v: u32,
        chunks: u32,
        chunk_len: u32,
        tile_x: u32,
        groups: u32,
        c_pad: u32,
        flags: u32,
        eps: f32,
        factor_b0: u32,
        factor_b1: u32,
        factor_b2: u32,
        factor_b3: u32,
        slope: f32,
        count: f32,
        unbias: f32,
        slice: u32,
        step_rows: u32,
        step_rem: u32,
        chunk_base: u32,
        chunk_stride: u32,
        fused_lanes: u32,
        fused_groups: u32,
        row_segments: u32,
        segment_len: u32,
        stream_units: u32,
        stream_groups: u32,
        norm_ka: u32,
        norm_ld: u32,
        norm_o: u32,
        norm_rows: u32,
        norm_params: u32,
        param_items: u32,
        param_chunks: u32,
        param_chunk_len: u32,
        param_tile: u32,
        param_groups: u32,
        walk_q: u32,
        walk_r: u32,
        walk_wrap: u32,
        param_units: u32,
        param_run: u32,
        row_base: u32,
        b_base: u32,
        param_chunk_base: u32,
        row_block: u32,
        row_lanes: u32,
    }
}

impl Geometry {
    /// Sets the running statistics' weight of a batch, as its f32's four
    /// bytes (low first), one a word: the form a record's own weight is
    /// copied in by (src/prepared.rs).
    pub fn set_factor(&mut self, factor: f32) {
        let [b0, b1, b2, b3] = factor.to_bits().to_le_bytes().map(u32::from);
        (self.factor_b0, self.factor_b1, self.factor_b2, self.factor_b3) = (b0, b1, b2, b3);
    }
}

/// A dispatch grid, folded into y where x would pass the device limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub x: u32,
    pub y: u32,
}

impl Grid {
    pub(crate) fn fold(groups: u64, max_per_dim: u32) -> Result<Self> {
        let max = u64::from(max_per_dim);
        let y = groups.div_ceil(max).max(1);
        if y > max {
            return Err(Error::TooLarge { what: "workgroups in one dispatch", requested: groups, limit: max * max });
        }
        let x = groups.div_ceil(y);
        Ok(Self { x: x as u32, y: y as u32 })
    }
}

/// `wg` if the kernels can be compiled with it: a power of two from 1 to 256.
pub(crate) fn check_workgroup_size(wg: u32) -> Result<u32> {
    if !wg.is_power_of_two() || wg > MAX_WORKGROUP_SIZE {
        return Err(Error::InvalidTuning(format!("workgroup_size must be a power of two from 1 to {MAX_WORKGROUP_SIZE}, got {wg}")));
    }
    Ok(wg)
}

/// Everything the host needs to record one op on one shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub width: Width,
    pub workgroup_size: u32,
    pub strategy: Strategy,
    pub geometry: Geometry,
    pub reduce_grid: Grid,
    pub stream_grid: Grid,
    pub epilogue_grid: Grid,
    /// The one-pass training forward's grid, where every channel's values fit
    /// in the registers of at most one workgroup.
    pub fused_grid: Option<Grid>,
    pub fused_workgroup_size: u32,
    /// The reductions take a channel an invocation (`stats_lanes.wgsl`,
    /// `backward_reduce_lanes.wgsl`): channels many and short, each one chunk.
    pub channel_lanes: bool,
    /// The grid of the one-dispatch training forward and backward
    /// (`forward_lanes.wgsl`, `backward_lanes.wgsl`, `Tuning::one_dispatch`):
    /// a channel item an invocation.
    pub lanes_grid: Option<Grid>,
}

impl Plan {
    /// Plans `shape`; fails where 32-bit indices or the grid limit would not cover it.
    pub fn new(shape: &Shape, max_groups_per_dim: u32, tuning: Tuning) -> Result<Self> {
        let wg = check_workgroup_size(tuning.workgroup_size)?;
        let (reduce_target, stream_target) = (u64::from(tuning.reduce_groups.max(1)), u64::from(tuning.stream_groups.max(1)));
        let (o, c, s) = (shape.outer() as u64, shape.channels() as u64, shape.inner() as u64);
        let numel = o * c * s;
        // Loops step up to one grid row of invocations past the end before they
        // stop, and that sum must not wrap in u32.
        let index_limit = u64::from(u32::MAX) - u64::from(max_groups_per_dim) * u64::from(wg);
        if numel > index_limit {
            return Err(Error::TooLarge { what: "elements (32-bit indexing)", requested: numel, limit: index_limit });
        }
        let strategy = if s > 1 { Strategy::Inner } else { Strategy::Rows };
        let width = match strategy {
            Strategy::Inner if s % 4 == 0 => Width::Vec4,
            Strategy::Rows if c % 4 == 0 => Width::Vec4,
            _ => Width::Scalar,
        };
        let w = u64::from(width.lanes());
        // `slice`: items in one o-slice, the streaming passes' x extent.
        let (inner_v, channels_v, slice) = match strategy {
            Strategy::Inner => (s / w, c, c * (s / w)),
            Strategy::Rows => (1, c / w, c / w),
        };
        let items = o * inner_v;
        let short_rows = strategy == Strategy::Inner && inner_v >= u64::from(wg) && inner_v < ROW_LANES_BELOW;
        let mut channel_lanes = false;
        let (chunks, chunk_len, tile_x, groups) = match strategy {
            Strategy::Inner => {
                let (chunks, len) = chunking(items, reduce_target.div_ceil(c), u64::from(wg));
                // Channels too many and short for a workgroup each: an
                // invocation each, in one chunk.
                channel_lanes = short_rows && chunks == 1 && c >= u64::from(wg) && items <= MAX_LOOP_ITERATIONS;
                let groups = if channel_lanes { c.div_ceil(u64::from(wg)) } else { c * chunks };
                (chunks, len, 1, groups)
            }
            Strategy::Rows => {
                let tile_x = (channels_v.next_power_of_two() as u32).min(MAX_TILE_X).min(wg);
                let tiles = channels_v.div_ceil(u64::from(tile_x));
                let rows_step = u64::from(wg / tile_x);
                let (chunks, len) = chunking(o, reduce_target.div_ceil(tiles), rows_step);
                (chunks, len, tile_x, tiles * chunks)
            }
        };
        // Fused: the fewest lanes per channel item (a power of two) that hold its
        // items in FUSED_ITEMS registers each, in workgroups of the tuning's size
        // or as many lanes, whichever is larger; a workgroup takes
        // fused_workgroup_size / lanes channel items.
        let fused_lanes = items.div_ceil(u64::from(FUSED_ITEMS)).next_power_of_two();
        let fused_workgroup_size = fused_lanes.max(u64::from(wg));
        let channel_items = if strategy == Strategy::Inner { c } else { channels_v };
        let fused_groups = if tuning.fuse_small_channels && fused_workgroup_size <= u64::from(MAX_WORKGROUP_SIZE) {
            channel_items.div_ceil(fused_workgroup_size / fused_lanes)
        } else {
            0
        };
        let lanes = tuning.one_dispatch
            && u64::from(wg) < ROW_LANES_BELOW
            && channel_items >= u64::from(wg) * LANES_MIN_GROUPS
            && items <= LANES_MAX_ITEMS;
        let m = (o * s) as f64;
        let mut geometry = Geometry {
            channels: c as u32,
            inner: s as u32,
            outer: o as u32,
            inner_v: inner_v as u32,
            channels_v: channels_v as u32,
            items: items as u32,
            numel_v: (numel / w) as u32,
            chunks: chunks as u32,
            chunk_len: chunk_len as u32,
            tile_x,
            groups: groups as u32,
            c_pad: c.next_multiple_of(4) as u32,
            count: m as f32,
            unbias: if m > 1.0 { (m / (m - 1.0)) as f32 } else { 1.0 },
            slice: slice as u32,
            step_rows: (u64::from(wg) / inner_v) as u32,
            step_rem: (u64::from(wg) % inner_v) as u32,
            chunk_stride: chunks as u32,
            fused_lanes: fused_lanes.min(u64::from(MAX_WORKGROUP_SIZE)) as u32,
            fused_groups: fused_groups as u32,
            ..Geometry::default()
        };
        let stream_grid = if short_rows {
            // One invocation a row: units are rows, dealt out as runs of rows.
            let rows = o * c;
            // An invocation's rows times their items stay within the loop bound.
            let runs_limit = MAX_LOOP_ITERATIONS / inner_v * u64::from(wg);
            let groups = stream_target.min(rows.div_ceil(u64::from(wg))).max(rows.div_ceil(runs_limit));
            geometry.row_lanes = 1;
            geometry.stream_units = rows as u32;
            geometry.stream_groups = groups as u32;
            Grid::fold(groups, max_groups_per_dim)?
        } else if strategy == Strategy::Inner && inner_v >= u64::from(wg) {
            let segments = Segments::new(o * c, inner_v, stream_target, u64::from(wg));
            geometry.row_segments = segments.per_row as u32;
            geometry.segment_len = segments.len as u32;
            geometry.stream_units = segments.units as u32;
            geometry.stream_groups = segments.groups as u32;
            Grid::fold(segments.groups, max_groups_per_dim)?
        } else {
            columns_grid(o, slice, stream_target, u64::from(wg), u64::from(max_groups_per_dim))?
        };
        Ok(Self {
            width,
            workgroup_size: wg,
            strategy,
            geometry,
            reduce_grid: Grid::fold(groups, max_groups_per_dim)?,
            stream_grid,
            epilogue_grid: Grid::fold(c.div_ceil(u64::from(EPILOGUE_WG)), max_groups_per_dim)?,
            fused_grid: if fused_groups > 0 { Some(Grid::fold(fused_groups, max_groups_per_dim)?) } else { None },
            fused_workgroup_size: fused_workgroup_size.min(u64::from(MAX_WORKGROUP_SIZE)) as u32,
            channel_lanes,
            lanes_grid: if lanes { Some(Grid::fold(channel_items.div_ceil(u64::from(wg)), max_groups_per_dim)?) } else { None },
        })
    }

    /// The shader variant of the passes over the tensor (reductions through
    /// workgroup memory; [`GpuContext`](crate::GpuContext) switches them to
    /// subgroups where it can).
    pub fn variant(&self) -> Variant {
        Variant::plain(self.width, self.workgroup_size)
    }

    /// The shader variant of the fused training forward.
    pub fn fused_variant(&self) -> Variant {
        Variant::plain(self.width, self.fused_workgroup_size)
    }

    /// The statistics kernel of this plan's strategy.
    pub fn stats_kernel(&self) -> Kernel {
        match self.strategy {
            Strategy::Inner if self.channel_lanes => Kernel::StatsLanes,
            Strategy::Inner => Kernel::StatsInner,
            Strategy::Rows => Kernel::StatsRows,
        }
    }

    /// The backward reduction kernel of this plan's strategy.
    pub fn reduce_kernel(&self) -> Kernel {
        match self.strategy {
            Strategy::Inner if self.channel_lanes => Kernel::BackwardReduceLanes,
            Strategy::Inner => Kernel::BackwardReduceInner,
            Strategy::Rows => Kernel::BackwardReduceRows,
        }
    }

    /// Bytes of the per-channel parameter buffer (`PARAM_ROWS` arrays of `c_pad` floats).
    pub fn params_bytes(&self) -> u64 {
        u64::from(self.geometry.c_pad) * u64::from(PARAM_ROWS) * 4
    }
}

/// One window of a tensor bound on its own: whole o-rows, `bytes` long, at
/// `offset` bytes into every tensor-sized buffer; `plan` covers just those rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    pub plan: Plan,
    pub offset: u64,
    pub bytes: u64,
    /// The normalization family's rows of the window, `(first, count)`,
    /// where its tensor passes bind the per-row arrays window by window
    /// (`shaders/norm.wgsl`'s `row_at`); `None` where they bind them whole.
    pub rows: Option<(u64, u64)>,
}

/// A tensor's plan for the per-channel passes (`full`) and for the tensor
/// passes, window by window, where the tensor is larger than one binding may be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Windowed {
    pub full: Plan,
    pub windows: Vec<Window>,
    /// Bytes of the partials and parameter scratch buffers where the op sizes
    /// them itself (the normalization family, `src/norms/`), instead of per channel.
    pub scratch: Option<(u64, u64)>,
    /// The element type of the tensor passes' tensors.
    pub dtype: Dtype,
}

impl Windowed {
    /// Windows of whole o-slices, each at most `max_binding` bytes and starting
    /// at a multiple of `alignment` bytes; one window when the tensor fits.
    pub fn new(shape: &Shape, max_groups_per_dim: u32, tuning: Tuning, max_binding: u64, alignment: u64, dtype: Dtype) -> Result<Self> {
        let mut full = Plan::new(shape, max_groups_per_dim, tuning)?;
        let slice_bytes = (shape.channels() * shape.inner()) as u64 * dtype.size();
        let bytes = dtype.tensor_bytes(shape.numel());
        if bytes <= max_binding {
            return Self { windows: vec![Window { plan: full.clone(), offset: 0, bytes, rows: None }], full, scratch: None, dtype }
                .check_partials(max_binding);
        }
        if slice_bytes > max_binding {
            return Err(Error::TooLarge {
                what: "max_storage_buffer_binding_size (one row of C * S values)",
                requested: slice_bytes,
                limit: max_binding,
            });
        }
        let align_rows = alignment / gcd(slice_bytes, alignment);
        let rows_per_window = (max_binding / slice_bytes) / align_rows * align_rows;
        if rows_per_window == 0 {
            return Err(Error::TooLarge {
                what: "max_storage_buffer_binding_size (aligned rows)",
                requested: slice_bytes * align_rows,
                limit: max_binding,
            });
        }
        let mut windows = Vec::new();
        let mut chunk_base = 0u32;
        let outer = shape.outer() as u64;
        let mut o = 0u64;
        while o < outer {
            let rows = rows_per_window.min(outer - o);
            let sub = Shape::new(&[rows as usize, shape.channels(), shape.inner()], crate::layout::Layout::ChannelsFirst)?;
            let mut plan = Plan::new(&sub, max_groups_per_dim, tuning)?;
            plan.geometry.chunk_base = chunk_base;
            chunk_base += plan.geometry.chunks;
            // A binding is whole words: only the last window can end mid-word (half dtypes).
            windows.push(Window { plan, offset: o * slice_bytes, bytes: (rows * slice_bytes).div_ceil(4) * 4, rows: None });
            o += rows;
        }
        for w in &mut windows {
            w.plan.geometry.chunk_stride = chunk_base;
        }
        full.geometry.chunks = chunk_base;
        full.geometry.chunk_stride = chunk_base;
        // The fused pass binds the whole tensor at once.
        full.fused_grid = None;
        Self { full, windows, scratch: None, dtype }.check_partials(max_binding)
    }

    fn check_partials(self, max_binding: u64) -> Result<Self> {
        if self.partials_bytes() > max_binding {
            return Err(Error::TooLarge {
                what: "max_storage_buffer_binding_size (per-channel partial results)",
                requested: self.partials_bytes(),
                limit: max_binding,
            });
        }
        Ok(self)
    }

    /// Bytes of the parameter buffer.
    pub fn params_bytes(&self) -> u64 {
        self.scratch.map_or_else(|| self.full.params_bytes(), |(_, params)| params)
    }

    /// Bytes of the partials buffer all windows share: `PARTIAL_FLOATS` floats
    /// per (channel, chunk).
    pub fn partials_bytes(&self) -> u64 {
        if let Some((partials, _)) = self.scratch {
            return partials;
        }
        u64::from(self.full.geometry.channels) * u64::from(self.full.geometry.chunk_stride) * u64::from(PARTIAL_FLOATS) * 4
    }
}

/// How the streaming passes cover rows of `inner_v` items, one channel each
/// (`stream.wgsl`): every row cut into `per_row` segments of `len` items (a
/// multiple of the workgroup), `units` segments in all, dealt to `groups`
/// workgroups as runs of consecutive segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segments {
    per_row: u64,
    len: u64,
    units: u64,
    groups: u64,
}

impl Segments {
    /// Enough segments for `target` workgroups, none longer than the loop bound
    /// allows, and enough workgroups that no run of segments passes it either.
    fn new(rows: u64, inner_v: u64, target: u64, wg: u64) -> Self {
        let longest = wg * MAX_LOOP_ITERATIONS;
        let per_row = target.div_ceil(rows).max(inner_v.div_ceil(longest)).clamp(1, inner_v.div_ceil(wg));
        let len = inner_v.div_ceil(per_row).next_multiple_of(wg);
        // Rounding the length up to whole workgroups can leave fewer segments.
        let per_row = inner_v.div_ceil(len);
        let units = rows * per_row;
        let runs_limit = MAX_LOOP_ITERATIONS / (len / wg);
        let groups = target.min(units).max(units.div_ceil(runs_limit));
        Self { per_row, len, units, groups }
    }
}

/// The grid of the columns cover (`stream.wgsl`): x covers one o-slice of
/// `slice` items, y splits the `o` slices into blocks of consecutive rows.
fn columns_grid(o: u64, slice: u64, target: u64, wg: u64, max_dim: u64) -> Result<Grid> {
    let x = slice.div_ceil(wg).min(max_dim);
    // The loops over t and over o nest: their iteration counts multiply.
    let t_iterations = slice.div_ceil(x * wg);
    let rows_limit = (MAX_LOOP_ITERATIONS / t_iterations).max(1);
    let rows_per_group = o.div_ceil(target.div_ceil(x).clamp(1, o)).min(rows_limit);
    let y = o.div_ceil(rows_per_group);
    if y > max_dim || t_iterations > MAX_LOOP_ITERATIONS {
        return Err(Error::TooLarge { what: "workgroups per dimension (streaming grid)", requested: y, limit: max_dim });
    }
    Ok(Grid { x: x as u32, y: y as u32 })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Splits `len` items into at most `want` chunks, each giving every one of
/// `lanes` invocations at least `MIN_ITEMS_PER_THREAD` items when it can.
/// Returns (chunks, items per chunk).
/// No chunk makes an invocation loop more than `MAX_LOOP_ITERATIONS` times.
pub(crate) fn chunking(len: u64, want: u64, lanes: u64) -> (u64, u64) {
    let most = len.div_ceil(lanes * MIN_ITEMS_PER_THREAD).max(1);
    let least = len.div_ceil(lanes * MAX_LOOP_ITERATIONS).max(1);
    let chunk_len = len.div_ceil(want.clamp(1, most).max(least));
    (len.div_ceil(chunk_len), chunk_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    fn plan(dims: &[usize], layout: Layout) -> Plan {
        Plan::new(&Shape::new(dims, layout).unwrap(), 65535, Tuning::GPU).unwrap()
    }

    #[test]
    fn width_and_strategy_follow_the_layout() {
        let p = plan(&[32, 64, 56, 56], Layout::ChannelsFirst);
        assert_eq!((p.width, p.strategy), (Width::Vec4, Strategy::Inner));
        assert_eq!(p.geometry.inner_v, 56 * 56 / 4);
        let p = plan(&[8, 512, 7, 7], Layout::ChannelsFirst);
        assert_eq!((p.width, p.strategy), (Width::Scalar, Strategy::Inner));
        let p = plan(&[32, 56, 56, 64], Layout::ChannelsLast);
        assert_eq!((p.width, p.strategy), (Width::Vec4, Strategy::Rows));
        assert_eq!((p.geometry.channels_v, p.geometry.tile_x), (16, 16));
        let p = plan(&[100, 3], Layout::ChannelsFirst);
        assert_eq!((p.width, p.strategy, p.geometry.tile_x), (Width::Scalar, Strategy::Rows, 4));
    }

    #[test]
    fn chunks_cover_every_item_exactly() {
        for (len, want, lanes) in [(1, 5, 256), (1000, 1, 256), (100_000, 1024, 256), (257, 3, 4), (7, 1024, 64), (1 << 31, 1, 256)] {
            let (chunks, chunk_len) = chunking(len, want, lanes);
            assert!(chunks * chunk_len >= len && (chunks - 1) * chunk_len < len, "{len} {want}");
            assert!(chunks <= want.max(len.div_ceil(lanes * MAX_LOOP_ITERATIONS)));
            assert!(chunk_len.div_ceil(lanes) <= MAX_LOOP_ITERATIONS, "{len} {want} {lanes}");
        }
    }

    /// Every kernel loop stays under the iteration bound, whatever the tuning.
    #[test]
    fn loops_stay_under_the_iteration_bound() {
        for (dims, layout, wg) in [
            (vec![1 << 24, 2, 1], Layout::ChannelsLast, 256),
            (vec![4096, 3, 4096], Layout::ChannelsFirst, 256),
            (vec![2, 1 << 22, 1], Layout::ChannelsLast, 256),
            (vec![1 << 24, 2, 1], Layout::ChannelsLast, 8),
            (vec![4096, 3, 4096], Layout::ChannelsFirst, 1),
        ] {
            let one = Tuning {
                reduce_groups: 1,
                stream_groups: 1,
                workgroup_size: wg,
                fuse_small_channels: false,
                one_dispatch: false,
                subgroups: false,
            };
            let p = Plan::new(&Shape::new(&dims, layout).unwrap(), 65535, one).unwrap();
            let g = p.geometry;
            let wg = u64::from(p.workgroup_size);
            let (outer_iterations, inner_iterations) = if g.row_lanes > 0 {
                (u64::from(g.stream_units).div_ceil(u64::from(g.stream_groups)).div_ceil(wg), u64::from(g.inner_v))
            } else if g.row_segments > 0 {
                (u64::from(g.stream_units).div_ceil(u64::from(g.stream_groups)), u64::from(g.segment_len) / wg)
            } else {
                (u64::from(g.slice).div_ceil(u64::from(p.stream_grid.x) * wg), u64::from(g.outer).div_ceil(u64::from(p.stream_grid.y)))
            };
            assert!(outer_iterations * inner_iterations <= MAX_LOOP_ITERATIONS, "{dims:?}: {outer_iterations} x {inner_iterations}");
            let lanes = match p.strategy {
                Strategy::Inner => u64::from(p.workgroup_size),
                Strategy::Rows => u64::from(p.workgroup_size / g.tile_x),
            };
            assert!(u64::from(g.chunk_len).div_ceil(lanes) <= MAX_LOOP_ITERATIONS, "{dims:?}");
            assert!(u64::from(g.chunks) <= MAX_LOOP_ITERATIONS, "{dims:?}");
        }
    }

    /// Rows of at least a workgroup are cut into whole-workgroup segments that
    /// cover each row exactly; shorter rows and S == 1 are covered by columns.
    #[test]
    fn streaming_passes_take_rows_by_segments_where_rows_fill_a_workgroup() {
        let p = plan(&[32, 64, 56, 56], Layout::ChannelsFirst);
        assert_eq!((p.geometry.row_segments, p.geometry.segment_len), (2, 512), "784 vec4 a row, 4096 workgroups wanted");
        assert_eq!((p.geometry.stream_units, p.geometry.stream_groups), (4096, 4096));
        assert_eq!(plan(&[8, 512, 7, 7], Layout::ChannelsFirst).geometry.row_segments, 0, "49 items do not fill 256 lanes");
        assert_eq!(plan(&[32, 56, 56, 64], Layout::ChannelsLast).geometry.row_segments, 0);
        assert!([&[32, 64, 56, 56][..], &[8, 512, 7, 7], &[5, 3, 255]]
            .iter()
            .all(|d| plan(d, Layout::ChannelsFirst).geometry.row_lanes == 0));
        for (rows, inner_v, target, wg) in [(2048, 784, 64, 8), (12, 12544, 4096, 256), (1, 1 << 28, 1, 8), (4096, 49, 64, 8), (3, 2, 1, 2)]
        {
            let seg = Segments::new(rows, inner_v, target, wg);
            assert_eq!(seg.len % wg, 0);
            assert!(seg.per_row * seg.len >= inner_v && (seg.per_row - 1) * seg.len < inner_v, "{rows} x {inner_v}: {seg:?}");
            assert_eq!(seg.units, rows * seg.per_row);
            assert!(seg.groups >= 1 && seg.groups <= seg.units);
            assert!(seg.units.div_ceil(seg.groups) * (seg.len / wg) <= MAX_LOOP_ITERATIONS, "{rows} x {inner_v}: {seg:?}");
        }
    }

    /// Under the CPU tuning's 8 invocations, rows of 8 to 255 items (vec4s or values) are
    /// streamed an invocation a row, runs of rows to a workgroup; shorter rows
    /// by columns and longer ones by segments.
    #[test]
    fn short_rows_take_an_invocation_each_under_narrow_workgroups() {
        let cpu = |dims: &[usize]| Plan::new(&Shape::new(dims, Layout::ChannelsFirst).unwrap(), 65535, Tuning::CPU).unwrap().geometry;
        let g = cpu(&[8, 512, 7, 7]);
        assert_eq!((g.row_lanes, g.row_segments, g.stream_units, g.stream_groups), (1, 0, 4096, 64), "49 items a row");
        assert_eq!(cpu(&[8, 512, 12]).row_lanes, 0, "3 vec4 a row: columns");
        let mode = |dims: &[usize]| (cpu(dims).row_lanes, cpu(dims).row_segments > 0);
        assert_eq!(mode(&[4, 3, 4, 255]), (1, false), "1020 values, 255 vec4");
        assert_eq!(mode(&[4, 3, 1024]), (0, true), "256 vec4: segments");
        assert_eq!(mode(&[4, 3, 257]), (0, true), "257 values");
        let many = cpu(&[4096, 512, 255]);
        assert!(u64::from(many.stream_units).div_ceil(u64::from(many.stream_groups) * 8) * 255 <= MAX_LOOP_ITERATIONS, "{many:?}");
    }

    /// Under the CPU tuning, channels of short rows in one chunk each are
    /// reduced an invocation a channel (`stats_lanes.wgsl`,
    /// `backward_reduce_lanes.wgsl`), WG channels a workgroup, where a
    /// workgroup has channels enough and no invocation loops past the bound.
    #[test]
    fn many_short_channels_reduce_an_invocation_each_under_narrow_workgroups() {
        let cpu = |dims: &[usize]| Plan::new(&Shape::new(dims, Layout::ChannelsFirst).unwrap(), 65535, Tuning::CPU).unwrap();
        let p = cpu(&[8, 512, 7, 7]);
        let g = p.geometry;
        assert_eq!((p.channel_lanes, g.chunks, g.groups, p.reduce_grid.x), (true, 1, 64, 64), "512 channels of 392 values");
        assert_eq!((p.stats_kernel(), p.reduce_kernel()), (Kernel::StatsLanes, Kernel::BackwardReduceLanes));
        assert!(!cpu(&[8, 4, 7, 7]).channel_lanes, "4 channels do not fill 8 lanes");
        assert_eq!(cpu(&[5, 3, 51]).geometry.chunks, 4, "3 channels of 255 values: chunks for the workgroups wanted");
        assert!(!cpu(&[5, 3, 51]).channel_lanes);
        assert!(!cpu(&[256, 64, 49]).channel_lanes, "12544 values a channel pass the loop bound");
        assert!(!cpu(&[8, 512, 1024]).channel_lanes, "rows of 256 vec4: not short");
        let gpu = plan(&[8, 512, 7, 7], Layout::ChannelsFirst);
        assert_eq!((gpu.channel_lanes, gpu.stats_kernel()), (false, Kernel::StatsInner));
    }

    /// `Tuning::one_dispatch` takes channel items of at most LANES_MAX_ITEMS
    /// items that fill at least LANES_MIN_GROUPS narrow workgroups, along S and
    /// along C; never under wide workgroups or with the tuning off.
    #[test]
    fn many_short_channels_take_one_dispatch_under_narrow_workgroups() {
        let tuned = |dims: &[usize], layout, tuning| Plan::new(&Shape::new(dims, layout).unwrap(), 65535, tuning).unwrap();
        let cpu = |dims: &[usize], layout| tuned(dims, layout, Tuning::CPU).lanes_grid.map(|g| g.x);
        assert_eq!(cpu(&[8, 512, 7, 7], Layout::ChannelsFirst), Some(64), "512 channels of 392 values");
        assert_eq!(cpu(&[256, 1024], Layout::ChannelsFirst), Some(32), "256 vec4 channel items of 256 rows");
        assert_eq!(cpu(&[8, 7, 7, 512], Layout::ChannelsLast), Some(16), "128 vec4 channel items of 392 rows");
        assert_eq!(cpu(&[512, 1024], Layout::ChannelsFirst), Some(32), "512 items: the most");
        assert_eq!(cpu(&[513, 1024], Layout::ChannelsFirst), None, "513 items");
        assert_eq!(cpu(&[64, 256], Layout::ChannelsFirst), Some(8), "64 channel items fill 8 workgroups");
        assert_eq!(cpu(&[64, 252], Layout::ChannelsFirst), None, "63 channel items do not");
        assert_eq!(tuned(&[8, 512, 7, 7], Layout::ChannelsFirst, Tuning { one_dispatch: false, ..Tuning::CPU }).lanes_grid, None);
        assert_eq!(tuned(&[8, 512, 7, 7], Layout::ChannelsFirst, Tuning { one_dispatch: true, ..Tuning::GPU }).lanes_grid, None);
    }

    #[test]
    fn windows_cover_the_tensor_at_aligned_offsets() {
        let shape = Shape::new(&[37, 4, 1000], Layout::ChannelsFirst).unwrap();
        let w = Windowed::new(&shape, 65535, Tuning::GPU, 100_000, 256, Dtype::F32).unwrap();
        assert!(w.windows.len() > 1);
        let mut next = 0;
        for win in &w.windows {
            assert_eq!(win.offset, next);
            assert_eq!(win.offset % 256, 0);
            assert!(win.bytes <= 100_000);
            next += win.bytes;
            assert_eq!(win.plan.geometry.chunk_stride, w.full.geometry.chunk_stride);
        }
        assert_eq!(next, shape.bytes(Dtype::F32));
        let last = w.windows.last().unwrap().plan.geometry;
        assert_eq!(last.chunk_base + last.chunks, w.full.geometry.chunk_stride);
        let one_row_too_big = Shape::new(&[2, 3, 10_000], Layout::ChannelsFirst).unwrap();
        assert!(matches!(Windowed::new(&one_row_too_big, 65535, Tuning::GPU, 100_000, 256, Dtype::F32), Err(Error::TooLarge { .. })));
        // 12012-byte rows reach 256-byte alignment only every 64 rows, more than a window holds.
        let unalignable = Shape::new(&[100, 3, 1001], Layout::ChannelsFirst).unwrap();
        assert!(matches!(Windowed::new(&unalignable, 65535, Tuning::GPU, 100_000, 256, Dtype::F32), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn workgroup_size_must_be_a_power_of_two_up_to_256() {
        let shape = Shape::new(&[4, 3, 5], Layout::ChannelsFirst).unwrap();
        for wg in [0, 3, 48, 512] {
            let t = Tuning { workgroup_size: wg, ..Tuning::GPU };
            assert!(matches!(Plan::new(&shape, 65535, t), Err(Error::InvalidTuning(_))), "{wg}");
        }
        for wg in [1, 8, 256] {
            let p = Plan::new(&shape, 65535, Tuning { workgroup_size: wg, ..Tuning::GPU }).unwrap();
            assert_eq!(p.variant().workgroup_size, wg);
        }
        let rows = Plan::new(&Shape::new(&[100, 64], Layout::ChannelsFirst).unwrap(), 65535, Tuning::CPU).unwrap();
        assert_eq!(rows.geometry.tile_x, 8, "a channel tile never exceeds the workgroup");
    }

    #[test]
    fn the_one_pass_forward_takes_channels_that_fit_in_one_workgroup() {
        let p = plan(&[8, 512, 7, 7], Layout::ChannelsFirst);
        // 392 values a channel: 32 lanes of at most 16, 8 channels a workgroup.
        assert_eq!((p.geometry.fused_lanes, p.fused_workgroup_size, p.geometry.fused_groups), (32, 256, 64));
        assert!(p.fused_grid.is_some());
        let p = plan(&[256, 1024], Layout::ChannelsFirst);
        assert_eq!((p.geometry.fused_lanes, p.geometry.fused_groups), (16, 16));
        assert!(plan(&[32, 64, 56, 56], Layout::ChannelsFirst).fused_grid.is_none(), "100352 values a channel do not fit");
        let small = Shape::new(&[8, 512, 7, 7], Layout::ChannelsFirst).unwrap();
        assert!(Plan::new(&small, 65535, Tuning::CPU).unwrap().fused_grid.is_none(), "off in the CPU tuning");
        let narrow = Tuning { workgroup_size: 2, ..Tuning::GPU };
        let p = Plan::new(&small, 65535, narrow).unwrap();
        assert_eq!((p.fused_workgroup_size, p.geometry.fused_groups), (32, 512), "lanes widen a narrow workgroup");
    }

    #[test]
    fn large_grids_fold_into_y() {
        let g = Grid::fold(200_000, 65535).unwrap();
        assert!(g.x <= 65535 && u64::from(g.x) * u64::from(g.y) >= 200_000);
        assert!(Grid::fold(65536u64 * 65536, 65535).is_err());
    }

    /// The uniform's layout as naga reads `shaders/common.wgsl` equals Rust's
    /// `Geometry` field by field: a drift fails here, not in a result.
    #[test]
    fn the_geometry_uniform_has_the_same_layout_in_rust_and_wgsl() {
        let variant = Variant { workgroup_size: 64, ..Variant::plain(Width::Scalar, 1) };
        let (module, _) = crate::shaders::tests::parse(Kernel::Apply, variant);
        let (_, ty) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some("Geometry")).expect("common.wgsl declares Geometry");
        let naga::TypeInner::Struct { members, span } = &ty.inner else { panic!("Geometry is not a struct") };
        let wgsl: Vec<(String, usize, &str)> = members
            .iter()
            .map(|m| {
                let kind = match module.types[m.ty].inner {
                    naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Uint, width: 4 }) => "u32",
                    naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Float, width: 4 }) => "f32",
                    ref other => panic!("Geometry.{:?} has type {other:?}", m.name),
                };
                (m.name.clone().unwrap_or_default(), m.offset as usize, kind)
            })
            .collect();
        let rust: Vec<(String, usize, &str)> = Geometry::FIELDS.iter().map(|&(n, o, t)| (n.to_string(), o, t)).collect();
        assert_eq!(wgsl, rust);
        assert_eq!(*span as usize, std::mem::size_of::<Geometry>());
    }
}
