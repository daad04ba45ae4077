// The normalization family's dgamma and dbeta, pass 1: sum dy and
// dy * xhat over the values of each affine parameter, xhat from the row's
// backward values (norm_grad.wgsl). A parameter item is W adjacent
// parameters where they run along a row (norm_ld == 1: layer norm,
// channels-last; an item holds one value of each) or one parameter (its
// items hold W values of its run). Workgroup w takes chunk w / tiles of a
// tile of param_tile parameter items, with lanes t % param_tile over the
// tile (adjacent in memory) and t / param_tile over the chunk's values; the
// tree (tree.wgsl) merges each item's lanes in a fixed order. Compensated
// sums, no atomics.

#import norm
#import grad_sums
#import norm_partials
#import tree

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read> dy: array<TensorIn>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;
@group(0) @binding(7) var<storage, read_write> params: array<f32>;

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
    let tiles = (g.param_units + g.param_tile - 1u) / g.param_tile;
    let chunk = w / tiles;
    let unit = (w - chunk * tiles) * g.param_tile + t % g.param_tile;
    let step = WG / g.param_tile;
    let end = min((chunk + 1u) * g.param_chunk_len, g.param_items);
    // Parameters per item, and the item's first parameter.
    var per = 1u;
    if (g.norm_ld == 1u) {
        per = W;
    }
    let a = unit * per;
    var s = grad_sums_zero();
    if (unit < g.param_units) {
        // The values of a: (u = b * O + o, k, l) with (k, l) fixed by a and u
        // over the batch (group and instance norm: the j-th item is
        // u * param_run + its offset in a's run), or l = a and row k = j
        // (layer norm: B = O = 1). The walk steps (b, o, s) as mixed-radix
        // counters: no division per value.
        let first = chunk * g.param_chunk_len + t / g.param_tile;
        let ka = max(g.norm_ka, 1u);
        var k = a / ka;
        var base = (a - k * ka) * g.norm_ld / W;
        var run = g.param_run;
        var o_count = g.norm_o;
        if (g.norm_ka == 0u) {
            // Layer norm: value j is row j, at j * L + a.
            k = 0u;
            base = a / W;
            run = 1u;
            o_count = g.channels;
        }
        var u = first / run;
        var sv = first - u * run;
        var b = u / o_count;
        var o = u - b * o_count;
        let step_u = step / run;
        let step_s = step - step_u * run;
        let step_b = step_u / o_count;
        let step_o = step_u - step_b * o_count;
        for (var j = first; j < end; j += step) {
            var row = g.row_base + b * g.channels + k;
            var i = ((b * g.norm_o + o) * g.channels + k) * g.inner_v + base + sv;
            if (g.norm_ka == 0u) {
                row = g.row_base + o;
                i = o * g.inner_v + base;
            }
            let p = row_at(row) * NORM_ROW_FLOATS;
            let xhat = ((load_x(i) - splat(params[p + R_SHIFT])) - splat(params[p + R_DELTA])) * splat(params[p + R_RSTD]);
            let d = load_dy(i);
            s = param_sums_add(s, d, xhat);
            sv += step_s;
            o += step_o;
            b += step_b;
            if (sv >= run) {
                sv -= run;
                o += 1u;
            }
            if (o >= o_count) {
                o -= o_count;
                b += 1u;
            }
        }
    }
    // An item's lanes are one parameter's values unless they are W parameters.
    if (per == 1u) {
        s = grad_sums_lanes(s);
    }
    let r = tree_sums(t, g.param_tile, s);
    if (t < g.param_tile && unit < g.param_units) {
        for (var l = 0u; l < per; l++) {
            write_grad_partial(PARTIAL_FLOATS * ((a + l) * g.param_chunks + g.param_chunk_base + chunk), r, l);
        }
    }
}
