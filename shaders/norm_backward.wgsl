// The normalization family's backward, pass 1 (src/norms/): workgroup w sums
// dy * gamma, dy * gamma * (x - ms) and x - ms over chunk w % chunks of row
// w / chunks (compensated sums, grad_sums.wgsl). A row in one chunk is finished
// here: its backward values computed and dx written by a second walk over the
// values the workgroup has just read; otherwise norm_backward_finalize.wgsl
// and norm_backward_dx.wgsl follow. With FLAG_GRADS_IN_ROWS (channels-first
// group and instance norm: a row is norm_ka runs of one channel each) that
// walk also sums dgamma and dbeta per (row, channel), instead of
// norm_param_partials.wgsl reading x and dy again. Layer and RMS norm with rows
// in one chunk (FLAG_ROW_BLOCK) take g.row_block rows a workgroup instead
// (backward_rows), and with FLAG_GRADS_IN_ROWS sum dgamma and dbeta per
// (block, parameter) in their dx walk.

#import norm_grad
#import norm_dx
#import norm_partials
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(3) var<storage, read> gamma: array<V>;
@group(0) @binding(4) var<storage, read> save_mean: array<f32>;
@group(0) @binding(5) var<storage, read> save_rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<TensorOut>;

var<workgroup> row_values: array<vec4<f32>, NORM_MAX_ROW_BLOCK>;
// delta and rstd of each row (norm_grad.wgsl), for xhat.
var<workgroup> row_xhat: array<vec2<f32>, NORM_MAX_ROW_BLOCK>;

// dx of the row, run by run, and each run's sums of dy and dy * xhat as the
// partial of its channel a for sample b, at (a * param_chunks + b): the lanes
// merged in the fixed tree, then norm_param_grads.wgsl merges the samples in order.
fn write_dx_and_grads(t: u32, rc: RowChunk, v: vec4<f32>, xhat: vec2<f32>) {
    let ms = splat(v.x);
    for (var c = 0u; c < g.norm_ka; c++) {
        let a = rc.k * g.norm_ka + c;
        let gam = gamma_of(a);
        let start = run_start(rc, c);
        var s = grad_sums_zero();
        for (var i = start + t; i < start + g.param_run; i += WG) {
            let d = load_dy(i);
            let xm = load_x(i) - ms;
            store_dx(i, row_dx(v, d, gam, xm));
            s = param_sums_add(s, d, xhat_of(xm, xhat));
        }
        let r = tree_sums(t, 1u, grad_sums_lanes(s));
        if (t == 0u) {
            write_grad_partial(PARTIAL_FLOATS * (a * g.param_chunks + g.b_base + rc.b), r, 0u);
        }
    }
}

@compute @workgroup_size(WG)
fn norm_backward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if ((g.flags & FLAG_ROW_BLOCK) != 0u) {
        backward_rows(t, w);
        return;
    }
    if ((g.flags & FLAG_ROW_LANES) != 0u) {
        backward_run_rows(t, w);
        return;
    }
    if (w >= g.groups) {
        return;
    }
    let rc = row_chunk(w);
    let ms = row_mean(rc);
    let r = tree_sums(t, 1u, grad_sums_lanes(chunk_sums(t, rc, ms)));
    if (g.chunks > 1u) {
        if (t == 0u) {
            write_grad_partial(partial_index(rc.row, rc.chunk), r, 0u);
        }
        return;
    }
    if (t == 0u) {
        keep_grad_row(0u, rc, ms, r);
    }
    workgroupBarrier();
    write_row_dx(t, rc, 0u);
}

// Finishes the row of rc from its sums `s` and keeps its backward values and
// xhat's delta and rstd as row r of the workgroup's.
fn keep_grad_row(r: u32, rc: RowChunk, ms: f32, s: GradSums) {
    row_values[r] = finish_grad_row(rc.row, s, ms, save_rstd[row_at(rc.row)]);
    row_xhat[r] = saved_xhat(rc.row);
}

// dx of the row of rc from the workgroup's row r (keep_grad_row), with its
// dgamma and dbeta partials under FLAG_GRADS_IN_ROWS.
fn write_row_dx(t: u32, rc: RowChunk, r: u32) {
    if ((g.flags & FLAG_GRADS_IN_ROWS) != 0u) {
        write_dx_and_grads(t, rc, row_values[r], row_xhat[r]);
    } else {
        write_dx(t, rc, row_values[r]);
    }
}

fn row_mean(rc: RowChunk) -> f32 {
    if (rms()) {
        return 0.0;
    }
    return save_mean[row_at(rc.row)];
}

// Lane t's sums over its items of the chunk.
fn chunk_sums(t: u32, rc: RowChunk, ms: f32) -> GradSums {
    if ((g.flags & FLAG_CHANNEL_RUNS) != 0u) {
        return run_sums(rc, ms, t, WG);
    }
    var s = grad_sums_zero();
    var walk = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        s = grad_sums_add(s, load_dy(walk.cur.index) * gamma_item(rc.k, walk), load_x(walk.cur.index) - splat(ms));
        walk = walk_step(walk);
    }
    return s;
}

