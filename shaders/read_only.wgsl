// The benchmark's read-only pass: copy.wgsl's loads without its stores, what
// one read of x costs on its own (a pass that reads x once can take no less).

#import common

@group(0) @binding(0) var<uniform> g: Geometry;
@group(0) @binding(1) var<storage, read> x: array<TensorIn>;
@group(0) @binding(2) var<storage, read_write> y: array<TensorOut>;

// The copy's loads alone. x holds 1.0 everywhere (src/bench.rs), so the store
// never runs, but no compiler can drop the loads its condition depends on.
@compute @workgroup_size(WG)
fn read_only(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let end = part_start(wid.x + 1u, nwg.x, g.numel_v);
    for (var i = part_start(wid.x, nwg.x, g.numel_v) + lid; i < end; i += WG) {
        let v = load_x(i);
        if (any(v < splat(0.0))) {
            store_y(i, v);
        }
    }
}
