//! The WGSL kernels: one kernel per file in `shaders/`, each naming the
//! modules it includes with `#import NAME` lines (as Vello's shaders do),
//! composed here into the module the crate compiles.
//!
//! A module is, in order: the constants Rust and WGSL share (written once,
//! below, and generated into every module) with the tensors' storage types
//! (`TensorIn`, `TensorOut`), the width prelude (`V` is `f32` or
//! `vec4<f32>`), the storage's conversions (`storage_*.wgsl`, for a half
//! dtype), the imported modules in dependency order (each once), the
//! kernel's own file, and the accessors of its tensor bindings
//! ([`Storage`]). `#import tree` takes `tree_subgroup.wgsl` or
//! `tree_workgroup.wgsl` as the variant asks. Adding a kernel is one `.wgsl`
//! file whose entry point is named like the file, and one row in
//! [`kernels!`]'s table.

use std::collections::HashSet;

/// Elements per item: vec4 where four consecutive elements share a channel or
/// form four whole channels, else scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Width {
    Scalar,
    Vec4,
}

impl Width {
    /// Elements per item.
    pub fn lanes(self) -> u32 {
        match self {
            Width::Scalar => 1,
            Width::Vec4 => 4,
        }
    }
}

/// The activation a fused epilogue compiles in: `#import activation` takes
/// `activation_identity`, `activation_relu` or `activation_leaky`. LeakyReLU's
/// slope is a runtime value, the uniform's `slope`, so that every slope shares
/// one pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Act {
    Identity,
    Relu,
    Leaky,
}

/// The fused epilogue a module is compiled with (docs/SPEC.md, Fused
/// epilogues): its activation, and whether a residual is added (forward,
/// `#import residual`) or its gradient written (backward, `#import dresidual`).
/// A compile-time choice, so that plain batch norm keeps its kernels as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fusion {
    pub act: Act,
    pub residual: bool,
}

impl Fusion {
    /// Plain batch norm.
    pub const NONE: Fusion = Fusion { act: Act::Identity, residual: false };

    /// The fusion of `epilogue`.
    pub fn of(epilogue: &crate::options::Epilogue) -> Self {
        use crate::options::Activation;
        let act = match epilogue.activation {
            Activation::Identity => Act::Identity,
            Activation::Relu => Act::Relu,
            Activation::LeakyRelu(_) => Act::Leaky,
        };
        Fusion { act, residual: epilogue.residual }
    }

    /// The backward's reduction reads the masked gradient but writes no dresidual.
    pub fn without_residual(self) -> Self {
        Fusion { residual: false, ..self }
    }
}

/// How a module stores the tensors it binds as `array<TensorIn>` or
/// `array<TensorOut>` (x, y, dy, dx, z, residual, dresidual); statistics,
/// parameters and every accumulation stay f32 (docs/SPEC.md, Half precision).
/// Kernels read and write them only through the accessors [`compose`]
/// generates per binding, `load_NAME(i) -> V` and `store_NAME(i, v)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Storage {
    /// f32 elements.
    F32,
    /// f16 elements through WGSL's `f16` type (`wgpu::Features::SHADER_F16`).
    F16,
    /// f16 elements, two to a 32-bit word, through bit operations
    /// (`shaders/storage_f16_words.wgsl` says why not `pack2x16float`).
    F16Words,
    /// bf16 elements, two to a 32-bit word, through bit operations.
    Bf16Words,
}

impl Storage {
    /// The storage of `dtype` on a device that has, or has not, `SHADER_F16`.
    pub fn of(dtype: crate::options::Dtype, shader_f16: bool) -> Self {
        use crate::options::Dtype;
        match dtype {
            Dtype::F32 => Storage::F32,
            Dtype::F16 if shader_f16 => Storage::F16,
            Dtype::F16 => Storage::F16Words,
            Dtype::Bf16 => Storage::Bf16Words,
        }
    }
}

/// What a module is compiled for: its item width, `WG`, whether its
/// reduction trees use subgroup shuffles, whether its read-only storage
/// bindings are declared `read_write` (`aliased`): a dispatch may not bind one
/// buffer both ways, which slices of one buffer as input and output need;
/// its fused epilogue; and how it stores the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    pub width: Width,
    pub workgroup_size: u32,
    pub subgroups: bool,
    pub aliased: bool,
    pub fusion: Fusion,
    pub storage: Storage,
}

impl Variant {
    /// The per-channel epilogues: scalar, one invocation per channel.
    pub const EPILOGUE: Variant = Variant::plain(Width::Scalar, EPILOGUE_WG);

    /// `width` items in workgroups of `workgroup_size`: no subgroups, no
    /// aliasing, no fusion, f32 tensors (what the other fields change).
    pub const fn plain(width: Width, workgroup_size: u32) -> Self {
        Variant { width, workgroup_size, subgroups: false, aliased: false, fusion: Fusion::NONE, storage: Storage::F32 }
    }

    /// This variant with the fused epilogue `fusion`.
    pub fn fused(self, fusion: Fusion) -> Self {
        Variant { fusion, ..self }
    }

    /// The element type, and for outputs the atomic word, of the tensors'
    /// storage arrays: `(TensorIn, TensorOut)`. Scalar items of a packed dtype
    /// are halves of words whose other half another invocation writes, so
    /// stores there go through atomics on the word.
    fn tensor_types(self) -> (&'static str, &'static str) {
        match (self.storage, self.width) {
            (Storage::F32, _) => ("V", "V"),
            (Storage::F16, Width::Scalar) => ("f16", "f16"),
            (Storage::F16, Width::Vec4) => ("vec4<f16>", "vec4<f16>"),
            (Storage::F16Words | Storage::Bf16Words, Width::Vec4) => ("vec2<u32>", "vec2<u32>"),
            (Storage::F16Words | Storage::Bf16Words, Width::Scalar) => ("u32", "atomic<u32>"),
        }
    }