// Sums over a row of channel runs (FLAG_CHANNEL_RUNS), run by run, each
// run's gamma loaded once: items offset, offset + step, ... of each run
// (lane t of the workgroup's: t, WG; a row an invocation: 0, 1).
fn run_sums(rc: RowChunk, ms: f32, offset: u32, step: u32) -> GradSums {
    var s = grad_sums_zero();
    for (var c = 0u; c < g.norm_ka; c++) {
        let gam = gamma_of(rc.k * g.norm_ka + c);
        let start = run_start(rc, c);
        for (var i = start + offset; i < start + g.param_run; i += step) {
            s = grad_sums_add(s, load_dy(i) * gam, load_x(i) - splat(ms));
        }
    }
    return s;
}

// One invocation's sums over a whole row (FLAG_ROW_LANES: layer and RMS
// norm, rows contiguous, item j's gamma is gamma[j] in every row).
fn row_sums(rc: RowChunk, ms: f32) -> GradSums {
    let base = row_cursor(rc, 0u).index;
    let affine = (g.flags & FLAG_AFFINE) != 0u;
    var s = grad_sums_zero();
    for (var j = 0u; j < g.items; j++) {
        var d = load_dy(base + j);
        if (affine) {
            d *= gamma[j];
        }
        s = grad_sums_add(s, d, load_x(base + j) - splat(ms));
    }
    return s;
}

// delta and rstd of a row whose backward values finish_grad_row has written.
fn saved_xhat(row: u32) -> vec2<f32> {
    let i = row_at(row) * NORM_ROW_FLOATS;
    return vec2<f32>(params[i + R_DELTA], params[i + R_RSTD]);
}

// Layer and RMS norm, rows in one chunk (as norm_forward.wgsl's forward_rows):
// workgroup w takes rows w * g.row_block on, sums each as above, then
// writes their dx DX_QUADS quads of items a lane at a time, an item's gamma
// loaded once for all the rows (with FLAG_ROW_LANES each row summed by one
// invocation, row_sums).
// With FLAG_GRADS_IN_ROWS the walk also sums each item's dy and
// dy * xhat over the block's rows, lane by lane (an item's W values are W
// parameters), as the partial of chunk param_chunk_base + w of those
// parameters; norm_param_grads.wgsl merges the blocks in order.
fn backward_rows(t: u32, w: u32) {
    let first = w * g.row_block;
    if (first >= g.groups) {
        return;
    }
    let n = min(g.row_block, g.groups - first);
    if ((g.flags & FLAG_ROW_LANES) != 0u) {
        for (var r = t; r < n; r += WG) {
            let rc = row_chunk(first + r);
            let ms = row_mean(rc);
            keep_grad_row(r, rc, ms, grad_sums_lanes(row_sums(rc, ms)));
        }
    } else {
        for (var r = 0u; r < n; r++) {
            let rc = row_chunk(first + r);
            let ms = row_mean(rc);
            let sums = tree_sums(t, 1u, grad_sums_lanes(chunk_sums(t, rc, ms)));
            if (t == 0u) {
                keep_grad_row(r, rc, ms, sums);
            }
        }
    }
    workgroupBarrier();
    let grads = (g.flags & FLAG_GRADS_IN_ROWS) != 0u;
    let rc = row_chunk(first);
    let base = row_cursor(rc, 0u).index;
    // Lane by lane, DX_QUADS quads of items WG apart, row after row: each
    // visit of a row covers 4 * DX_QUADS * WG consecutive items (the block's
    // rows are as many streams of x, dy and dx), and within a quad all loads
    // come before its stores, which the compiler may not move loads past (dx
    // could alias x or dy as far as it knows). BENCHMARKS.md: 1.1 to 1.3x
    // faster on lavapipe than an item a lane, and two quads under workgroups
    // of 8 (visits of 64 items, not 32) 1.3x faster than one.
    for (var j = rc.start + t; j < rc.end; j += DX_QUADS * 4u * WG) {
        let qa = quad_at(j, j, rc.end);
        var qb = qa;
        if (DX_QUADS > 1u) {
            qb = quad_at(j + 4u * WG, j, rc.end);
        }
        var sa = quad_sums_zero();
        var sb = sa;
        for (var r = 0u; r < n; r++) {
            let row = base + r * g.inner_v;
            let v = row_values[r];
            let h = row_xhat[r];
            sa = quad_row(qa, sa, row, v, h, grads);
            if (DX_QUADS > 1u) {
                sb = quad_row(qb, sb, row, v, h, grads);
            }
        }
        if (grads) {
            write_quad_partials(qa, w, sa);
            if (DX_QUADS > 1u) {
                write_quad_partials(qb, w, sb);
            }
        }
    }
}

// Quads a lane takes a visit of the row-block dx walk: two under workgroups
// of at most 8 invocations (the CPU tuning's), where a quad's visit would
// cover only 32 items of each row.
const DX_QUADS: u32 = select(1u, 2u, WG <= 8u);

