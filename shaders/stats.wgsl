// Training forward, pass 1: per-channel partial statistics, shared by
// stats_inner.wgsl and stats_rows.wgsl.
//
// Each workgroup reduces one chunk of one channel (inner strategy) or one chunk
// of rows for a tile of channels (rows strategy) to (count, mean, M2) of the
// values shifted by the channel's first value, and writes it with that shift.
// Invocations keep shifted sums (welford.wgsl's Sums) over blocks of SUMS_BLOCK items,
// merged into a Chan state after each block; the tree (tree_workgroup.wgsl or
// tree_subgroup.wgsl) merges those with Chan's formula:
// partials at partial_index(c, k): count, mean(x - shift), M2, shift, sum x and its compensation.
// The shift keeps x - shift exact in f32 for data far from zero (docs/SPEC.md, Numerics).
// The reduction tree is fixed, so results are bitwise reproducible.

#import common
#import welford
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;

// A partial result: count, mean - shift, M2, shift, and the compensated sum
// (value, comp): PARTIAL_FLOATS floats.
fn write_partial(c: u32, k: u32, r: Acc, l: u32, shift: f32) {
    let i = partial_index(c, k);
    partials[i] = r.n;
    partials[i + 1u] = lane(r.mean, l);
    partials[i + 2u] = lane(r.m2, l);
    partials[i + 3u] = shift;
    partials[i + 4u] = lane(r.total.value, l);
    partials[i + 5u] = lane(r.total.comp, l);
}