    /// Whether scalar items share words (a two-to-a-word dtype at scalar
    /// width): then `stream.wgsl` stores whole words where it can (`PAIRS`).
    fn pairs(self) -> bool {
        matches!(self.storage, Storage::F16Words | Storage::Bf16Words) && self.width == Width::Scalar
    }

    /// The accessors of tensor binding `name`: `load_NAME`, and for an output
    /// `store_NAME` and `store_NAME_pair(w, a, b)`, items `2w` and `2w + 1`:
    /// one plain store of their word where they share one (`PAIRS`), else two
    /// stores (a path `PAIRS` never takes).
    fn accessors(self, name: &str, output: bool) -> String {
        let (load, store) = match (self.storage, self.width) {
            (Storage::F32, _) => ("return NAME[i];", "NAME[i] = v;"),
            (Storage::F16, _) => ("return V(NAME[i]);", "NAME[i] = to_f16(v);"),
            (_, Width::Vec4) => (
                "let w = NAME[i];\n    return V(unpack_word(w.x), unpack_word(w.y));",
                "NAME[i] = vec2<u32>(pack_word(v.xy), pack_word(v.zw));",
            ),
            // Only this invocation writes its half of the word, so the half the
            // load sees is current, and one xor turns it into the new value
            // without touching the other half.
            (_, Width::Scalar) if output => (
                "return unpack_word(atomicLoad(&NAME[i >> 1u]))[i & 1u];",
                "let shift = (i & 1u) * 16u;\n    \
                 let old = (atomicLoad(&NAME[i >> 1u]) >> shift) & 0xffffu;\n    \
                 atomicXor(&NAME[i >> 1u], (old ^ (pack_word(vec2<f32>(v, 0.0)) & 0xffffu)) << shift);",
            ),
            (_, Width::Scalar) => ("return unpack_word(NAME[i >> 1u])[i & 1u];", ""),
        };
        let mut out = format!("fn load_{name}(i: u32) -> V {{\n    {}\n}}\n", load.replace("NAME", name));
        if output {
            out.push_str(&format!("fn store_{name}(i: u32, v: V) {{\n    {}\n}}\n", store.replace("NAME", name)));
            let pair = if self.pairs() {
                format!("atomicStore(&{name}[w], pack_word(vec2<f32>(a, b)));")
            } else {
                format!("store_{name}(2u * w, a);\n    store_{name}(2u * w + 1u, b);")
            };
            out.push_str(&format!("fn store_{name}_pair(w: u32, a: V, b: V) {{\n    {pair}\n}}\n"));
        }
        out
    }
}

/// Bits of `Geometry::flags`: gamma and beta are bound.
pub(crate) const FLAG_AFFINE: u32 = 1;
/// Running statistics are bound and updated.
pub(crate) const FLAG_RUNNING: u32 = 2;
/// Backward in inference mode: the statistics are running ones, constants.
pub(crate) const FLAG_INFERENCE: u32 = 4;
/// Backward writes dgamma and dbeta.
pub(crate) const FLAG_WRITE_GRADS: u32 = 8;
/// Inference folding: the previous layer's bias is bound (else it counts as zero).
pub(crate) const FLAG_BIAS: u32 = 16;
/// The normalization family normalizes by the root mean square, without centering (RMS norm).
pub(crate) const FLAG_RMS: u32 = 32;
/// The normalization family's backward sums dgamma and dbeta per (row,
/// channel) in its dx walk (channels-first group and instance norm).
pub(crate) const FLAG_GRADS_IN_ROWS: u32 = 64;
/// The normalization family's forward and backward row pass take a block of
/// rows a workgroup, loading gamma (and beta) once for them (layer and RMS norm).
pub(crate) const FLAG_ROW_BLOCK: u32 = 128;
/// A row of the normalization family is `norm_ka` contiguous runs of
/// `param_run` items, one channel each, in one chunk, each run at least a
/// workgroup of items (channels-first group and instance norm): the walks
/// over it load gamma and beta once a run, not once an item.
pub(crate) const FLAG_CHANNEL_RUNS: u32 = 256;
/// Items an invocation sums in shifted form before merging them into its
/// Chan state (`shaders/welford.wgsl`).
pub(crate) const SUMS_BLOCK: u32 = 64;
/// Layer and RMS norm's row blocks reduce a row an invocation, walking it
/// whole (the block has at least a workgroup of rows): no reduction across
/// invocations, and an item's `gamma` is the same for every invocation.
pub(crate) const FLAG_ROW_LANES: u32 = 512;
/// Rows a workgroup of the family's forward takes with [`FLAG_ROW_BLOCK`]
/// (a constant: its loop over them is unrolled, measured faster on lavapipe),
/// and of the backward where it does not sum dgamma and dbeta in its blocks.
pub(crate) const NORM_ROW_BLOCK: u32 = 8;
/// The most rows a workgroup of the family's backward takes with
/// [`FLAG_ROW_BLOCK`] (the uniform's `row_block`, at least [`NORM_ROW_BLOCK`]).
pub(crate) const NORM_MAX_ROW_BLOCK: u32 = 64;
/// Rows of the per-channel parameter buffer (`c_pad` floats each): the shift
/// every tensor pass subtracts, then three coefficients.
const P_SHIFT: u32 = 0;
const P_OFFSET: u32 = 1;
const P_SCALE: u32 = 2;
const P_BIAS: u32 = 3;
pub(crate) const PARAM_ROWS: u32 = 4;
/// Floats of one partial result of a reduction workgroup: count, shifted
/// mean, M2, shift and a compensated sum (`stats.wgsl`), or three
/// compensated sums (`backward_reduce.wgsl`).
pub(crate) const PARTIAL_FLOATS: u32 = 6;
/// Invocations per workgroup of the per-channel epilogues (their `WG`).
pub(crate) const EPILOGUE_WG: u32 = 64;
/// Items one invocation of the one-pass training forward holds in registers.
pub(crate) const FUSED_ITEMS: u32 = 16;
/// Floats per channel of a device's statistics in the synchronized forward
/// (`sync_stats.wgsl`): count, shift, mean - shift, M2, summed mean.
pub(crate) const SYNC_LOCAL_FLOATS: u32 = 5;
/// Floats per channel of the merged statistics the synchronized forward applies
/// (`finalize_sync.wgsl`): mean, shift, mean - shift, variance, unbias factor.
pub(crate) const SYNC_STATS_FLOATS: u32 = 5;
/// Floats per channel of the summed gradients the synchronized backward applies
/// (`backward_finalize_sync.wgsl`): sum dy, sum dy * (x - mean), delta, count.
pub(crate) const SYNC_SUMS_FLOATS: u32 = 4;
/// Floats per row of the normalization family's per-row values in the
/// parameter buffer (`shaders/norm.wgsl`'s `R_*`).
pub(crate) const NORM_ROW_FLOATS: u32 = 6;

