#import common
#import params

// The streaming passes (apply.wgsl, backward_dx.wgsl): one elementwise update
// per item with per-channel coefficients. The kernel defines `item(i, k)`,
// and `item_pair(w, k)` for items 2w and 2w + 1 (see stream_pairs).
//
// Both ways of covering the tensor give each workgroup one contiguous span
// (or one per o-row), never items strided across the whole tensor: on CPU
// adapters a workgroup runs on one thread, and interleaved spans measured
// 1.5x slower there for the same loads.

// The four per-channel arrays of `params`, as one item's lanes need them.
struct Coeffs {
    shift: V,
    offset: V,
    scale: V,
    bias: V,
}

fn channel_coeffs(c: u32) -> Coeffs {
    return Coeffs(channel_param(P_SHIFT, c), channel_param(P_OFFSET, c), channel_param(P_SCALE, c), channel_param(P_BIAS, c));
}

fn column_coeffs(t: u32) -> Coeffs {
    return Coeffs(param(P_SHIFT, t), param(P_OFFSET, t), param(P_SCALE, t), param(P_BIAS, t));
}

fn stream(lid: u32, gid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>) {
    if (g.row_lanes != 0u) {
        // Row lanes: rows too short for a workgroup each; invocation lid of
        // workgroup w takes every WG-th row of the workgroup's run of rows
        // r = o * C + c, whole, with its channel's coefficients.
        let w = group_index(wid, nwg);
        if (w >= g.stream_groups) {
            return;
        }
        let first = part_start(w, g.stream_groups, g.stream_units) + lid;
        let end = part_start(w + 1u, g.stream_groups, g.stream_units);
        if (PAIRS) {
            for (var r = first; r < end; r += WG) {
                stream_row_pairs(r * g.inner_v, (r + 1u) * g.inner_v, channel_coeffs(r % g.channels));
            }
            return;
        }
        for (var r = first; r < end; r += WG) {
            let row = r * g.inner_v;
            let k = channel_coeffs(r % g.channels);
            for (var i = row; i < row + g.inner_v; i++) {
                item(i, k);
            }
        }
        return;
    }
    if (g.row_segments > 0u) {
        // Segments: row r = o * C + c of inner_v items is cut into row_segments
        // segments; workgroup w takes a run of consecutive segments, each of one
        // channel, so its coefficients are the same for the whole workgroup.
        let w = group_index(wid, nwg);
        if (w >= g.stream_groups) {
            return;
        }
        let start = part_start(w, g.stream_groups, g.stream_units);
        let end = part_start(w + 1u, g.stream_groups, g.stream_units);
        // Row r, its segment and channel, stepped without a division per segment.
        var r = start / g.row_segments;
        var segment = start - r * g.row_segments;
        var c = r % g.channels;
        for (var u = start; u < end; u++) {
            let k = channel_coeffs(c);
            let row = r * g.inner_v;
            let first = segment * g.segment_len;
            let last = row + min(first + g.segment_len, g.inner_v);
            if (PAIRS) {
                stream_pairs(lid, row + first, last, k);
            } else {
                for (var i = row + first + lid; i < last; i += WG) {
                    item(i, k);
                }
            }
            segment++;
            if (segment == g.row_segments) {
                segment = 0u;
                r++;
                c = select(c + 1u, 0u, c + 1u == g.channels);
            }
        }
        return;
    }
    // Columns: invocation t owns position t of every o-slice, so its coefficients
    // are fixed, and walks workgroup row wid.y's block of consecutive o.
    let o_end = part_start(wid.y + 1u, nwg.y, g.outer);
    for (var t = gid.x; t < g.slice; t += nwg.x * WG) {
        let k = column_coeffs(t);
        for (var o = part_start(wid.y, nwg.y, g.outer); o < o_end; o++) {
            item(o * g.slice + t, k);
        }
    }
}

// Items [lo, hi) of one channel, scalar items of a dtype stored two to a word
// (PAIRS): each whole word of the span goes to one invocation, which stores
// both halves with one plain store; an item sharing its word with the span
// before (an odd start) or after (an odd end) stores alone, through the atomic
// half-word store. The two are never the same item (an odd start is odd, an
// odd end's item even), also in a span of one item.
fn stream_pairs(lid: u32, lo: u32, hi: u32, k: Coeffs) {
    if (hi <= lo) {
        return;
    }
    if ((lo & 1u) == 1u && lid == 0u) {
        item(lo, k);
    }
    if ((hi & 1u) == 1u && lid == WG - 1u) {
        item(hi - 1u, k);
    }
    for (var w = (lo + 1u) / 2u + lid; w < hi / 2u; w += WG) {
        item_pair(w, k);
    }
}

// Items [lo, hi) of one channel by one invocation, scalar items stored two to
// a word (PAIRS): whole words as pairs, and an item sharing its word with a
// neighbouring row (which another invocation writes) through the atomic
// half-word store. stream_pairs with a lane and a lane count as arguments
// would do this too, but its variable step made f16 training forward on
// 8x512x7x7 1.8 times slower on lavapipe.
fn stream_row_pairs(lo: u32, hi: u32, k: Coeffs) {
    var first = lo;
    var last = hi;
    if ((first & 1u) == 1u) {
        item(first, k);
        first++;
    }
    if ((last & 1u) == 1u && last > first) {
        last--;
        item(last, k);
    }
    for (var w = first / 2u; w < last / 2u; w++) {
        item_pair(w, k);
    }
}
