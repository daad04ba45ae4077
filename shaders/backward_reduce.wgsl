// Backward, pass 1: per-channel partial sums of dy and dy * (x - mean) in one
// read of x and dy: partials[partial_index(c, k)] = (sum dy, sum dy * (x - mean))
// as compensated sums (compensated.wgsl): value, value, comp, comp.
// `mean` sits in params[P_SHIFT]; the same chunking and fixed tree as stats.wgsl.

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> dy: array<V>;
@group(0) @binding(3) var<storage, read> params: array<V>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<f32>>;

fn write_partial(c: u32, k: u32, s: SumPair, l: u32) {
    partials[partial_index(c, k)] = vec4<f32>(lane(s.dy.value, l), lane(s.dyx.value, l), lane(s.dy.comp, l), lane(s.dyx.comp, l));
}

@compute @workgroup_size(WG)
fn reduce_inner(
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
    let mean = channel_param(P_SHIFT, c);
    let end = min((k + 1u) * g.chunk_len, g.items);
    var s_dy = comp_zero();
    var s_dyx = comp_zero();
    var cur = cursor_at(k * g.chunk_len + t, c);
    for (var j = k * g.chunk_len + t; j < end; j += WG) {
        let d = dy[cur.index];
        s_dy = comp_add(s_dy, d);
        s_dyx = comp_add_product(s_dyx, d, x[cur.index] - mean);
        cur = cursor_step(cur);
    }
    let r = tree_sums(t, 1u, SumPair(comp_lanes(s_dy), comp_lanes(s_dyx)));
    if (t == 0u) {
        write_partial(c, k, r, 0u);
    }
}

@compute @workgroup_size(WG)
fn reduce_rows(
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
    let mean = param(P_SHIFT, tile.cv_safe);
    var s_dy = comp_zero();
    var s_dyx = comp_zero();
    if (tile.in_range) {
        for (var r = tile.start; r < tile.end; r += rows_step) {
            let i = r * g.channels_v + tile.cv_safe;
            let d = dy[i];
            s_dy = comp_add(s_dy, d);
            s_dyx = comp_add_product(s_dyx, d, x[i] - mean);
        }
    }
    let r = tree_sums(t, g.tile_x, SumPair(s_dy, s_dyx));
    if (tile.ty == 0u && tile.in_range) {
        for (var l = 0u; l < W; l++) {
            write_partial(tile.cv * W + l, tile.k, r, l);
        }
    }
}