/// Every constant above, as WGSL sees it.
const SHARED_CONSTANTS: [(&str, u32); 23] = [
    ("FLAG_AFFINE", FLAG_AFFINE),
    ("FLAG_RUNNING", FLAG_RUNNING),
    ("FLAG_INFERENCE", FLAG_INFERENCE),
    ("FLAG_WRITE_GRADS", FLAG_WRITE_GRADS),
    ("FLAG_BIAS", FLAG_BIAS),
    ("P_SHIFT", P_SHIFT),
    ("P_OFFSET", P_OFFSET),
    ("P_SCALE", P_SCALE),
    ("P_BIAS", P_BIAS),
    ("PARTIAL_FLOATS", PARTIAL_FLOATS),
    ("FUSED_ITEMS", FUSED_ITEMS),
    ("SYNC_LOCAL_FLOATS", SYNC_LOCAL_FLOATS),
    ("SYNC_STATS_FLOATS", SYNC_STATS_FLOATS),
    ("SYNC_SUMS_FLOATS", SYNC_SUMS_FLOATS),
    ("FLAG_RMS", FLAG_RMS),
    ("NORM_ROW_FLOATS", NORM_ROW_FLOATS),
    ("FLAG_GRADS_IN_ROWS", FLAG_GRADS_IN_ROWS),
    ("FLAG_ROW_BLOCK", FLAG_ROW_BLOCK),
    ("NORM_ROW_BLOCK", NORM_ROW_BLOCK),
    ("NORM_MAX_ROW_BLOCK", NORM_MAX_ROW_BLOCK),
    ("FLAG_CHANNEL_RUNS", FLAG_CHANNEL_RUNS),
    ("FLAG_ROW_LANES", FLAG_ROW_LANES),
    ("SUMS_BLOCK", SUMS_BLOCK),
];

#[cfg(test)]
const SCALAR: &[Width] = &[Width::Scalar];
#[cfg(test)]
const BOTH: &[Width] = &[Width::Scalar, Width::Vec4];

/// The kernel table: one row per `shaders/NAME.wgsl`, whose entry point is
/// `NAME`, with the widths it is compiled at.
macro_rules! kernels {
    ($($(#[doc = $doc:literal])* $kernel:ident: $name:literal, $widths:expr;)*) => {
        /// One kernel: one `.wgsl` file and its entry point.
        // The benchmark's kernels are recorded only with the `bench` feature.
        #[cfg_attr(not(feature = "bench"), allow(dead_code))]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Kernel {
            $($(#[doc = $doc])* $kernel,)*
        }

        impl Kernel {
            /// Every kernel.
            #[cfg(test)]
            pub const ALL: &'static [Kernel] = &[$(Kernel::$kernel),*];

            /// The file's stem and the entry point's name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => $name,)*
                }
            }

            /// The widths the crate compiles it at.
            #[cfg(test)]
            pub fn widths(self) -> &'static [Width] {
                match self {
                    $(Kernel::$kernel => $widths,)*
                }
            }

            fn text(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => include_str!(concat!("../shaders/", $name, ".wgsl")),)*
                }
            }
        }
    };
}

