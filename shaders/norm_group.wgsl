// Channels-last group and instance norm by lanes across channels
// (src/norms/mod.rs, plan_channel_rows): stats_rows.wgsl reduces blocks of a
// sample's positions for a tile of channels into partials per (channel,
// chunk), g.chunks chunks a sample; norm_group_finalize.wgsl merges a row's
// channels and chunks and writes each (sample, channel)'s apply values;
// norm_group_apply.wgsl writes y from them. The geometry is batch norm's rows
// strategy over the N * S positions (outer, channels_v, tile_x, chunk_len),
// with norm_ka = C / G channels a group, norm_params = C, norm_rows = N * G.
//
// The apply values in `params`, after the rows' NORM_ROW_FLOATS floats
// (rounded up to a vec4): three arrays of N * C floats, the row's shift, the
// scale gamma * rstd and the offset gamma * bias + beta, so that
// y = (x - shift) * scale + offset with the shift of norm_finish.wgsl.

#import common

fn group_values_base() -> u32 {
    return (g.norm_rows * NORM_ROW_FLOATS + 3u) / 4u * 4u;
}

// N * C: the length of each array of apply values.
fn group_values_len() -> u32 {
    return g.norm_rows * g.norm_ka;
}
