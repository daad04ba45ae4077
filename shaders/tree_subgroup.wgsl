// The reduction trees in registers, where a workgroup is exactly one subgroup
// (the device's only subgroup size is WG, src/context.rs), so every lane t ^ mask
// exists and is active. A butterfly: each lane merges with lane t ^ mask for
// mask = WG / 2, ..., tile. Lanes t < tile merge with t + mask, itself merged
// the same way one level up: the merges and their order are those of
// tree_workgroup.wgsl, so both give bitwise the same result.
// A module imports `tree`; src/shaders.rs picks this file or that one.

#import welford
#import grad_sums

fn shuffle_comp(a: Comp, mask: u32) -> Comp {
    return Comp(subgroupShuffleXor(a.value, mask), subgroupShuffleXor(a.comp, mask));
}

fn tree_acc(t: u32, tile: u32, a: Acc) -> Acc {
    var r = a;
    for (var mask = WG / 2u; mask >= tile; mask >>= 1u) {
        let other = Acc(subgroupShuffleXor(r.n, mask), subgroupShuffleXor(r.mean, mask), subgroupShuffleXor(r.m2, mask), shuffle_comp(r.total, mask));
        r = merge(r, other);
    }
    return r;
}

fn tree_sums(t: u32, tile: u32, a: GradSums) -> GradSums {
    var r = a;
    for (var mask = WG / 2u; mask >= tile; mask >>= 1u) {
        r = grad_sums_merge(r, GradSums(shuffle_comp(r.dy, mask), shuffle_comp(r.dyx, mask), shuffle_comp(r.xm, mask)));
    }
    return r;
}
