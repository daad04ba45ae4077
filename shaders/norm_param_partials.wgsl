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
        // The values of a: (u = b * O + o, k, l) with (k, l) fixed by a and u
        // over the batch (group and instance norm: j = u * norm_ld + l's offset
        // in a's run), or l = a and row k = j (layer norm: B = O = 1). The
        // walk steps (b, o, s) as mixed-radix counters: no division per value.
        let first = chunk * g.param_chunk_len + t / g.param_tile;
        let ka = max(g.norm_ka, 1u);
        var k = a / ka;
        var base = (a - k * ka) * g.norm_ld;
        var ld = g.norm_ld;
        var o_count = g.norm_o;
        if (g.norm_ka == 0u) {
            // Layer norm: value j is row j, at j * L + a.
            k = 0u;
            base = a;
            ld = 1u;
            o_count = g.channels;
        }
        var u = first / ld;
        var sv = first - u * ld;
        var b = u / o_count;
        var o = u - b * o_count;
        let step_u = step / ld;
        let step_s = step - step_u * ld;
        let step_b = step_u / o_count;
        let step_o = step_u - step_b * o_count;
        for (var j = first; j < end; j += step) {
            var row = b * g.channels + k;
            var i = ((b * g.norm_o + o) * g.channels + k) * g.inner + base + sv;
            if (g.norm_ka == 0u) {
                row = o;
                i = o * g.inner + base;
            }
            let p = row * NORM_ROW_FLOATS;
            let xhat = ((x[i] - params[p + R_SHIFT]) - params[p + R_DELTA]) * params[p + R_RSTD];
            let d = dy[i];
            s = GradSums(comp_add(s.dy, d), comp_add_product(s.dyx, d, xhat), s.xm);
            sv += step_s;
            o += step_o;
            b += step_b;
            if (sv >= ld) {
                sv -= ld;
                o += 1u;
            }
            if (o >= o_count) {
                o -= o_count;
                b += 1u;
            }
        }
    }
    let r = tree_sums(t, g.param_tile, s);
    if (t < g.param_tile && a < g.norm_params) {
        write_grad_partial(PARTIAL_FLOATS * (a * g.param_chunks + chunk), r);
    }
}
