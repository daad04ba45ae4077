//! WGSL sources, one file per kernel family in `shaders/`, composed with a
//! width prelude and the shared declarations.
//!
//! WGSL has no `#include`: a module is the workgroup size `WG`, the width
//! prelude (`V` is `f32` or `vec4<f32>`), `common.wgsl`, the helpers the family
//! uses, and the family's own file. [`ShaderFamily::source`] returns exactly what the
//! crate compiles, so tests can validate and translate the same text.

use crate::plan::Width;

const PRELUDE_SCALAR: &str = include_str!("../shaders/prelude_scalar.wgsl");
const PRELUDE_VEC4: &str = include_str!("../shaders/prelude_vec4.wgsl");
const COMMON: &str = include_str!("../shaders/common.wgsl");
const WELFORD: &str = include_str!("../shaders/welford.wgsl");
const PARAMS: &str = include_str!("../shaders/params.wgsl");
const COMPENSATED: &str = include_str!("../shaders/compensated.wgsl");
const EPILOGUE_TRAIN: &str = include_str!("../shaders/epilogue_train.wgsl");
const STREAM: &str = include_str!("../shaders/stream.wgsl");
const TREE_WORKGROUP: &str = include_str!("../shaders/tree_workgroup.wgsl");
const TREE_SUBGROUP: &str = include_str!("../shaders/tree_subgroup.wgsl");

/// A kernel family: one `.wgsl` file with one or more entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShaderFamily {
    /// `stats.wgsl`: per-channel partial statistics.
    Stats,
    /// `finalize.wgsl`: merge, save and running statistics; inference parameters.
    Finalize,
    /// `apply.wgsl`: fused normalize-scale-shift.
    Apply,
    /// `forward_fused.wgsl`: training forward in one pass for small channels.
    ForwardFused,
    /// `backward_reduce.wgsl`: partial sums of `dy` and `dy * (x - mean)`.
    BackwardReduce,
    /// `backward_finalize.wgsl`: `dgamma`, `dbeta` and the `dx` parameters.
    BackwardFinalize,
    /// `backward_dx.wgsl`: fused `dx`.
    BackwardDx,
    /// `copy.wgsl`: the benchmark's roofline, `y = x`, and a read of `x` alone.
    Copy,
}

impl ShaderFamily {
    /// Every family.
    pub const ALL: [ShaderFamily; 8] = [
        ShaderFamily::Stats,
        ShaderFamily::Finalize,
        ShaderFamily::Apply,
        ShaderFamily::ForwardFused,
        ShaderFamily::BackwardReduce,
        ShaderFamily::BackwardFinalize,
        ShaderFamily::BackwardDx,
        ShaderFamily::Copy,
    ];

    /// The family's file name in `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            ShaderFamily::Stats => "stats.wgsl",
            ShaderFamily::Finalize => "finalize.wgsl",
            ShaderFamily::Apply => "apply.wgsl",
            ShaderFamily::ForwardFused => "forward_fused.wgsl",
            ShaderFamily::BackwardReduce => "backward_reduce.wgsl",
            ShaderFamily::BackwardFinalize => "backward_finalize.wgsl",
            ShaderFamily::BackwardDx => "backward_dx.wgsl",
            ShaderFamily::Copy => "copy.wgsl",
        }
    }

    fn body(self) -> &'static str {
        match self {
            ShaderFamily::Stats => include_str!("../shaders/stats.wgsl"),
            ShaderFamily::Finalize => include_str!("../shaders/finalize.wgsl"),
            ShaderFamily::Apply => include_str!("../shaders/apply.wgsl"),
            ShaderFamily::ForwardFused => include_str!("../shaders/forward_fused.wgsl"),
            ShaderFamily::BackwardReduce => include_str!("../shaders/backward_reduce.wgsl"),
            ShaderFamily::BackwardFinalize => include_str!("../shaders/backward_finalize.wgsl"),
            ShaderFamily::BackwardDx => include_str!("../shaders/backward_dx.wgsl"),
            ShaderFamily::Copy => include_str!("../shaders/copy.wgsl"),
        }
    }

    /// The widths the crate compiles this family at; per-channel epilogues are scalar only.
    pub fn widths(self) -> &'static [Width] {
        match self {
            ShaderFamily::Finalize | ShaderFamily::BackwardFinalize => &[Width::Scalar],
            _ => &[Width::Scalar, Width::Vec4],
        }
    }

    /// The entry points of the family.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            ShaderFamily::Stats => &["stats_inner", "stats_rows"],
            ShaderFamily::Finalize => &["finalize_train", "prepare_inference"],
            ShaderFamily::Apply => &["apply"],
            ShaderFamily::ForwardFused => &["forward_fused"],
            ShaderFamily::BackwardReduce => &["reduce_inner", "reduce_rows"],
            ShaderFamily::BackwardFinalize => &["backward_prepare", "backward_finalize"],
            ShaderFamily::BackwardDx => &["backward_dx"],
            ShaderFamily::Copy => &["copy", "read_only"],
        }
    }

    /// Whether the family reduces across a workgroup, and so has a variant
    /// whose tree uses subgroup shuffles (`tree_subgroup.wgsl`) instead of
    /// workgroup memory (`tree_workgroup.wgsl`).
    pub fn has_subgroup_variant(self) -> bool {
        matches!(self, ShaderFamily::Stats | ShaderFamily::BackwardReduce)
    }

    /// The complete WGSL module for `width` with `workgroup_size` invocations
    /// per workgroup (`WG`; the per-channel epilogues keep their own), with
    /// its reduction trees in subgroup shuffles where `subgroups` is set and
    /// the family [has a subgroup variant](Self::has_subgroup_variant).
    /// Subgroup modules need `wgpu::Features::SUBGROUP`, and are correct only
    /// where every subgroup is exactly `workgroup_size` invocations.
    ///
    /// ```
    /// use wgpu_batchnorm::{shaders::ShaderFamily, Width};
    /// let source = ShaderFamily::Stats.source(Width::Vec4, 64, false);
    /// assert!(source.starts_with("const WG: u32 = 64u;"));
    /// assert!(ShaderFamily::Stats.source(Width::Vec4, 8, true).contains("subgroupShuffleXor"));
    /// ```
    pub fn source(self, width: Width, workgroup_size: u32, subgroups: bool) -> String {
        let prelude = match width {
            Width::Scalar => PRELUDE_SCALAR,
            Width::Vec4 => PRELUDE_VEC4,
        };
        // Both tree files hold the Acc tree (welford.wgsl) and the SumPair tree
        // (compensated.wgsl), so each family that merges includes both helpers.
        let tree = if subgroups { TREE_SUBGROUP } else { TREE_WORKGROUP };
        let helpers: &[&str] = match self {
            ShaderFamily::Stats => &[COMPENSATED, WELFORD, tree],
            ShaderFamily::Finalize => &[COMPENSATED, WELFORD, EPILOGUE_TRAIN],
            ShaderFamily::ForwardFused => &[COMPENSATED, EPILOGUE_TRAIN],
            ShaderFamily::BackwardReduce => &[COMPENSATED, WELFORD, PARAMS, tree],
            ShaderFamily::Apply | ShaderFamily::BackwardDx => &[PARAMS, STREAM],
            ShaderFamily::BackwardFinalize => &[COMPENSATED],
            ShaderFamily::Copy => &[],
        };
        let mut s = format!("const WG: u32 = {workgroup_size}u;\n{prelude}");
        for part in [COMMON].iter().chain(helpers).chain([self.body()].iter()) {
            s.push('\n');
            s.push_str(part);
        }
        s
    }
}