// Four items of a row of the block, WG apart from item j on: their positions
// in the row (one past the row's end stands in for item `stand_in`, in
// range: loaded and summed, never stored or written), whether each is in the
// row, and their gamma (1 without affine parameters).
struct Quad {
    item: vec4<u32>,
    on: vec4<bool>,
    g0: V,
    g1: V,
    g2: V,
    g3: V,
}

fn quad_at(j: u32, stand_in: u32, end: u32) -> Quad {
    let items = vec4<u32>(j, j + WG, j + 2u * WG, j + 3u * WG);
    let on = items < vec4<u32>(end);
    let item = select(vec4<u32>(stand_in), items, on);
    return Quad(item, on, row_gamma(item.x), row_gamma(item.y), row_gamma(item.z), row_gamma(item.w));
}

// gamma of item j of a row with parameters along it (norm_ld == 1, norm_ka == 0).
fn row_gamma(j: u32) -> V {
    if ((g.flags & FLAG_AFFINE) == 0u) {
        return splat(1.0);
    }
    return gamma[j];
}

// A quad's sums of dy and dy * xhat over the rows visited so far.
struct QuadSums {
    s0: GradSums,
    s1: GradSums,
    s2: GradSums,
    s3: GradSums,
}

fn quad_sums_zero() -> QuadSums {
    let z = grad_sums_zero();
    return QuadSums(z, z, z, z);
}

// The quad's items of the row at `row`, with backward values v and xhat's h:
// their dx stored and, with `grads`, their dy and dy * xhat added to s.
fn quad_row(q: Quad, s: QuadSums, row: u32, v: vec4<f32>, h: vec2<f32>, grads: bool) -> QuadSums {
    let i = row + q.item;
    let d0 = load_dy(i.x);
    let d1 = load_dy(i.y);
    let d2 = load_dy(i.z);
    let d3 = load_dy(i.w);
    let xm0 = load_x(i.x) - splat(v.x);
    let xm1 = load_x(i.y) - splat(v.x);
    let xm2 = load_x(i.z) - splat(v.x);
    let xm3 = load_x(i.w) - splat(v.x);
    var r = s;
    if (grads) {
        r.s0 = param_sums_add(s.s0, d0, xhat_of(xm0, h));
        r.s1 = param_sums_add(s.s1, d1, xhat_of(xm1, h));
        r.s2 = param_sums_add(s.s2, d2, xhat_of(xm2, h));
        r.s3 = param_sums_add(s.s3, d3, xhat_of(xm3, h));
    }
    if (q.on.x) {
        store_dx(i.x, row_dx(v, d0, q.g0, xm0));
    }
    if (q.on.y) {
        store_dx(i.y, row_dx(v, d1, q.g1, xm1));
    }
    if (q.on.z) {
        store_dx(i.z, row_dx(v, d2, q.g2, xm2));
    }
    if (q.on.w) {
        store_dx(i.w, row_dx(v, d3, q.g3, xm3));
    }
    return r;
}

// Block w's partials of the quad's items in the row (item j's parameters are j * W on).
fn write_quad_partials(q: Quad, w: u32, s: QuadSums) {
    if (q.on.x) {
        write_block_partials(q.item.x * W, w, s.s0);
    }
    if (q.on.y) {
        write_block_partials(q.item.y * W, w, s.s1);
    }
    if (q.on.z) {
        write_block_partials(q.item.z * W, w, s.s2);
    }
    if (q.on.w) {
        write_block_partials(q.item.w * W, w, s.s3);
    }
}

// xhat of an item from x - saved mean xm and its row's delta and rstd h.
fn xhat_of(xm: V, h: vec2<f32>) -> V {
    return (xm - splat(h.x)) * splat(h.y);
}

// Block w's partials of the W parameters from a (an item's sums s, lane by lane).
fn write_block_partials(a: u32, w: u32, s: GradSums) {
    for (var l = 0u; l < W; l++) {
        write_grad_partial(PARTIAL_FLOATS * ((a + l) * g.param_chunks + g.param_chunk_base + w), s, l);
    }
}

// Channels-first group and instance norm with a row an invocation
// (FLAG_ROW_LANES without FLAG_ROW_BLOCK): workgroup w takes rows w * WG on,
// invocation t sums row t of them alone, then the workgroup writes each row's
// dx (and its runs' dgamma, dbeta partials) as a one-row workgroup would.
fn backward_run_rows(t: u32, w: u32) {
    let first = w * WG;
    if (first >= g.groups) {
        return;
    }
    let n = min(WG, g.groups - first);
    if (t < n) {
        let rc = row_chunk(first + t);
        let ms = row_mean(rc);
        keep_grad_row(t, rc, ms, grad_sums_lanes(run_sums(rc, ms, 0u, 1u)));
    }
    workgroupBarrier();
    for (var r = 0u; r < n; r++) {
        write_row_dx(t, row_chunk(first + r), r);
    }
}
