// The reduction trees through workgroup memory: lanes t and t + stride * tile
// merge for stride = WG / tile / 2, ..., 1, so that lanes t < tile end with
// the merge of every lane t + j * tile, in a fixed order.
// tree_subgroup.wgsl does the same merges in registers, in the same order.
// A module imports `tree`; src/shaders.rs picks this file or that one.

#import welford
#import grad_sums

var<workgroup> w_n: array<f32, WG>;
var<workgroup> w_mean: array<V, WG>;
var<workgroup> w_m2: array<V, WG>;
var<workgroup> w_total: array<Comp, WG>;
var<workgroup> w_sums: array<GradSums, WG>;

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

// Lane t's gradient sums, summed over its column; valid where t < tile.
fn tree_sums(t: u32, tile: u32, a: GradSums) -> GradSums {
    w_sums[t] = a;
    workgroupBarrier();
    for (var stride = WG / tile / 2u; stride > 0u; stride >>= 1u) {
        if (t / tile < stride) {
            w_sums[t] = grad_sums_merge(w_sums[t], w_sums[t + stride * tile]);
        }
        workgroupBarrier();
    }
    return w_sums[t];
}
