// The normalization family's dgamma and dbeta, pass 1: sum dy and
// dy * xhat over the values of each affine parameter, xhat from the row's
// backward values (norm_grad.wgsl). Workgroup w takes chunk w / tiles of a
// tile of param_tile parameters, with lanes t % param_tile over the tile (adjacent
// parameters where they are adjacent in memory: layer norm, channels-last)
// and t / param_tile over the chunk's values; the tree (tree.wgsl) merges each
// parameter's lanes in a fixed order. Compensated sums, no atomics.

#import norm
#import grad_sums
#import norm_partials
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read> params: array<f32>;

// Flat index and row of value j of parameter a: the values of a are
// (u = b * O + o, k, l) with (k, l) fixed by a (group and instance norm:
// k = a / norm_ka, l in a's run of norm_ld), or l = a and every k (layer norm).
fn param_element(a: u32, j: u32) -> vec2<u32> {
    var u = 0u;
    var k = 0u;
    var l = a;
    if (g.norm_ka == 0u) {
        u = j / g.channels;
        k = j - u * g.channels;
    } else {
        u = j / g.norm_ld;
        k = a / g.norm_ka;
        l = (a - k * g.norm_ka) * g.norm_ld + (j - u * g.norm_ld);
    }
    return vec2<u32>((u * g.channels + k) * g.inner_v + l, (u / g.norm_o) * g.channels + k);
}

@compute @workgroup_size(WG)
fn norm_param_partials(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = group_index(wid, nwg);
    if (w >= g.param_groups) {
        return;
    }
    let tiles = (g.norm_params + g.param_tile - 1u) / g.param_tile;
    let chunk = w / tiles;
    let a = (w - chunk * tiles) * g.param_tile + t % g.param_tile;
    let step = WG / g.param_tile;
    let end = min((chunk + 1u) * g.param_chunk_len, g.param_items);
    var s = grad_sums_zero();
    if (a < g.norm_params) {
        for (var j = chunk * g.param_chunk_len + t / g.param_tile; j < end; j += step) {
            let e = param_element(a, j);
            let p = e.y * NORM_ROW_FLOATS;
            let xhat = ((x[e.x] - params[p + R_SHIFT]) - params[p + R_DELTA]) * params[p + R_RSTD];
            let d = dy[e.x];
            s = GradSums(comp_add(s.dy, d), comp_add_product(s.dyx, d, xhat), s.xm);
        }
    }
    let r = tree_sums(t, g.param_tile, s);
    if (t < g.param_tile && a < g.norm_params) {
        write_grad_partial(PARTIAL_FLOATS * (a * g.param_chunks + chunk), r);
    }
}
