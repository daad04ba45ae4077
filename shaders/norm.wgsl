// The normalization family (group, layer, instance and RMS norm, src/norms/):
// the tensor viewed as [B, O, K, L] row-major, statistics per row (b, k) over
// its O * L values (o, l), element at ((b * O + o) * K + k) * L + l. The
// geometry holds channels = K, inner = L, inner_v = L / W, items = O * L / W,
// so that common.wgsl's Cursor walks a row: its j-th item is item
// b * items + j of "channel" k. Items are vec4 where L % 4 == 0 and four
// consecutive values share one parameter (norm_ld % 4 == 0) or run along
// four (norm_ld == 1); src/norms/mod.rs picks the width.
// Rows are split into g.chunks chunks of g.chunk_len values; one workgroup
// takes one chunk. The affine parameter of (k, l) is k * norm_ka + l / norm_ld.
// A tensor larger than one binding is bound in windows of whole rows (layer
// norm) or samples: indices into x, y, dy, dx are the window's, `row` the whole
// tensor's, g.row_base on; partials are indexed by `row`, the per-row arrays
// by row_at(row).

#import common

// Per-row values the passes hand on in `params`, NORM_ROW_FLOATS floats a row.
// Forward: the shift y subtracts, rstd, the bias of xhat = (x - shift) * rstd + bias,
// and the biased variance (instance norm's running statistics).
const R_SHIFT: u32 = 0u;
const R_RSTD: u32 = 1u;
const R_BIAS: u32 = 2u;
const R_VAR: u32 = 3u;
// Backward: the saved mean (0 for RMS norm), delta = mean(x) - saved mean,
// rstd, and dx = k * dy * gamma + slope * (x - saved mean) + bias.
const R_DELTA: u32 = 3u;
const R_K: u32 = 4u;
const R_SLOPE: u32 = 5u;

struct RowChunk {
    // The row in the whole tensor, and its chunk.
    row: u32,
    chunk: u32,
    // (b, k) in the window.
    b: u32,
    k: u32,
    start: u32,
    end: u32,
}

fn row_chunk(w: u32) -> RowChunk {
    let local = w / g.chunks;
    let chunk = w - local * g.chunks;
    let b = local / g.channels;
    let start = chunk * g.chunk_len;
    return RowChunk(g.row_base + local, chunk, b, local - b * g.channels, start, min(start + g.chunk_len, g.items));
}

// Value j of the row.
fn row_cursor(rc: RowChunk, j: u32) -> Cursor {
    return cursor_at(rc.b * g.items + j, rc.k);
}

fn affine_index(k: u32, l: u32) -> u32 {
    // No division per value where parameters run along l (layer norm, channels-last).
    if (g.norm_ld == 1u) {
        return k * g.norm_ka + l;
    }
    return k * g.norm_ka + l / g.norm_ld;
}

// A walk over a row's items: the cursor, and the item's parameter offset
// q = l / norm_ld (its parameter is k * norm_ka + q) with r = l % norm_ld,
// stepped without a division per item.
struct RowWalk {
    cur: Cursor,
    q: u32,
    r: u32,
}

fn walk_at(rc: RowChunk, j: u32) -> RowWalk {
    let cur = row_cursor(rc, j);
    let l = cur.s * W;
    let q = l / g.norm_ld;
    return RowWalk(cur, q, l - q * g.norm_ld);
}

fn walk_step(w: RowWalk) -> RowWalk {
    let cur = cursor_step(w.cur);
    var q = w.q + g.walk_q;
    var r = w.r + g.walk_r;
    if (r >= g.norm_ld) {
        r -= g.norm_ld;
        q += 1u;
    }
    // The cursor wrapped to the row's next o: l went back by L.
    if (cur.s < w.cur.s + g.step_rem) {
        q -= g.walk_wrap;
    }
    return RowWalk(cur, q, r);
}

// Index of the tensor's row `row` in the per-row arrays (save_mean, save_rstd,
// the per-row values in `params`) as bound: a window's tensor passes bind the
// window's rows of them (src/prepared.rs), from its g.row_base; the per-row
// and per-channel passes bind them whole, with g.row_base 0. So that a tensor
// with more rows than one binding holds runs in windows.
fn row_at(row: u32) -> u32 {
    return row - g.row_base;
}

fn rms() -> bool {
    return (g.flags & FLAG_RMS) != 0u;
}
