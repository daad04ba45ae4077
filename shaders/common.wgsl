// Shared by every kernel. Element (o, c, s) of a tensor lives at (o * C + c) * S + s;
// "items" are elements (scalar variant) or vec4s (vec4 variant), see the preludes.
//
// The host defines the constants this file and the kernels use (src/shaders.rs
// writes them at the top of every module): WG, the invocations per workgroup
// (256 on GPUs, a few SIMD lanes on CPU adapters), the FLAG_* bits of
// Geometry.flags, the P_* rows of the per-channel parameter buffer (rows of
// c_pad floats), PARTIAL_FLOATS and FUSED_ITEMS.

// The uniform every kernel reads. src/plan.rs declares the same struct; a unit
// test there compares naga's layout of this one with Rust's field offsets.
struct Geometry {
    channels: u32,
    inner: u32,
    outer: u32,
    // S / W when the items run along S (S > 1), else 1.
    inner_v: u32,
    // C / W when the items run along C (S == 1), else C.
    channels_v: u32,
    // Items per channel for the inner strategy (O * inner_v).
    items: u32,
    numel_v: u32,
    // Partial results per channel, and items (inner) or rows (rows strategy) per partial.
    chunks: u32,
    chunk_len: u32,
    // Rows strategy: channel items per workgroup, a power of two dividing WG.
    tile_x: u32,
    // Workgroups the reduction dispatch covers (the grid may round up).
    groups: u32,
    c_pad: u32,
    flags: u32,
    eps: f32,
    // The running statistics' weight of this batch, as the four bytes of its
    // f32 (low first), one a word: a record that weighs its own batch copies
    // each byte in from a table of the 256 byte values (src/prepared.rs), so
    // that no record writes what another reads. running_factor() reads it.
    factor_b0: u32,
    factor_b1: u32,
    factor_b2: u32,
    factor_b3: u32,
    // A fused LeakyReLU's slope (activation_leaky.wgsl).
    slope: f32,
    count: f32,
    unbias: f32,
    // Items in one o-slice (C * inner_v, or channels_v when S == 1): streaming
    // kernels give each invocation one position t in it and loop over o.
    slice: u32,
    // The inner strategy advances (o, s) by WG items as s += step_rem, o += step_rows,
    // with one carry, instead of dividing per item: WG = step_rows * inner_v + step_rem.
    step_rows: u32,
    step_rem: u32,
    // Partials of channel c live at c * chunk_stride + chunk_base + k: a tensor
    // bound window by window writes each window's chunks after the previous ones.
    chunk_base: u32,
    chunk_stride: u32,
    // forward_fused.wgsl: invocations per channel item, and workgroups.
    fused_lanes: u32,
    fused_groups: u32,
    // stream.wgsl: segments per row of inner_v items (0: cover by columns,
    // unless row_lanes), items per segment, segments (or rows) in all, and
    // workgroups.
    row_segments: u32,
    segment_len: u32,
    stream_units: u32,
    stream_groups: u32,
    // The normalization family (norm.wgsl): the tensor as [B, O, K, L] with
    // statistics per row (b, k) over (o, l); channels = K, inner_v = L,
    // items = O * L. The affine index of (k, l) is k * norm_ka + l / norm_ld.
    norm_ka: u32,
    norm_ld: u32,
    norm_o: u32,
    norm_rows: u32,
    // Affine parameters, and the values each one's gradients sum over, split
    // into param_chunks chunks of param_chunk_len, param_tile parameters a
    // workgroup, param_groups workgroups.
    norm_params: u32,
    param_items: u32,
    param_chunks: u32,
    param_chunk_len: u32,
    param_tile: u32,
    param_groups: u32,
    // norm.wgsl's RowWalk: a step of WG items moves l by step_rem * W values,
    // walk_q whole parameter runs of norm_ld plus walk_r; a row's wrap to the
    // next o moves back walk_wrap = L / norm_ld runs.
    walk_q: u32,
    walk_r: u32,
    walk_wrap: u32,
    // norm_param_partials.wgsl: parameter items (W parameters each where
    // norm_ld == 1, else one), and items in one parameter's run of norm_ld values.
    param_units: u32,
    param_run: u32,
    // A tensor of the family bound window by window: the window's first row
    // and sample in the whole tensor (per-row values, partials), and where its
    // parameter-gradient chunks start among all windows' (param_chunks in all).
    row_base: u32,
    b_base: u32,
    param_chunk_base: u32,
    // Layer and RMS norm's backward in row blocks (FLAG_ROW_BLOCK): rows a
    // workgroup takes, NORM_ROW_BLOCK to NORM_MAX_ROW_BLOCK.
    row_block: u32,
    // stream.wgsl: 1 where an invocation takes whole rows of inner_v items.
    row_lanes: u32,
}

// The running statistics' weight of this batch, from its four bytes.
fn running_factor() -> f32 {
    return bitcast<f32>(g.factor_b0 | (g.factor_b1 << 8u) | (g.factor_b2 << 16u) | (g.factor_b3 << 24u));
}

// First float of partial result k of channel c (PARTIAL_FLOATS floats each).
fn partial_index(c: u32, k: u32) -> u32 {
    return PARTIAL_FLOATS * (c * g.chunk_stride + g.chunk_base + k);
}

// Position (o, s) of item j of a channel, as a flat index (o * C + c) * inner_v + s,
// advanced by WG items at a time.
struct Cursor {
    s: u32,
    index: u32,
}

fn cursor_at(j: u32, c: u32) -> Cursor {
    let o = j / g.inner_v;
    let s = j - o * g.inner_v;
    return Cursor(s, (o * g.channels + c) * g.inner_v + s);
}

fn cursor_step(cur: Cursor) -> Cursor {
    var s = cur.s + g.step_rem;
    var index = cur.index + g.step_rem + g.step_rows * g.slice;
    if (s >= g.inner_v) {
        s -= g.inner_v;
        index += g.slice - g.inner_v;
    }
    return Cursor(s, index);
}

// Start of part w of n parts of [0, len) whose sizes differ by at most one.
fn part_start(w: u32, n: u32, len: u32) -> u32 {
    return w * (len / n) + min(w, len % n);
}

// Grids wider than 65535 workgroups are folded into y.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Where an invocation of the rows strategy (S == 1) works: channel item cv of
// a tile_x-wide tile, row lane ty of WG / tile_x, over rows [start, end) of
// chunk k. The row step, WG / tile_x, stays with the caller: it bounds loops
// with barriers, which need it uniform.
struct RowsTile {
    k: u32,
    ty: u32,
    cv: u32,
    // cv clamped into range, for loads; in_range says whether cv is real.
    cv_safe: u32,
    in_range: bool,
    start: u32,
    end: u32,
}

fn rows_tile(t: u32, w: u32) -> RowsTile {
    let tiles = (g.channels_v + g.tile_x - 1u) / g.tile_x;
    let k = w / tiles;
    let ty = t / g.tile_x;
    let cv = (w % tiles) * g.tile_x + t % g.tile_x;
    let end = min((k + 1u) * g.chunk_len, g.outer);
    return RowsTile(k, ty, cv, min(cv, g.channels_v - 1u), cv < g.channels_v, k * g.chunk_len + ty, end);
}
