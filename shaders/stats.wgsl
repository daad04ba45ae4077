// Training forward, pass 1: per-channel partial statistics.
//
// Each workgroup reduces one chunk of one channel (inner strategy) or one chunk
// of rows for a tile of channels (rows strategy) to (count, mean, M2) of the
// values shifted by the channel's first value, and writes it with that shift.
// Invocations keep shifted sums (welford.wgsl's Sums) over blocks of SUMS_BLOCK items,
// merged into a Chan state after each block; the tree (tree_workgroup.wgsl or
// tree_subgroup.wgsl) merges those with Chan's formula:
// partials at 6 * partial_index(c, k): count, mean(x - shift), M2, shift, sum x and its compensation.
// The shift keeps x - shift exact in f32 for data far from zero (SPEC.md, Numerics).
// The reduction tree is fixed, so results are bitwise reproducible.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

// Each partial takes PARTIAL_FLOATS floats: count, mean - shift, M2, shift, and
// the compensated sum (value, comp).
const PARTIAL_FLOATS: u32 = 6u;

fn write_partial(c: u32, k: u32, r: Acc, l: u32, shift: f32) {
    let i = PARTIAL_FLOATS * partial_index(c, k);
    partials[i] = r.n;
    partials[i + 1u] = lane(r.mean, l);
    partials[i + 2u] = lane(r.m2, l);
    partials[i + 3u] = shift;
    partials[i + 4u] = lane(r.total.value, l);
    partials[i + 5u] = lane(r.total.comp, l);
}

// S > 1: the items of channel c are rows of inner_v items, channels * inner_v apart.
@compute @workgroup_size(WG)
fn stats_inner(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let c = w / g.chunks;
    let k = w % g.chunks;
    let shift = lane(x[c * g.inner_v], 0u);
    let end = min((k + 1u) * g.chunk_len, g.items);
    let start = k * g.chunk_len + t;
    var cur = cursor_at(start, c);
    let first = x[min(cur.index, g.numel_v - 1u)];
    var acc = acc_zero();
    for (var j = start; j < end;) {
        var sums = sums_from(first);
        for (let block_end = min(end, j + SUMS_BLOCK * WG); j < block_end; j += WG) {
            sums = add(sums, x[cur.index]);
            cur = cursor_step(cur);
        }
        acc = merge(acc, sums_to_acc(sums, splat(shift)));
    }
    let r = tree_acc(t, 1u, merge_lanes(acc));
    if (t == 0u) {
        write_partial(c, k, r, 0u, shift);
    }
}

// S == 1: row r holds channels_v items; thread (tx, ty) of a tile_x-wide tile
// walks rows ty, ty + WG / tile_x, ... of its chunk for channel item tx.
@compute @workgroup_size(WG)
fn stats_rows(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.groups) {
        return;
    }
    let tile = rows_tile(t, w);
    let rows_step = WG / g.tile_x;
    let shift = x[tile.cv_safe];
    let first = x[min(tile.start, g.outer - 1u) * g.channels_v + tile.cv_safe];
    var acc = acc_zero();
    if (tile.in_range) {
        for (var r = tile.start; r < tile.end;) {
            var sums = sums_from(first);
            for (let block_end = min(tile.end, r + SUMS_BLOCK * rows_step); r < block_end; r += rows_step) {
                sums = add(sums, x[r * g.channels_v + tile.cv_safe]);
            }
            acc = merge(acc, sums_to_acc(sums, shift));
        }
    }
    let r = tree_acc(t, g.tile_x, acc);
    if (tile.ty == 0u && tile.in_range) {
        for (var l = 0u; l < W; l++) {
            write_partial(tile.cv * W + l, tile.k, r, l, lane(shift, l));
        }
    }
}