kernels! {
    /// Training forward, pass 1, `S > 1`: partial statistics of chunks of one channel.
    StatsInner: "stats_inner", BOTH;
    /// Training forward, pass 1, `S == 1`: partial statistics of row chunks of a channel tile.
    StatsRows: "stats_rows", BOTH;
    /// Training forward, pass 1, `S > 1`, channels many and short: a channel an invocation.
    StatsLanes: "stats_lanes", BOTH;
    /// Training forward, pass 2: per-channel merge, saved and running statistics.
    FinalizeTrain: "finalize_train", SCALAR;
    /// Training and inference forward, last pass: normalize-scale-shift.
    Apply: "apply", BOTH;
    /// Training forward in one pass, for channels that fit in one workgroup's registers.
    ForwardFused: "forward_fused", BOTH;
    /// Training forward in one dispatch, channels many and short: a channel item an invocation.
    ForwardLanes: "forward_lanes", BOTH;
    /// Inference forward, pass 1: running statistics folded into the apply parameters.
    PrepareInference: "prepare_inference", SCALAR;
    /// Backward, first: the mean into the parameter buffer.
    BackwardPrepare: "backward_prepare", SCALAR;
    /// Backward, pass 1, `S > 1`: partial gradient sums.
    BackwardReduceInner: "backward_reduce_inner", BOTH;
    /// Backward, pass 1, `S == 1`: partial gradient sums.
    BackwardReduceRows: "backward_reduce_rows", BOTH;
    /// Backward, pass 1, `S > 1`, channels many and short: a channel's sums an invocation.
    BackwardReduceLanes: "backward_reduce_lanes", BOTH;
    /// Backward, pass 2: dgamma, dbeta and the dx parameters.
    BackwardFinalize: "backward_finalize", SCALAR;
    /// Backward, last pass: dx.
    BackwardDx: "backward_dx", BOTH;
    /// Backward in one dispatch, channels many and short: a channel item an invocation.
    BackwardLanes: "backward_lanes", BOTH;
    /// Synchronized training forward: a device's statistics for the merge across ranks.
    SyncStats: "sync_stats", SCALAR;
    /// Synchronized training forward: saved and running statistics from the merged ones.
    FinalizeSync: "finalize_sync", SCALAR;
    /// Synchronized backward: a device's sums for the sum across ranks.
    BackwardSyncSums: "backward_sync_sums", SCALAR;
    /// Synchronized backward: dgamma, dbeta and the dx parameters from the summed ones.
    BackwardFinalizeSync: "backward_finalize_sync", SCALAR;
    /// Inference folding: the folded bias and the weights' scale per output channel.
    FoldParams: "fold_params", SCALAR;
    /// Inference folding's export: per-channel scale and shift.
    ScaleShift: "scale_shift", SCALAR;
    /// Normalization family, forward pass 1: row chunk statistics; a row in one chunk finished and y written.
    NormForward: "norm_forward", BOTH;
    /// Normalization family, forward pass 2 for rows in several chunks: per-row merge and saved statistics.
    NormForwardFinalize: "norm_forward_finalize", SCALAR;
    /// Normalization family, forward pass 3 for rows in several chunks: y.
    NormApply: "norm_apply", BOTH;
    /// Normalization family, backward pass 1: row chunk gradient sums; a row in one chunk finished and dx written.
    NormBackward: "norm_backward", BOTH;
    /// Normalization family, backward pass 2 for rows in several chunks: per-row merge.
    NormBackwardFinalize: "norm_backward_finalize", SCALAR;
    /// Normalization family, backward pass 3 for rows in several chunks: dx.
    NormBackwardDx: "norm_backward_dx", BOTH;
    /// Normalization family: partial dgamma and dbeta per affine parameter chunk.
    NormParamPartials: "norm_param_partials", BOTH;
    /// Normalization family: dgamma and dbeta per affine parameter.
    NormParamGrads: "norm_param_grads", SCALAR;
    /// Instance norm: running statistics from the instances' statistics.
    NormRunning: "norm_running", SCALAR;
    /// Channels-last group and instance norm, forward pass 2: per-row merge of per-channel partials, apply values.
    NormGroupFinalize: "norm_group_finalize", SCALAR;
    /// Channels-last group and instance norm, forward pass 3: y, lanes across channels.
    NormGroupApply: "norm_group_apply", BOTH;
    /// Channels-last group and instance norm, backward pass 1: per-(channel, chunk) gradient sums.
    NormGroupGrad: "norm_group_grad", BOTH;
    /// Channels-last group and instance norm, backward pass 2: per-row merge, dx values per channel.
    NormGroupBackwardFinalize: "norm_group_backward_finalize", SCALAR;
    /// Channels-last group and instance norm, backward pass 3: dx, lanes across channels.
    NormGroupDx: "norm_group_dx", BOTH;
    /// Channels-last group and instance norm: dgamma and dbeta per channel over the samples.
    NormGroupParamGrads: "norm_group_param_grads", SCALAR;
    /// The benchmark's roofline: a plain copy.
    Copy: "copy", BOTH;
    /// The benchmark's read-only pass: the copy's loads alone.
    ReadOnly: "read_only", BOTH;
}

