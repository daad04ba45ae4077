// Per-channel epilogues run one invocation per channel, always scalar, in
// workgroups of WG = EPILOGUE_WG (src/plan.rs plans their grids with it).

// Channel of an invocation; grids wider than the device's limit fold into y.
fn channel_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}
