// The reduction trees through workgroup memory: lanes t and t + stride * tile
// merge for stride = WG / tile / 2, ..., 1, so that lanes t < tile end with
// the merge of every lane t + j * tile, in a fixed order.
// tree_subgroup.wgsl does the same merges in registers, in the same order.

var<workgroup> w_n: array<f32, WG>;
var<workgroup> w_mean: array<V, WG>;
var<workgroup> w_m2: array<V, WG>;
var<workgroup> w_total: array<Comp, WG>;
var<workgroup> w_dy: array<Comp, WG>;
var<workgroup> w_dyx: array<Comp, WG>;

fn store_acc(t: u32, a: Acc) {
    w_n[t] = a.n;
    w_mean[t] = a.mean;
    w_m2[t] = a.m2;
    w_total[t] = a.total;
}

fn load_acc(t: u32) -> Acc {
    return Acc(w_n[t], w_mean[t], w_m2[t], w_total[t]);
}

// Lane t's Acc merged over its column of lanes; valid where t < tile.
fn tree_acc(t: u32, tile: u32, a: Acc) -> Acc {
    store_acc(t, a);
    workgroupBarrier();
    for (var stride = WG / tile / 2u; stride > 0u; stride >>= 1u) {
        if (t / tile < stride) {
            store_acc(t, merge(load_acc(t), load_acc(t + stride * tile)));
        }
        workgroupBarrier();
    }
    return load_acc(t);
}

// Lane t's pair of compensated sums, summed over its column; valid where t < tile.
fn tree_sums(t: u32, tile: u32, a: SumPair) -> SumPair {
    w_dy[t] = a.dy;
    w_dyx[t] = a.dyx;
    workgroupBarrier();
    for (var stride = WG / tile / 2u; stride > 0u; stride >>= 1u) {
        if (t / tile < stride) {
            w_dy[t] = comp_merge(w_dy[t], w_dy[t + stride * tile]);
            w_dyx[t] = comp_merge(w_dyx[t], w_dyx[t + stride * tile]);
        }
        workgroupBarrier();
    }
    return SumPair(w_dy[t], w_dyx[t]);
}