/// The modules kernels import, by name (`shaders/NAME.wgsl`).
const MODULES: [(&str, &str); 45] = [
    ("common", include_str!("../shaders/common.wgsl")),
    ("compensated", include_str!("../shaders/compensated.wgsl")),
    ("welford", include_str!("../shaders/welford.wgsl")),
    ("grad_sums", include_str!("../shaders/grad_sums.wgsl")),
    ("params", include_str!("../shaders/params.wgsl")),
    ("stream", include_str!("../shaders/stream.wgsl")),
    ("stats", include_str!("../shaders/stats.wgsl")),
    ("backward_reduce", include_str!("../shaders/backward_reduce.wgsl")),
    ("epilogue", include_str!("../shaders/epilogue.wgsl")),
    ("affine", include_str!("../shaders/affine.wgsl")),
    ("apply_params", include_str!("../shaders/apply_params.wgsl")),
    ("epilogue_train", include_str!("../shaders/epilogue_train.wgsl")),
    ("dx_params", include_str!("../shaders/dx_params.wgsl")),
    ("dx_coeffs", include_str!("../shaders/dx_coeffs.wgsl")),
    ("lanes_stats", include_str!("../shaders/lanes_stats.wgsl")),
    ("lanes_grads", include_str!("../shaders/lanes_grads.wgsl")),
    ("stats_partials", include_str!("../shaders/stats_partials.wgsl")),
    ("grad_partials", include_str!("../shaders/grad_partials.wgsl")),
    ("tree_workgroup", include_str!("../shaders/tree_workgroup.wgsl")),
    ("tree_subgroup", include_str!("../shaders/tree_subgroup.wgsl")),
    ("prelude_scalar", include_str!("../shaders/prelude_scalar.wgsl")),
    ("prelude_vec4", include_str!("../shaders/prelude_vec4.wgsl")),
    ("activation_identity", include_str!("../shaders/activation_identity.wgsl")),
    ("activation_relu", include_str!("../shaders/activation_relu.wgsl")),
    ("activation_leaky", include_str!("../shaders/activation_leaky.wgsl")),
    ("residual_none", include_str!("../shaders/residual_none.wgsl")),
    ("residual_add", include_str!("../shaders/residual_add.wgsl")),
    ("upstream_plain", include_str!("../shaders/upstream_plain.wgsl")),
    ("upstream_masked", include_str!("../shaders/upstream_masked.wgsl")),
    ("dresidual_none", include_str!("../shaders/dresidual_none.wgsl")),
    ("dresidual_store", include_str!("../shaders/dresidual_store.wgsl")),
    ("fold", include_str!("../shaders/fold.wgsl")),
    ("mean", include_str!("../shaders/mean.wgsl")),
    ("float_bits", include_str!("../shaders/float_bits.wgsl")),
    ("norm", include_str!("../shaders/norm.wgsl")),
    ("norm_affine", include_str!("../shaders/norm_affine.wgsl")),
    ("norm_finish", include_str!("../shaders/norm_finish.wgsl")),
    ("norm_y", include_str!("../shaders/norm_y.wgsl")),
    ("norm_grad", include_str!("../shaders/norm_grad.wgsl")),
    ("norm_dx", include_str!("../shaders/norm_dx.wgsl")),
    ("norm_partials", include_str!("../shaders/norm_partials.wgsl")),
    ("norm_group", include_str!("../shaders/norm_group.wgsl")),
    ("storage_f16", include_str!("../shaders/storage_f16.wgsl")),
    ("storage_f16_words", include_str!("../shaders/storage_f16_words.wgsl")),
    ("storage_bf16_words", include_str!("../shaders/storage_bf16_words.wgsl")),
];

/// A composed module and where each of its lines came from.
#[derive(Debug, Clone)]
pub(crate) struct Composed {
    /// The WGSL the crate compiles.
    pub source: String,
    /// (file, first line of it in `source`, 1-based), in order.
    parts: Vec<(String, usize)>,
}

impl Composed {
    /// The file and line (both as a reader edits them) of line `line` (1-based) of `source`.
    #[cfg(test)]
    pub fn locate(&self, line: usize) -> (&str, usize) {
        let (file, first) = self.parts.iter().rev().find(|(_, first)| *first <= line).unwrap_or(&self.parts[0]);
        (file, line - first + 1)
    }

    fn push(&mut self, file: String, text: &str) {
        let first = self.source.lines().count() + 1;
        self.parts.push((file, first));
        for line in text.lines() {
            // Commented out rather than dropped, so every file keeps its line numbers.
            if line.starts_with("#import ") {
                self.source.push_str("// ");
            }
            self.source.push_str(line);
            self.source.push('\n');
        }
    }
}

/// The names `text` imports, in order.
fn imports(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| l.strip_prefix("#import ")).map(str::trim)
}

/// The module an `#import` names, for `variant`. Every name is one the crate's
/// own files use, which the shader tests compose: an unknown one is a bug here.
fn module(name: &str, variant: Variant) -> (&'static str, &'static str) {
    let fusion = variant.fusion;
    let name = match name {
        "tree" if variant.subgroups => "tree_subgroup",
        "tree" => "tree_workgroup",
        "activation" => match fusion.act {
            Act::Identity => "activation_identity",
            Act::Relu => "activation_relu",
            Act::Leaky => "activation_leaky",
        },
        "residual" if fusion.residual => "residual_add",
        "residual" => "residual_none",
        "upstream" if fusion.act == Act::Identity => "upstream_plain",
        "upstream" => "upstream_masked",
        "dresidual" if fusion.residual => "dresidual_store",
        "dresidual" => "dresidual_none",
        other => other,
    };
    MODULES.into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("shaders/: `#import {name}` names no module"))
}

/// The complete WGSL module of `kernel` compiled as `variant`.
pub(crate) fn compose(kernel: Kernel, variant: Variant) -> Composed {
    // An `enable` directive comes before every declaration.
    let enable = if variant.storage == Storage::F16 { "enable f16;\n" } else { "" };
    let (tensor_in, tensor_out) = variant.tensor_types();
    let mut header = format!(
        "{enable}// {}.wgsl, composed by src/shaders.rs\nconst WG: u32 = {}u;\nalias TensorIn = {tensor_in};\nalias TensorOut = {tensor_out};\nconst PAIRS: bool = {};\n",
        kernel.name(),
        variant.workgroup_size,
        variant.pairs()
    );
    for (name, value) in SHARED_CONSTANTS {
        header.push_str(&format!("const {name}: u32 = {value}u;\n"));
    }
    let mut out = Composed { source: String::new(), parts: Vec::new() };
    out.push("<constants from src/shaders.rs>".into(), &header);
    let prelude = match variant.width {
        Width::Scalar => "prelude_scalar",
        Width::Vec4 => "prelude_vec4",
    };
    let (name, text) = module(prelude, variant);
    out.push(format!("shaders/{name}.wgsl"), text);
    let mut seen = HashSet::new();
    let storage = match variant.storage {
        Storage::F32 => None,
        Storage::F16 => Some("storage_f16"),
        Storage::F16Words => Some("storage_f16_words"),
        Storage::Bf16Words => Some("storage_bf16_words"),
    };
    for import in storage.into_iter().chain(imports(kernel.text())) {
        include(&mut out, &mut seen, import, variant);
    }
    out.push(format!("shaders/{}.wgsl", kernel.name()), kernel.text());
    let accessors: String = tensor_bindings(&out.source).map(|(name, output)| variant.accessors(name, output)).collect();
    if !accessors.is_empty() {
        out.push("<tensor accessors from src/shaders.rs>".into(), &accessors);
    }
    if variant.aliased {
        out.source = out.source.replace("var<storage, read>", "var<storage, read_write>");
    }
    out
}

