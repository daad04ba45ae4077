// The normalization family's forward, pass 1 (src/norms/): workgroup w reduces
// chunk w % chunks of row w / chunks to shifted, compensated Chan statistics
// (stats.wgsl's partial result). A row in one chunk is finished here: its
// statistics saved and y written by a second walk over the same values, which
// the workgroup has just read (x read once from memory); otherwise
// norm_forward_finalize.wgsl and norm_apply.wgsl follow. Layer and RMS norm
// with rows in one chunk (FLAG_ROW_BLOCK) take NORM_ROW_BLOCK rows a workgroup
// instead (forward_rows).

#import stats
#import norm_finish
#import norm_y

@group(0) @binding(3) var<storage, read_write> y: array<TensorOut>;
@group(0) @binding(4) var<storage, read> gamma: array<V>;
@group(0) @binding(5) var<storage, read> beta: array<V>;
@group(0) @binding(6) var<storage, read_write> save_mean: array<f32>;
@group(0) @binding(7) var<storage, read_write> save_rstd: array<f32>;
@group(0) @binding(8) var<storage, read_write> params: array<f32>;

var<workgroup> row_values: array<vec4<f32>, NORM_ROW_BLOCK>;

@compute @workgroup_size(WG)
fn norm_forward(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if ((g.flags & FLAG_ROW_BLOCK) != 0u) {
        forward_rows(t, w);
        return;
    }
    if ((g.flags & FLAG_ROW_LANES) != 0u) {
        forward_run_rows(t, w);
        return;
    }
    if (w >= g.groups) {
        return;
    }
    let rc = row_chunk(w);
    let shift = row_shift(rc);
    let r = tree_acc(t, 1u, merge_lanes(chunk_acc(t, rc, shift)));
    if (g.chunks > 1u) {
        if (t == 0u) {
            write_partial(rc.row, rc.chunk, r, 0u, shift);
        }
        return;
    }
    if (t == 0u) {
        row_values[0] = finish_row(rc.row, shift, r);
    }
    workgroupBarrier();
    write_y(t, rc, row_values[0]);
}

fn row_shift(rc: RowChunk) -> f32 {
    return lane(load_x(row_cursor(rc, 0u).index), 0u);
}

// Lane t's statistics of its items of the chunk.
fn chunk_acc(t: u32, rc: RowChunk, shift: f32) -> Acc {
    var cur = row_cursor(rc, rc.start + t);
    let first = load_x(min(cur.index, g.numel_v - 1u));
    var acc = acc_zero();
    for (var j = rc.start + t; j < rc.end;) {
        var sums = sums_from(first);
        for (let block_end = min(rc.end, j + SUMS_BLOCK * WG); j < block_end; j += WG) {
            sums = add(sums, load_x(cur.index));
            cur = cursor_step(cur);
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    return acc;
}

// A row's forward values (finish_row) from one invocation's statistics of it
// (FLAG_ROW_LANES).
fn lone_row_values(rc: RowChunk) -> vec4<f32> {
    let shift = row_shift(rc);
    return finish_row(rc.row, shift, merge_lanes(row_acc(rc, shift)));
}

// One invocation's statistics of a whole row (FLAG_ROW_LANES, rows
// contiguous): chunk_acc's blocks, item by item.
fn row_acc(rc: RowChunk, shift: f32) -> Acc {
    let base = row_cursor(rc, 0u).index;
    let first = load_x(base);
    var acc = acc_zero();
    for (var j = 0u; j < g.items;) {
        var sums = sums_from(first);
        for (let block_end = min(g.items, j + SUMS_BLOCK); j < block_end; j++) {
            sums = add(sums, load_x(base + j));
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    return acc;
}

// Layer and RMS norm (parameters along the row, norm_ka == 0, O == 1), rows
// in one chunk: workgroup w takes rows w * NORM_ROW_BLOCK on, reduces each as
// above, then walks their items column by column, so that an item's gamma and
// beta are loaded once for all the rows (a load costs nearly a copy on CPU
// adapters). Row r's item is r * inner_v past the first row's. With
// FLAG_ROW_LANES invocation t reduces rows t, t + WG, ... of the block alone.
fn forward_rows(t: u32, w: u32) {
    let first = w * NORM_ROW_BLOCK;
    if (first >= g.groups) {
        return;
    }
    let n = min(NORM_ROW_BLOCK, g.groups - first);
    if ((g.flags & FLAG_ROW_LANES) != 0u) {
        for (var r = t; r < n; r += WG) {
            row_values[r] = lone_row_values(row_chunk(first + r));
        }
    } else {
        for (var r = 0u; r < n; r++) {
            let rc = row_chunk(first + r);
            let shift = row_shift(rc);
            let a = tree_acc(t, 1u, merge_lanes(chunk_acc(t, rc, shift)));
            if (t == 0u) {
                row_values[r] = finish_row(rc.row, shift, a);
            }
        }
    }
    workgroupBarrier();
    var p: array<vec4<f32>, NORM_ROW_BLOCK>;
    for (var r = 0u; r < NORM_ROW_BLOCK; r++) {
        // Rows past the block's n are never written (nor used).
        p[r] = row_values[min(r, n - 1u)];
    }
    let rc = row_chunk(first);
    let shift_beta = (g.flags & FLAG_AFFINE) != 0u && !rms();
    var walk = walk_at(rc, rc.start + t);
    for (var j = rc.start + t; j < rc.end; j += WG) {
        // gamma_item is 1 without affine parameters, and y = xhat exactly.
        let gm = gamma_item(rc.k, walk);
        var b = splat(0.0);
        if (shift_beta) {
            b = beta_item(rc.k, walk);
        }
        for (var r = 0u; r < NORM_ROW_BLOCK; r++) {
            if (r < n) {
                let i = walk.cur.index + r * g.inner_v;
                store_y(i, fma(gm, fma(load_x(i) - splat(p[r].x), splat(p[r].y), splat(p[r].z)), b));
            }
        }
        walk = walk_step(walk);
    }
}

// Channels-first group and instance norm with a row an invocation
// (FLAG_ROW_LANES without FLAG_ROW_BLOCK): workgroup w takes rows w * WG on,
// invocation t reduces row t of them alone, then the workgroup writes each
// row's y run by run.
fn forward_run_rows(t: u32, w: u32) {
    let first = w * WG;
    if (first >= g.groups) {
        return;
    }
    let n = min(WG, g.groups - first);
    if (t < n) {
        row_values[t] = lone_row_values(row_chunk(first + t));
    }
    workgroupBarrier();
    for (var r = 0u; r < n; r++) {
        write_y_runs(t, row_chunk(first + r), row_values[r]);
    }
}
