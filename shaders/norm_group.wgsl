// Channels-last group and instance norm by lanes across channels
// (src/norms/mod.rs, plan_channel_rows): stats_rows.wgsl reduces blocks of a
// sample's positions for a tile of channels into partials per (channel,
// chunk), g.chunks chunks a sample; norm_group_finalize.wgsl merges a row's
// channels and chunks and writes each (sample, channel)'s apply values;
// norm_group_apply.wgsl writes y from them. The geometry is batch norm's rows
// strategy over the N * S positions (outer, channels_v, tile_x, chunk_len),
// with norm_ka = C / G channels a group, norm_params = C, norm_rows = N * G.
//
// The backward: norm_group_grad.wgsl sums dy, dy * (x - mean) and x - mean
// per (channel, chunk) with the row's saved mean; norm_group_backward_finalize.wgsl
// merges a row's, weighted by gamma, into its backward values (norm_grad.wgsl)
// and writes each channel's dx values; norm_group_dx.wgsl writes dx, and
// norm_group_param_grads.wgsl dgamma and dbeta per channel over the samples.
//
// The per-(sample, channel) values in `params`, after the rows' NORM_ROW_FLOATS
// floats (rounded up to a vec4): arrays of N * C floats. Forward: the row's
// shift, the scale gamma * rstd and the offset gamma * bias + beta, so that
// y = (x - shift) * scale + offset with the shift of norm_finish.wgsl.
// Backward: the saved mean ms, k * gamma, slope and bias, so that
// dx = k * gamma * dy + slope * (x - ms) + bias.

#import common

fn group_values_base() -> u32 {
    return (g.norm_rows * NORM_ROW_FLOATS + 3u) / 4u * 4u;
}

// N * C: the length of each array of apply values.
fn group_values_len() -> u32 {
    return g.norm_rows * g.norm_ka;
}

// Row (sample n, group) of the finalize kernels: its sample, its group's first
// channel c0 and its sample's first chunk k0 of the partials.
struct GroupRowStart {
    n: u32,
    c0: u32,
    k0: u32,
}

fn group_row_start(row: u32) -> GroupRowStart {
    let groups = g.norm_params / g.norm_ka;
    let n = row / groups;
    return GroupRowStart(n, (row - n * groups) * g.norm_ka, n * g.chunks);
}