/// The tensor bindings a composed module declares (`NAME: array<TensorIn>`
/// or `array<TensorOut>`), and whether each is an output.
fn tensor_bindings(source: &str) -> impl Iterator<Item = (&str, bool)> {
    source.lines().filter(|l| l.starts_with("@group(")).filter_map(|l| {
        let (_, decl) = l.split_once("> ")?;
        let (name, ty) = decl.split_once(": ")?;
        match ty.trim_end_matches(';') {
            "array<TensorIn>" => Some((name, false)),
            "array<TensorOut>" => Some((name, true)),
            _ => None,
        }
    })
}

/// Appends module `name` after everything it imports, once.
fn include(out: &mut Composed, seen: &mut HashSet<&'static str>, name: &str, variant: Variant) {
    let (name, text) = module(name, variant);
    if !seen.insert(name) {
        return;
    }
    for import in imports(text) {
        include(out, seen, import, variant);
    }
    out.push(format!("shaders/{name}.wgsl"), text);
}

/// Scalar items, a workgroup of one, no subgroups or aliasing, no fusion,
/// f32 tensors: what the tests vary one field of.
#[cfg(test)]
const PLAIN: Variant = Variant::plain(Width::Scalar, 1);

/// Whether `kernel` reduces across a workgroup (it imports `tree`), and so
/// has a variant whose tree uses subgroup shuffles.
#[cfg(test)]
fn has_subgroup_variant(kernel: Kernel) -> bool {
    let variant = Variant { subgroups: true, ..PLAIN };
    compose(kernel, variant).parts.iter().any(|(file, _)| file.ends_with("tree_subgroup.wgsl"))
}

/// Every module the crate compiles, as composed, validated by naga and
/// translated to each backend's language: SPIR-V (Vulkan), MSL (Metal), HLSL
/// (DX12), GLSL (GL). Needs no GPU.
#[cfg(test)]
pub(crate) mod tests {
    use naga::back::{glsl, hlsl, msl, spv};
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    use super::*;

    /// A validator that allows subgroup operations in compute shaders only
    /// where the module is the subgroup variant, and f16 where it stores tensors as f16.
    fn validator(variant: Variant) -> Validator {
        let mut capabilities = Capabilities::empty();
        capabilities.set(Capabilities::SUBGROUP, variant.subgroups);
        capabilities.set(Capabilities::SHADER_FLOAT16, variant.storage == Storage::F16);
        let mut v = Validator::new(ValidationFlags::all(), capabilities);
        if variant.subgroups {
            v.subgroup_stages(naga::valid::ShaderStages::COMPUTE).subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        v
    }

    /// naga's error, at the file and line a reader edits.
    fn located(composed: &Composed, line: Option<usize>, message: String) -> String {
        match line {
            Some(line) => {
                let (file, line) = composed.locate(line);
                format!("{file}:{line}: {message}")
            }
            None => message,
        }
    }

    pub(crate) fn parse(kernel: Kernel, variant: Variant) -> (naga::Module, naga::valid::ModuleInfo) {
        let composed = compose(kernel, variant);
        let source = &composed.source;
        let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| {
            let line = e.location(source).map(|l| l.line_number as usize);
            panic!("{}", located(&composed, line, e.emit_to_string(source)))
        });
        let info = validator(variant).validate(&module).unwrap_or_else(|e| {
            let line = e.spans().next().and_then(|(span, _)| span.location(source).line_number.try_into().ok());
            panic!("{}", located(&composed, line, format!("{variant:?}: {}", e.emit_to_string(source))))
        });
        (module, info)
    }

    /// Fused epilogues the tests compile: each activation, with and without a residual.
    const FUSIONS: [Fusion; 5] = [
        Fusion::NONE,
        Fusion { act: Act::Relu, residual: false },
        Fusion { act: Act::Leaky, residual: false },
        Fusion { act: Act::Identity, residual: true },
        Fusion { act: Act::Relu, residual: true },
    ];

    /// Whether `kernel` composes differently with a fused epilogue.
    fn has_fusions(kernel: Kernel) -> bool {
        let fused = PLAIN.fused(Fusion { act: Act::Relu, residual: true });
        compose(kernel, PLAIN).source != compose(kernel, fused).source
    }

    const STORAGES: [Storage; 4] = [Storage::F32, Storage::F16, Storage::F16Words, Storage::Bf16Words];

    /// Whether `kernel` binds a tensor, and so has a variant per storage.
    fn binds_tensors(kernel: Kernel) -> bool {
        tensor_bindings(&compose(kernel, PLAIN).source).next().is_some()
    }

    /// Every variant the crate can compile at `wg`: each kernel at each of its
    /// widths, plain and aliased, the subgroup variant of the kernels that
    /// reduce, the fused epilogues of the kernels that have them, and each
    /// storage of the kernels that bind tensors.
    fn variants(wg: u32) -> Vec<(Kernel, Variant)> {
        let mut out = Vec::new();
        for &kernel in Kernel::ALL {
            let fusions = if has_fusions(kernel) { &FUSIONS[..] } else { &FUSIONS[..1] };
            let storages = if binds_tensors(kernel) { &STORAGES[..] } else { &STORAGES[..1] };
            for &width in kernel.widths() {
                for subgroups in [false, true] {
                    for aliased in [false, true] {
                        for &fusion in fusions {
                            for &storage in storages {
                                if !subgroups || has_subgroup_variant(kernel) {
                                    out.push((kernel, Variant { width, workgroup_size: wg, subgroups, aliased, fusion, storage }));
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn fused_epilogues_reach_exactly_the_forward_apply_and_backward_tensor_kernels() {
        let fused: Vec<Kernel> = Kernel::ALL.iter().copied().filter(|&k| has_fusions(k)).collect();
        assert_eq!(
            fused,
            [
                Kernel::Apply,
                Kernel::ForwardFused,
                Kernel::ForwardLanes,
                Kernel::BackwardReduceInner,
                Kernel::BackwardReduceRows,
                Kernel::BackwardReduceLanes,
                Kernel::BackwardDx,
                Kernel::BackwardLanes
            ]
        );
        // Plain batch norm binds nothing new; the slope is the uniform's, not compiled in.
        let plain = Variant { width: Width::Vec4, workgroup_size: 8, ..PLAIN };
        for kernel in fused {
            let source = compose(kernel, plain).source;
            assert!(!source.contains("> residual:") && !source.contains("var<storage, read> z") && !source.contains("dresidual:"));
        }
        let leaky = compose(Kernel::Apply, plain.fused(FUSIONS[2])).source;
        assert!(leaky.contains("g.slope") && !leaky.contains("SLOPE"), "{leaky}");
        let masked = compose(Kernel::BackwardDx, plain.fused(FUSIONS[4])).source;
        assert!(masked.contains("@binding(5) var<storage, read> z") && masked.contains("@binding(6) var<storage, read_write> dresidual"));
    }

    #[test]
    fn aliased_modules_declare_no_read_only_storage() {
        let plain = Variant { width: Width::Vec4, workgroup_size: 8, ..PLAIN };
        assert!(compose(Kernel::Apply, plain).source.contains("var<storage, read>"));
        let aliased = compose(Kernel::Apply, Variant { aliased: true, ..plain }).source;
        assert!(!aliased.contains("var<storage, read>") && aliased.contains("@binding(1) var<storage, read_write> x"));
    }

    /// Each storage declares the tensors as its element type and reaches them
    /// only through the accessors; scalar items of a packed dtype store through
    /// atomics on the word, and plain f32 modules are what they were.
    #[test]
    fn tensor_storage_shapes_the_declarations_and_accessors() {
        let plain = Variant { workgroup_size: 8, ..PLAIN };
        let f32_source = compose(Kernel::Apply, plain).source;
        assert!(f32_source.contains("alias TensorOut = V;") && f32_source.contains("fn store_y(i: u32, v: V) {\n    y[i] = v;"));
        let words = compose(Kernel::Apply, Variant { storage: Storage::Bf16Words, ..plain }).source;
        assert!(words.contains("alias TensorIn = u32;") && words.contains("alias TensorOut = atomic<u32>;"));
        assert!(
            words.contains("atomicXor(&y[i >> 1u]")
                && words.contains("fn load_x(i: u32) -> V {\n    return unpack_word(x[i >> 1u])[i & 1u];")
        );
        let vec4 = compose(Kernel::Apply, Variant { storage: Storage::F16Words, width: Width::Vec4, ..plain }).source;
        assert!(vec4.contains("alias TensorOut = vec2<u32>;") && !vec4.contains("atomic<") && !vec4.contains("atomicXor"));
        // Scalar words: the streaming passes store whole words where a span holds both halves.
        assert!(vec4.contains("const PAIRS: bool = false;") && words.contains("const PAIRS: bool = true;"));
        assert!(words.contains("fn store_y_pair(w: u32, a: V, b: V) {\n    atomicStore(&y[w], pack_word(vec2<f32>(a, b)));"));
        let native = compose(Kernel::Apply, Variant { storage: Storage::F16, ..plain }).source;
        assert!(native.starts_with("enable f16;\n") && native.contains("y[i] = to_f16(v);"));
        // Every access to a tensor goes through an accessor.
        for &kernel in Kernel::ALL {
            let source = compose(kernel, Variant { storage: Storage::F16Words, ..plain }).source;
            for (name, _) in tensor_bindings(&source) {
                let direct = format!(" {name}[");
                let outside = source.lines().filter(|l| l.contains(&direct) && !l.contains("NAME") && !l.trim_start().starts_with("//"));
                let accessor_lines = |l: &&str| l.contains("unpack_word") || l.contains("atomic") || l.contains("= vec2<u32>(pack_word");
                assert_eq!(outside.filter(|l| !accessor_lines(l)).count(), 0, "{kernel:?} reads {name} directly");
            }
        }
    }

    #[test]
    fn every_module_validates_with_its_one_entry_point() {
        for (kernel, variant) in variants(256) {
            let (module, _) = parse(kernel, variant);
            let names: Vec<&str> = module.entry_points.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, [kernel.name()], "{kernel:?}");
        }
    }

    /// WGSL makes a constant expression that is NaN or infinite a
    /// shader-creation error. naga accepts one (it leaves `bitcast<f32>` of a
    /// literal unevaluated), but Chromium's compiler (Tint) refuses the
    /// module, so none may hold an f32 literal or a bitcast of an integer
    /// literal that is not finite.
    #[test]
    fn no_module_holds_a_constant_nan_or_infinity() {
        use naga::{Expression, Literal, ScalarKind};
        let non_finite = |exprs: &naga::Arena<Expression>, e: &Expression| match e {
            Expression::Literal(Literal::F32(v)) => !v.is_finite(),
            Expression::As { expr, kind: ScalarKind::Float, convert: None } => match exprs[*expr] {
                Expression::Literal(Literal::U32(bits)) => !f32::from_bits(bits).is_finite(),
                Expression::Literal(Literal::I32(bits)) => !f32::from_bits(bits as u32).is_finite(),
                _ => false,
            },
            _ => false,
        };
        let holds = |exprs: &naga::Arena<Expression>| exprs.iter().any(|(_, e)| non_finite(exprs, e));
        for (kernel, variant) in variants(8) {
            let (module, _) = parse(kernel, variant);
            let mut functions = module.functions.iter().map(|(_, f)| f).chain(module.entry_points.iter().map(|e| &e.function));
            let found = holds(&module.global_expressions) || functions.any(|f| holds(&f.expressions));
            assert!(!found, "{kernel:?} {variant:?} holds a constant NaN or infinity");
        }
    }

    #[test]
    fn every_workgroup_size_validates() {
        for wg in [1, 2, 8, 64] {
            for (kernel, variant) in variants(wg) {
                parse(kernel, variant);
            }
        }
    }

    #[test]
    fn only_the_reductions_have_subgroup_variants() {
        let reducing: Vec<Kernel> = Kernel::ALL.iter().copied().filter(|&k| has_subgroup_variant(k)).collect();
        assert_eq!(
            reducing,
            [
                Kernel::StatsInner,
                Kernel::StatsRows,
                Kernel::StatsLanes,
                Kernel::BackwardReduceInner,
                Kernel::BackwardReduceRows,
                Kernel::BackwardReduceLanes,
                Kernel::NormForward,
                Kernel::NormBackward,
                Kernel::NormParamPartials,
                Kernel::NormGroupGrad
            ]
        );
    }

    /// Each file appears once, after what it imports, and a line of the
    /// composed text maps back to the line of the file it came from.
    #[test]
    fn imports_resolve_once_and_lines_map_back_to_their_files() {
        let variant = Variant { width: Width::Vec4, workgroup_size: 8, ..PLAIN };
        let composed = compose(Kernel::StatsInner, variant);
        let files: Vec<&str> = composed.parts.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            files,
            [
                "<constants from src/shaders.rs>",
                "shaders/prelude_vec4.wgsl",
                "shaders/common.wgsl",
                "shaders/compensated.wgsl",
                "shaders/float_bits.wgsl",
                "shaders/welford.wgsl",
                "shaders/grad_sums.wgsl",
                "shaders/tree_workgroup.wgsl",
                "shaders/stats.wgsl",
                "shaders/stats_inner.wgsl",
                "<tensor accessors from src/shaders.rs>",
            ]
        );
        let lines: Vec<&str> = composed.source.lines().collect();
        let stats = include_str!("../shaders/stats.wgsl");
        let target = stats.lines().position(|l| l.starts_with("fn write_partial")).expect("stats.wgsl has write_partial") + 1;
        let composed_line = lines.iter().position(|l| l.starts_with("fn write_partial")).expect("composed has it") + 1;
        assert_eq!(composed.locate(composed_line), ("shaders/stats.wgsl", target));
        assert!(composed.source.contains(&format!("const PARTIAL_FLOATS: u32 = {PARTIAL_FLOATS}u;")));
        assert!(composed.source.contains("const WG: u32 = 8u;"));
    }

    fn each_module(mut f: impl FnMut(Kernel, Variant, &naga::Module, &naga::valid::ModuleInfo)) {
        for (kernel, variant) in variants(256) {
            let (module, info) = parse(kernel, variant);
            f(kernel, variant, &module, &info);
        }
    }

    #[test]
    fn translates_to_spirv() {
        each_module(|kernel, variant, module, info| {
            let pipeline = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: kernel.name().to_string() };
            spv::write_vec(module, info, &spv::Options::default(), Some(&pipeline))
                .unwrap_or_else(|e| panic!("{kernel:?} {variant:?} -> SPIR-V: {e}"));
        });
    }

    #[test]
    fn translates_to_msl() {
        each_module(|kernel, variant, module, info| {
            let options = msl::Options { lang_version: (2, 1), ..Default::default() };
            msl::write_string(module, info, &options, &msl::PipelineOptions::default())
                .unwrap_or_else(|e| panic!("{kernel:?} {variant:?} -> MSL: {e}"));
        });
    }

    #[test]
    fn translates_to_hlsl() {
        each_module(|kernel, variant, module, info| {
            // f16 needs shader model 6.2, which wgpu's DX12 backend asks for with SHADER_F16.
            let shader_model =
                if variant.storage == Storage::F16 { hlsl::ShaderModel::V6_2 } else { hlsl::Options::default().shader_model };
            let mut out = String::new();
            hlsl::Writer::new(&mut out, &hlsl::Options { shader_model, ..Default::default() }, &hlsl::PipelineOptions::default())
                .write(module, info, None)
                .unwrap_or_else(|e| panic!("{kernel:?} {variant:?} -> HLSL: {e}"));
        });
    }

    #[test]
    fn translates_to_glsl_es_310() {
        each_module(|kernel, variant, module, info| {
            // wgpu's GL backend has no SHADER_F16, so it never runs f16 modules.
            if variant.storage == Storage::F16 {
                return;
            }
            let options = glsl::Options { version: glsl::Version::Embedded { version: 310, is_webgl: false }, ..Default::default() };
            let pipeline =
                glsl::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: kernel.name().to_string(), multiview: None };
            let mut out = String::new();
            glsl::Writer::new(&mut out, module, info, &options, &pipeline, naga::proc::BoundsCheckPolicies::default())
                .and_then(|mut w| w.write())
                .unwrap_or_else(|e| panic!("{kernel:?} {variant:?} -> GLSL: {e}"));
        });
    }
}
